"""The training/runtime contract carried in the ONNX file's `metadata_props`.

Export writes these keys; the runtime reads them back into a typed `ModelInfo` and refuses
a file without them. No second file has to travel with the model.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelError

REQUIRED_KEYS = ("busi.classes", "busi.input", "busi.mask", "busi.operating_point")
OPTIONAL_KEYS = ("busi.provenance", "busi.metrics", "busi.parity", "busi.quantization", "busi.role")
SEGMENTER_KEYS = ("busi.role", "busi.input", "busi.segmentation")
SEGMENTER_OPTIONAL_KEYS = ("busi.provenance", "busi.metrics", "busi.parity")
INPUT_NAMES = ("image", "mask")
OUTPUT_NAME = "probabilities"
#: extra classifier outputs for Grad-CAM: the last conv block's feature map (N, h, w, K) and
#: the closed-form Grad-CAM channel weights d logit_c / d feature, averaged over space (N, K, C)
FEATURES_NAME = "features"
CAM_WEIGHTS_NAME = "cam_weights"
SEGMENTER_INPUT = "image"
SEGMENTER_OUTPUT = "lesion"


@dataclass(frozen=True)
class InputSpec:
    size: int
    color: str = "rgb"
    dtype: str = "float32"
    range: tuple[float, float] = (0.0, 255.0)
    resize: str = "area"

    @classmethod
    def from_json(cls, inp: dict) -> "InputSpec":
        """`busi.input` as `input_spec` writes it (classifier and segmenter alike)."""
        return cls(
            size=int(inp["size"]),
            color=inp.get("color", "rgb"),
            dtype=inp.get("dtype", "float32"),
            range=tuple(inp.get("range", (0, 255))),
            resize=inp.get("resize", "area"),
        )


@dataclass(frozen=True)
class MaskSpec:
    mode: str = "multiply"
    threshold: int = 127
    source: str = "box"  # mask source the model was trained with: box | gt | none
    box_margin: float = 0.10
    placeholder: tuple[float, float] = (0.25, 0.25)  # lesion-sized box (w, h as image fractions)


@dataclass(frozen=True)
class ModelInfo:
    classes: tuple[str, ...]
    input: InputSpec
    mask: MaskSpec
    malignant_threshold: float
    target_sensitivity: float | None
    role: str = "classifier"
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: str | None = None) -> "ModelInfo":
        j = _decode(meta, REQUIRED_KEYS, OPTIONAL_KEYS, path, "model")
        with _malformed(path):
            classes = tuple(str(c) for c in j["busi.classes"])
            msk = j["busi.mask"]
            op = j["busi.operating_point"]
            info = cls(
                classes=classes,
                input=InputSpec.from_json(j["busi.input"]),
                mask=MaskSpec(
                    mode=msk.get("mode", "multiply"),
                    threshold=int(msk.get("threshold", 127)),
                    source=msk.get("source", "box"),
                    box_margin=float(msk.get("box_margin", 0.10)),
                    placeholder=tuple(float(v) for v in msk.get("placeholder", (0.25, 0.25))),
                ),
                malignant_threshold=float(op["malignant_threshold"]),
                target_sensitivity=op.get("target_sensitivity"),
                role=j.get("busi.role", "classifier"),
                provenance=j.get("busi.provenance", {}),
                metrics=j.get("busi.metrics", {}),
                parity=j.get("busi.parity", {}),
                quantization=j.get("busi.quantization"),
            )
        if "malignant" not in info.classes:
            raise ModelError(path, f"busi.classes has no 'malignant': {list(info.classes)}")
        if info.role != "classifier":
            raise ModelError(path, f"busi.role is {info.role!r}, expected a classifier")
        return info


@dataclass(frozen=True)
class SegmenterInfo:
    """The lesion segmenter's contract: input spec and the post-processing it was evaluated with."""

    input: InputSpec
    threshold: float = 0.5
    min_area_frac: float = 0.002
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: str | None = None) -> "SegmenterInfo":
        j = _decode(meta, SEGMENTER_KEYS, SEGMENTER_OPTIONAL_KEYS, path, "segmenter")
        if j["busi.role"] != "segmenter":
            raise ModelError(path, f"busi.role is {j['busi.role']!r}, expected 'segmenter'")
        with _malformed(path):
            seg = j["busi.segmentation"]
            return cls(
                input=InputSpec.from_json(j["busi.input"]),
                threshold=float(seg.get("threshold", 0.5)),
                min_area_frac=float(seg.get("min_area_frac", 0.002)),
                provenance=j.get("busi.provenance", {}),
                metrics=j.get("busi.metrics", {}),
                parity=j.get("busi.parity", {}),
            )


@contextmanager
def _malformed(path: str | None):
    """Turn a missing field or a value of the wrong type into one ModelError naming the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(path, f"busi metadata is malformed ({type(e).__name__}: {e})") from None


def _decode(meta: dict[str, str], required: tuple[str, ...], optional: tuple[str, ...], path: str | None, what: str) -> dict:
    """The JSON values of the contract's keys; ModelError naming what is missing or malformed."""
    missing = [k for k in required if k not in meta]
    if missing:
        raise ModelError(path, f"not a busi {what}: metadata lacks {', '.join(missing)}")
    with _malformed(path):
        return {k: json.loads(meta[k]) for k in required + optional if k in meta}


def input_spec(size: int) -> dict:
    return {"size": int(size), "color": "rgb", "dtype": "float32", "range": [0, 255], "resize": "area"}


def metadata_props(
    *,
    classes,
    size: int,
    mask_source: str,
    operating_point: dict,
    provenance: dict,
    metrics: dict,
    parity: dict,
    box_margin: float = 0.10,
    placeholder: tuple[float, float] = (0.25, 0.25),
    extra: dict | None = None,
) -> dict[str, str]:
    """The metadata_props dict that export writes (values JSON-encoded)."""
    props = {
        "busi.classes": list(classes),
        "busi.input": input_spec(size),
        "busi.mask": {"mode": "multiply", "threshold": 127, "source": mask_source, "box_margin": box_margin,
                      "placeholder": [round(float(v), 4) for v in placeholder]},
        "busi.operating_point": operating_point,
        "busi.provenance": provenance,
        "busi.metrics": metrics,
        "busi.parity": parity,
        "busi.role": "classifier",
    }
    props.update(extra or {})
    return {k: json.dumps(v, sort_keys=True) for k, v in props.items()}


def segmenter_metadata_props(*, size: int, threshold: float, min_area_frac: float, provenance: dict, metrics: dict, parity: dict) -> dict[str, str]:
    """The metadata_props of a lesion segmenter (busi.role = segmenter)."""
    props = {
        "busi.role": "segmenter",
        "busi.input": input_spec(size),
        "busi.segmentation": {"output": SEGMENTER_OUTPUT, "threshold": threshold, "min_area_frac": min_area_frac,
                              "postprocess": "resize to image, threshold, largest 8-connected component"},
        "busi.provenance": provenance,
        "busi.metrics": metrics,
        "busi.parity": parity,
    }
    return {k: json.dumps(v, sort_keys=True) for k, v in props.items()}
