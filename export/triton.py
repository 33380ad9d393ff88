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
import re
import shutil
import tempfile
from pathlib import Path

from busi.runtime.contract import SERVED_NAMES, SHA256_KEY, served_parameters
from busi.runtime.errors import ExportUsageError
from busi.runtime.log import get as get_logger
from busi.runtime.model_dir import ModelDir
from busi.runtime.served import FROM_ONNX, triton_config
from busi.runtime.verify import sha256_file

_LOG = get_logger(__name__)

NAMES = SERVED_NAMES
MAX_BATCH = 32
PREFERRED = (8, 16)
QUEUE_DELAY_US = 2000
#: Triton's enum values: written bare in text format
_ENUM = re.compile(r"^(TYPE|KIND)_[A-Z0-9]+$")


def _tensor(vi) -> dict:
    """The v2 description (name, data type, shape with -1 for a free axis) of an ONNX graph input or output."""
    t = vi.type.tensor_type
    if t.elem_type not in FROM_ONNX:
        raise ExportUsageError(f"{vi.name}: ONNX element type {t.elem_type} has no Triton data type here")
    return {"name": vi.name, "datatype": FROM_ONNX[t.elem_type],
            "shape": [d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim]}


def _q(text: str) -> str:
    return json.dumps(str(text), ensure_ascii=False)  # a text-format string literal: JSON escapes \" \\ \n are the same


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return v if _ENUM.match(v) else _q(v)


def pbtxt(config: dict, pad: str = "") -> str:
    """Triton's JSON form of a model configuration (`served.triton_config`) in protobuf text format."""
    out = []
    for key, v in config.items():
        if key == "parameters":  # a map: one entry a block
            for k, p in v.items():
                value = f"{{ string_value: {_q(p['string_value'])} }}" if isinstance(p, dict) else _q(p)
                out.append(f"{pad}parameters {{\n{pad}  key: {_q(k)}\n{pad}  value: {value}\n{pad}}}")
        elif isinstance(v, dict):
            out.append(f"{pad}{key} {{\n{pbtxt(v, pad + '  ')}{pad}}}")
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            items = ",\n".join(f"{pad}  {{\n{pbtxt(x, pad + '    ')}{pad}  }}" for x in v)
            out.append(f"{pad}{key} [\n{items}\n{pad}]")
        elif isinstance(v, list):
            out.append(f"{pad}{key}: [ {', '.join(_scalar(x) for x in v)} ]")
        else:
            out.append(f"{pad}{key}: {_scalar(v)}")
    return "".join(line + "\n" for line in out)


def config_text(name: str, onnx_model, parameters: dict[str, str], kind: str = "KIND_GPU", max_batch: int = MAX_BATCH,
                tensorrt: bool = False) -> str:
    """config.pbtxt of one ONNX model."""
    init = {i.name for i in onnx_model.graph.initializer}
    inputs = [_tensor(vi) for vi in onnx_model.graph.input if vi.name not in init]
    outputs = [_tensor(vi) for vi in onnx_model.graph.output]
    return pbtxt(triton_config(name, inputs, outputs, parameters, max_batch, QUEUE_DELAY_US, PREFERRED, kind, tensorrt))


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
        params = served_parameters({p.key: p.value for p in model.metadata_props}, sha256_file(src))
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
        _LOG.info(f"Triton model {final} (config.pbtxt GPU, configs/cpu.pbtxt CPU; sha256 {params[SHA256_KEY][:12]})")
    return written
