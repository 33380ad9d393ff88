"""What this CPU can do, measured in the same run as the model rows: ONNX Runtime's FP32 GEMM
(MatMul) and u8s8 integer GEMM (MatMulInteger) throughput on n x n x n with the runtime's own
session options and thread count, the CPU flags that decide which kernels run, and the
floating-point operations a model does per image (from its ONNX graph), so every model row can
say what fraction of the peak it reaches."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx_vnni")


def cpu_flags() -> dict[str, bool]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return {f: f in have for f in FLAGS}
    except OSError:
        pass
    return {}


def _gemm_model(shape: int | tuple[int, int, int], integer: bool) -> bytes:
    """A one-node graph: A (m x k, the input) times a constant B (k x n); n x n x n for an int."""
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = (shape, shape, shape) if isinstance(shape, int) else shape
    rng = np.random.default_rng(0)
    if integer:
        b = numpy_helper.from_array(rng.integers(-128, 128, (k, n), dtype=np.int8), "B")
        zp_a = numpy_helper.from_array(np.array(128, np.uint8), "a_zero")
        zp_b = numpy_helper.from_array(np.array(0, np.int8), "b_zero")
        node = helper.make_node("MatMulInteger", ["A", "B", "a_zero", "b_zero"], ["Y"])
        inits, a_type, y_type = [b, zp_a, zp_b], TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        inits, a_type, y_type = [b], TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", a_type, [m, k])],
                              [helper.make_tensor_value_info("Y", y_type, [m, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def gemm_peak(n: int = 2048, reps: int = 7, threads: int | None = None) -> dict:
    """{"fp32_gflops": ..., "u8s8_gops": ...}: median over `reps` runs of 2 n^3 operations."""
    out = {"n": n}
    rng = np.random.default_rng(1)
    for key, integer in (("fp32_gflops", False), ("u8s8_gops", True)):
        out[key] = 2 * n ** 3 / _gemm_seconds((n, n, n), integer, reps, threads, rng, warmup=2) / 1e9
    return out


def _gemm_seconds(shape: tuple[int, int, int], integer: bool, reps: int, threads: int | None,
                  rng: np.random.Generator, warmup: int = 1) -> float:
    """Median seconds of one ORT GEMM (m x k times a constant k x n), FP32 MatMul or u8s8
    MatMulInteger, with the runtime's session options."""
    import onnxruntime as ort

    from busi.runtime.session import session_options

    m, k, _ = shape
    sess = ort.InferenceSession(_gemm_model(shape, integer), session_options(threads), providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (m, k), dtype=np.uint8) if integer else rng.standard_normal((m, k)).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {"A": a})
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.run(None, {"A": a})
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def model_gflop(onnx_path: Path) -> float:
    """Floating-point operations (2 per multiply-add) of one image through the graph's Conv,
    MatMul and Gemm nodes, from ONNX shape inference at batch 1."""
    import onnx
    from onnx import numpy_helper, shape_inference

    m = onnx.load(str(onnx_path))
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    m = shape_inference.infer_shapes(m, data_prop=True)  # through Reshape to computed shapes
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    weights = {i.name: numpy_helper.to_array(i).shape for i in m.graph.initializer}
    total = 0
    for node in m.graph.node:
        out = shapes.get(node.output[0])
        if not out or not all(out):
            continue
        if node.op_type == "Conv" and node.input[1] in weights:
            cout, cin_g, kh, kw = weights[node.input[1]]
            total += 2 * int(np.prod(out)) * cin_g * kh * kw
        elif node.op_type in ("MatMul", "Gemm"):
            k = (weights.get(node.input[1]) or shapes.get(node.input[1]) or [0])[0]
            total += 2 * int(np.prod(out)) * int(k)
    return total / 1e9


def conv_gemms(onnx_path: Path, batch: int) -> list[tuple[int, int, int]]:
    """The GEMM each convolution of the graph amounts to at `batch` (im2col: M = batch x output
    pixels, K = input channels x kernel area, N = output channels), in graph order."""
    import onnx
    from onnx import numpy_helper, shape_inference

    m = onnx.load(str(onnx_path))
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = batch
    m = shape_inference.infer_shapes(m, data_prop=True)  # through Reshape to computed shapes
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in m.graph.value_info}
    weights = {i.name: numpy_helper.to_array(i).shape for i in m.graph.initializer}
    out = []
    for node in m.graph.node:
        o = shapes.get(node.output[0])
        if node.op_type != "Conv" or node.input[1] not in weights or not o or not all(o):
            continue
        cout, cin_g, kh, kw = weights[node.input[1]]
        out.append((int(np.prod(o)) // cout, cin_g * kh * kw, cout))
    return out


def float_convolutions(int8_path: Path) -> list[bool]:
    """For each convolution of a QDQ file, in graph order: whether it stays float (its weights
    an initializer, not the output of a DequantizeLinear), as export keeps the stem and stage 2
    of a model whose all-INT8 file fails the gate."""
    import onnx

    m = onnx.load(str(int8_path))
    dequantized = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.input[1] not in dequantized for n in m.graph.node if n.op_type == "Conv"]


def conv_gemm_bound(onnx_path: Path, batch: int, reps: int = 5, threads: int | None = None,
                    float_convs: list[bool] | None = None) -> dict:
    """The model's own convolutions as bare ONNX Runtime GEMMs (MatMul, and u8s8 MatMulInteger),
    timed shape by shape and summed: the time the backbone would take if every convolution ran
    at the GEMM kernel's speed on its own shape, with no im2col, requantization or other op.
    Their ratio is the INT8 speed-up this CPU's kernels allow on this model's shapes, which
    the 2048^3 peak does not say (small K and N run far below it). `float_convs` (the INT8
    file's layout, `float_convolutions`) counts the convolutions it keeps float at their FP32
    time on the INT8 side: the bound for that file, not for an all-INT8 one."""
    rng = np.random.default_rng(2)
    gemms = conv_gemms(onnx_path, batch)
    if float_convs is not None and len(float_convs) != len(gemms):
        raise ValueError(f"the INT8 file has {len(float_convs)} convolutions, {onnx_path} {len(gemms)}")
    kept_float = float_convs or [False] * len(gemms)
    timed = {(shape, integer): _gemm_seconds(shape, integer, reps, threads, rng) * 1000
             for shape in sorted(set(gemms)) for integer in (False, True)}
    fp32 = sum(timed[shape, False] for shape in gemms)
    int8 = sum(timed[shape, not f] for shape, f in zip(gemms, kept_float))
    return {"batch": batch, "convolutions": len(gemms), "shapes": len(set(gemms)), "float_convolutions": sum(kept_float),
            "fp32_ms_per_image": fp32 / batch, "u8s8_ms_per_image": int8 / batch}
