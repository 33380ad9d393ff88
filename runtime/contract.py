"""The training/runtime contract carried in the ONNX file's `metadata_props`.

Export writes these keys; the runtime reads them back into a typed `ModelInfo` and refuses
a file without them. No second file has to travel with the model.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelError

CLASSES = ("normal", "benign", "malignant")
MASK_SOURCES = ("box", "gt", "none")
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
    def from_json(cls, inp: dict, path: str | None = None) -> "InputSpec":
        """`busi.input` as `input_spec` writes it (classifier and segmenter alike), validated."""
        spec = cls(
            size=_integer(inp["size"], "busi.input.size", path, 8, 4096),
            color=inp.get("color", "rgb"),
            dtype=inp.get("dtype", "float32"),
            range=tuple(_number(v, "busi.input.range", path) for v in inp.get("range", (0, 255))),
            resize=inp.get("resize", "area"),
        )
        for key, value, allowed in (("color", spec.color, ("rgb",)), ("dtype", spec.dtype, ("float32",)),
                                    ("resize", spec.resize, ("area",))):
            if value not in allowed:
                raise ModelError(path, f"busi.input.{key} is {value!r}; this runtime supports {', '.join(allowed)}")
        if spec.range != (0.0, 255.0):
            raise ModelError(path, f"busi.input.range is {list(spec.range)}; this runtime feeds 0..255")
        return spec


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
            raw = j["busi.classes"]
            if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
                raise ModelError(path, f"busi.classes is {raw!r}, expected a list of class names")
            classes = tuple(raw)
            if len(set(classes)) != len(classes) or set(classes) != set(CLASSES):
                raise ModelError(path, f"busi.classes is {list(classes)}, expected exactly {', '.join(CLASSES)} (each once)")
            msk = _mapping(j["busi.mask"], "busi.mask", path)
            op = _mapping(j["busi.operating_point"], "busi.operating_point", path)
            target = op.get("target_sensitivity")
            info = cls(
                classes=classes,
                input=InputSpec.from_json(_mapping(j["busi.input"], "busi.input", path), path),
                mask=MaskSpec(
                    mode=_choice(msk.get("mode", "multiply"), "busi.mask.mode", path, ("multiply",)),
                    threshold=_integer(msk.get("threshold", 127), "busi.mask.threshold", path, 0, 254),
                    source=_choice(msk.get("source", "box"), "busi.mask.source", path, MASK_SOURCES),
                    box_margin=_number(msk.get("box_margin", 0.10), "busi.mask.box_margin", path, 0.0, 1.0),
                    placeholder=_fractions(msk.get("placeholder", (0.25, 0.25)), "busi.mask.placeholder", path),
                ),
                malignant_threshold=_number(op.get("malignant_threshold"), "busi.operating_point.malignant_threshold",
                                            path, 0.0, 1.0),
                target_sensitivity=None if target is None else _number(
                    target, "busi.operating_point.target_sensitivity", path, 0.0, 1.0),
                role=j.get("busi.role", "classifier"),
                provenance=j.get("busi.provenance", {}),
                metrics=j.get("busi.metrics", {}),
                parity=j.get("busi.parity", {}),
                quantization=j.get("busi.quantization"),
            )
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
            seg = _mapping(j["busi.segmentation"], "busi.segmentation", path)
            return cls(
                input=InputSpec.from_json(_mapping(j["busi.input"], "busi.input", path), path),
                threshold=_number(seg.get("threshold", 0.5), "busi.segmentation.threshold", path, 0.0, 1.0),
                min_area_frac=_number(seg.get("min_area_frac", 0.002), "busi.segmentation.min_area_frac", path, 0.0, 1.0),
                provenance=j.get("busi.provenance", {}),
                metrics=j.get("busi.metrics", {}),
                parity=j.get("busi.parity", {}),
            )


def check_graph_shape(path, what: str, shape, expect: tuple, key: str) -> None:
    """A graph tensor's static dimensions must agree with the metadata (symbolic ones pass)."""
    if len(shape) != len(expect) or any(isinstance(d, int) and e is not None and d != e for d, e in zip(shape, expect)):
        want = ["N" if e is None else e for e in expect]
        raise ModelError(path, f"{key} does not match the graph: {what} is {list(shape)}, the metadata implies {want}")


def _number(value, key: str, path: str | None, lo: float | None = None, hi: float | None = None) -> float:
    """A finite number (bools and strings refused), within [lo, hi] when given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelError(path, f"{key} is {value!r}, expected a finite number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ModelError(path, f"{key} is {value!r}, outside [{lo:g}, {hi:g}]")
    return float(value)


def _integer(value, key: str, path: str | None, lo: int, hi: int) -> int:
    v = _number(value, key, path, lo, hi)
    if v != int(v):
        raise ModelError(path, f"{key} is {value!r}, expected a whole number")
    return int(v)


def _choice(value, key: str, path: str | None, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ModelError(path, f"{key} is {value!r}, expected one of {', '.join(allowed)}")
    return value


def _mapping(value, key: str, path: str | None) -> dict:
    if not isinstance(value, dict):
        raise ModelError(path, f"{key} is {value!r}, expected a JSON object")
    return value


def _fractions(value, key: str, path: str | None) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ModelError(path, f"{key} is {value!r}, expected [width, height] as image fractions")
    w, h = (_number(v, key, path, 0.0, 1.0) for v in value)
    if w <= 0 or h <= 0:
        raise ModelError(path, f"{key} is {list(value)!r}, expected fractions above 0")
    return w, h


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
