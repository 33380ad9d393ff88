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


def _gemm_model(n: int, integer: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        b = numpy_helper.from_array(rng.integers(-128, 128, (n, n), dtype=np.int8), "B")
        zp_a = numpy_helper.from_array(np.array(128, np.uint8), "a_zero")
        zp_b = numpy_helper.from_array(np.array(0, np.int8), "b_zero")
        node = helper.make_node("MatMulInteger", ["A", "B", "a_zero", "b_zero"], ["Y"])
        inits, a_type, y_type = [b, zp_a, zp_b], TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        inits, a_type, y_type = [b], TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", a_type, [n, n])],
                              [helper.make_tensor_value_info("Y", y_type, [n, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def gemm_peak(n: int = 2048, reps: int = 7, threads: int | None = None) -> dict:
    """{"fp32_gflops": ..., "u8s8_gops": ...}: median over `reps` runs of 2 n^3 operations."""
    import onnxruntime as ort

    from busi.runtime.session import session_options

    out = {"n": n}
    rng = np.random.default_rng(1)
    for key, integer in (("fp32_gflops", False), ("u8s8_gops", True)):
        sess = ort.InferenceSession(_gemm_model(n, integer), session_options(threads), providers=["CPUExecutionProvider"])
        a = rng.integers(0, 256, (n, n), dtype=np.uint8) if integer else rng.standard_normal((n, n)).astype(np.float32)
        for _ in range(2):
            sess.run(None, {"A": a})
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            sess.run(None, {"A": a})
            ts.append(time.perf_counter() - t)
        out[key] = 2 * n ** 3 / statistics.median(ts) / 1e9
    return out


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
    m = shape_inference.infer_shapes(m)
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
