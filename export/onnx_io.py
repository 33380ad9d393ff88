"""Writing an ONNX file the busi way, once for every file export makes (classifier, segmenter,
INT8): the contract as metadata, onnx.checker, an atomic save, the .sha256 sidecar, one log line."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from busi.runtime.atomic import atomic_path, atomic_write_text
from busi.runtime.errors import ExportError
from busi.runtime.log import get as get_logger
from busi.runtime.verify import sha256_file, sidecar

_LOG = get_logger(__name__)

CLASSIFIER_DOC = (
    "busi masked ResNet50: breast ultrasound normal/benign/malignant. Inputs image "
    "(N,S,S,3 float32 RGB 0..255) and mask (N,S,S,1 float32 0/1); output probabilities (N,3), "
    "plus features and cam_weights for Grad-CAM. Research software, not a medical device."
)
SEGMENTER_DOC = (
    "busi lesion segmenter (U-Net) for --mask auto. Input image (N,S,S,3 float32 RGB 0..255); output lesion "
    "(N,S,S,1 probability). Research software, not a medical device."
)


def ort_session(model_bytes_or_path):
    """A quiet CPU session: what the gates compare against Keras."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes_or_path, so, providers=["CPUExecutionProvider"])


def set_metadata(onnx_model, props: dict[str, str], doc: str = CLASSIFIER_DOC) -> None:
    """The busi contract (`props`) as the file's metadata_props, plus producer, version and doc."""
    from busi import __version__

    del onnx_model.metadata_props[:]
    for k, v in sorted(props.items()):
        e = onnx_model.metadata_props.add()
        e.key, e.value = k, v
    onnx_model.producer_name = "busi"
    onnx_model.producer_version = __version__
    onnx_model.model_version = int(datetime.now(timezone.utc).strftime("%Y%m%d"))
    onnx_model.doc_string = doc


def write_sha256(path: Path) -> str:
    digest = sha256_file(path)
    atomic_write_text(sidecar(path), f"{digest}  {path.name}\n")
    return digest


def write_model(onnx_model, final: Path, props: dict[str, str], doc: str = CLASSIFIER_DOC) -> dict:
    """Annotate, check, save atomically and hash `onnx_model` as `final`; returns
    {"file", "sha256", "bytes"}. Nothing reaches `final` if the checker refuses it."""
    import onnx

    set_metadata(onnx_model, props, doc)
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except Exception as e:
        raise ExportError(f"{final.name}: onnx.checker rejected the converted model: {str(e)[:200]}") from None
    with atomic_path(final, suffix=".onnx") as tmp:
        onnx.save(onnx_model, tmp)
    digest = write_sha256(final)
    size = final.stat().st_size
    _LOG.info("wrote %s (%.1f MB, sha256 %s)", final, size / 1e6, digest[:12])
    return {"file": final.name, "sha256": digest, "bytes": size}


def remove_with_sidecar(path: Path) -> None:
    """A stale output and its digest, so that an old file never passes for a new one."""
    for p in (path, sidecar(path)):
        p.unlink(missing_ok=True)
