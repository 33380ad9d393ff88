"""`busi-export MODEL_DIR --triton REPO`: a model repository that NVIDIA Triton serves as it stands.

    REPO/busi_classifier/config.pbtxt        platform onnxruntime_onnx, GPU instances
    REPO/busi_classifier/configs/cpu.pbtxt   the same on CPU (tritonserver --model-config-name=cpu)
    REPO/busi_classifier/1/model.onnx        the exported file, byte for byte
    REPO/busi_segmenter/...                  likewise, when the folder has a segmenter

Inputs and outputs (names, data types, dims without the batch axis) are read from the ONNX
file. Every `busi.*` metadata key travels verbatim in `parameters`, with `busi.sha256`,
because Triton does not expose an ONNX file's metadata_props to clients. Each model folder is
written beside the final one and renamed into place.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from busi.runtime.contract import SERVED_NAMES
from busi.runtime.errors import ExportUsageError
from busi.runtime.log import get as get_logger
from busi.runtime.model_dir import ModelDir
from busi.runtime.verify import sha256_file

_LOG = get_logger(__name__)

NAMES = SERVED_NAMES
#: ONNX TensorProto element types -> Triton data types
DTYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64",
          9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64"}
MAX_BATCH = 32
PREFERRED = (8, 16)
QUEUE_DELAY_US = 2000


def _tensor(vi) -> tuple[str, str, list[int]]:
    """(name, Triton data type, dims without the batch axis) of an ONNX graph input or output."""
    t = vi.type.tensor_type
    dims = [d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim][1:]
    if t.elem_type not in DTYPES:
        raise ExportUsageError(f"{vi.name}: ONNX element type {t.elem_type} has no Triton data type here")
    return vi.name, DTYPES[t.elem_type], dims


def _q(text: str) -> str:
    return json.dumps(str(text), ensure_ascii=False)  # a text-format string literal: JSON escapes \" \\ \n are the same


def config_text(name: str, onnx_model, parameters: dict[str, str], kind: str = "KIND_GPU", max_batch: int = MAX_BATCH,
                tensorrt: bool = False) -> str:
    """config.pbtxt of one ONNX model."""
    def block(vis, what):
        items = []
        for vi in vis:
            n, dt, dims = _tensor(vi)
            items.append(f"  {{\n    name: {_q(n)}\n    data_type: {dt}\n    dims: [ {', '.join(map(str, dims))} ]\n  }}")
        return f"{what} [\n" + ",\n".join(items) + "\n]\n"

    init = {i.name for i in onnx_model.graph.initializer}
    inputs = [vi for vi in onnx_model.graph.input if vi.name not in init]
    lines = [f"name: {_q(name)}", 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch}",
             block(inputs, "input") + block(onnx_model.graph.output, "output").rstrip("\n"),
             "dynamic_batching {\n  preferred_batch_size: [ " + ", ".join(str(b) for b in PREFERRED if b <= max_batch)
             + f" ]\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}",
             f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]"]
    if tensorrt and kind == "KIND_GPU":
        lines.append('optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n      {\n'
                     '        name: "tensorrt"\n        parameters { key: "precision_mode" value: "FP16" }\n'
                     '        parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n      }\n    ]\n  }\n}')
    for k, v in sorted(parameters.items()):
        lines.append(f"parameters {{\n  key: {_q(k)}\n  value: {{ string_value: {_q(v)} }}\n}}")
    return "\n".join(lines) + "\n"


def write_repository(model_dir: str | Path, repo: str | Path, max_batch: int = MAX_BATCH, tensorrt: bool = False) -> list[Path]:
    """The Triton repository of MODEL_DIR's exported classifier (and segmenter); the model folders written."""
    import onnx

    md = ModelDir(model_dir)
    sources = {"classifier": md.onnx, "segmenter": md.segmenter_onnx}
    if not md.onnx.is_file():
        raise ExportUsageError(f"{md.onnx}: not found (export first: busi-export {md.path})")
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    written = []
    for role, src in sources.items():
        if not src.is_file():
            continue
        model = onnx.load(str(src), load_external_data=False)
        params = {p.key: p.value for p in model.metadata_props if p.key.startswith("busi.")}
        params["busi.sha256"] = sha256_file(src)
        name = NAMES[role]
        final = repo / name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
        try:
            (tmp / "1").mkdir()
            shutil.copyfile(src, tmp / "1" / "model.onnx")
            (tmp / "config.pbtxt").write_text(config_text(name, model, params, "KIND_GPU", max_batch, tensorrt))
            (tmp / "configs").mkdir()
            (tmp / "configs" / "cpu.pbtxt").write_text(config_text(name, model, params, "KIND_CPU", max_batch))
            if final.exists():
                old = repo / f".{name}.old"
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        written.append(final)
        _LOG.info(f"Triton model {final} (config.pbtxt GPU, configs/cpu.pbtxt CPU; sha256 {params['busi.sha256'][:12]})")
    return written
