"""The training/runtime contract carried in the ONNX file's `metadata_props`.

Export writes these keys; the runtime reads them back into a typed `ModelInfo` and refuses
a file without them. No second file has to travel with the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelError

REQUIRED_KEYS = ("busi.classes", "busi.input", "busi.mask", "busi.operating_point")
OPTIONAL_KEYS = ("busi.provenance", "busi.metrics", "busi.parity", "busi.quantization", "busi.role")
INPUT_NAMES = ("image", "mask")
OUTPUT_NAME = "probabilities"


@dataclass(frozen=True)
class InputSpec:
    size: int
    color: str = "rgb"
    dtype: str = "float32"
    range: tuple[float, float] = (0.0, 255.0)
    resize: str = "area"


@dataclass(frozen=True)
class MaskSpec:
    mode: str = "multiply"
    threshold: int = 127
    source: str = "box"  # mask source the model was trained with: box | gt | none
    box_margin: float = 0.10


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
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise ModelError(path, f"not a busi model: metadata lacks {', '.join(missing)}")
        try:
            j = {k: json.loads(meta[k]) for k in REQUIRED_KEYS + OPTIONAL_KEYS if k in meta}
            classes = tuple(str(c) for c in j["busi.classes"])
            inp = j["busi.input"]
            msk = j["busi.mask"]
            op = j["busi.operating_point"]
            info = cls(
                classes=classes,
                input=InputSpec(
                    size=int(inp["size"]),
                    color=inp.get("color", "rgb"),
                    dtype=inp.get("dtype", "float32"),
                    range=tuple(inp.get("range", (0, 255))),
                    resize=inp.get("resize", "area"),
                ),
                mask=MaskSpec(
                    mode=msk.get("mode", "multiply"),
                    threshold=int(msk.get("threshold", 127)),
                    source=msk.get("source", "box"),
                    box_margin=float(msk.get("box_margin", 0.10)),
                ),
                malignant_threshold=float(op["malignant_threshold"]),
                target_sensitivity=op.get("target_sensitivity"),
                role=j.get("busi.role", "classifier"),
                provenance=j.get("busi.provenance", {}),
                metrics=j.get("busi.metrics", {}),
                parity=j.get("busi.parity", {}),
                quantization=j.get("busi.quantization"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(path, f"busi metadata is malformed ({type(e).__name__}: {e})") from None
        if "malignant" not in info.classes:
            raise ModelError(path, f"busi.classes has no 'malignant': {list(info.classes)}")
        return info


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
    extra: dict | None = None,
) -> dict[str, str]:
    """The metadata_props dict that export writes (values JSON-encoded)."""
    props = {
        "busi.classes": list(classes),
        "busi.input": {"size": int(size), "color": "rgb", "dtype": "float32", "range": [0, 255], "resize": "area"},
        "busi.mask": {"mode": "multiply", "threshold": 127, "source": mask_source, "box_margin": box_margin},
        "busi.operating_point": operating_point,
        "busi.provenance": provenance,
        "busi.metrics": metrics,
        "busi.parity": parity,
        "busi.role": "classifier",
    }
    props.update(extra or {})
    return {k: json.dumps(v, sort_keys=True) for k, v in props.items()}
