"""The training -> export -> runtime contract: one typed object, in the ONNX file and the card.

`ModelInfo` is what a classifier's ONNX `metadata_props` carry (`busi.*` keys, JSON values);
`to_metadata()` writes them and `from_metadata()` reads and validates them (the two are
inverse: a round-trip test holds them to it). `ModelCard` is the same object plus what only the
model folder needs (data, training, architecture, export facts), written by `write()` alone.
`SegmenterInfo` / `SegmenterCard` are the lesion segmenter's. Files without
`busi.contract_version` are version 1 (the exporter before the key) and read the same.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .errors import ModelError
from .validate import (
    choice,
    decode_json,
    fractions,
    integer,
    malformed,
    mapping,
    number,
    optional_number,
    optional_text,
)

CONTRACT_VERSION = 2
CLASSES = ("normal", "benign", "malignant")
MALIGNANT = CLASSES.index("malignant")
MASK_SOURCES = ("gt", "box", "none")  # the order of the report's columns
#: the margin added around a lesion box (each side, as a fraction of the box) at evaluation and
#: at run time; training draws it between 0 and 2x this
BOX_MARGIN = 0.10
#: a lesion-sized box (w, h as image fractions) for a box-trained model with no lesion to outline
PLACEHOLDER = (0.25, 0.25)
MASK_THRESHOLD = 127
SEGMENTER_THRESHOLD = 0.5
SEGMENTER_MIN_AREA = 0.002
SEGMENTER_POSTPROCESS = "resize to image, threshold, largest 8-connected component"

REQUIRED_KEYS = ("busi.classes", "busi.input", "busi.mask", "busi.operating_point")
OPTIONAL_KEYS = ("busi.contract_version", "busi.provenance", "busi.metrics", "busi.parity", "busi.quantization",
                 "busi.role")
SEGMENTER_KEYS = ("busi.role", "busi.input", "busi.segmentation")
SEGMENTER_OPTIONAL_KEYS = ("busi.contract_version", "busi.provenance", "busi.metrics", "busi.parity")
INPUT_NAMES = ("image", "mask")
OUTPUT_NAME = "probabilities"
#: extra classifier outputs for Grad-CAM: the last conv block's feature map (N, h, w, K) and
#: the closed-form Grad-CAM channel weights d logit_c / d feature, averaged over space (N, K, C)
FEATURES_NAME = "features"
CAM_WEIGHTS_NAME = "cam_weights"
SEGMENTER_INPUT = "image"
SEGMENTER_OUTPUT = "lesion"


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class InputSpec:
    size: int
    color: str = "rgb"
    dtype: str = "float32"
    range: tuple[float, float] = (0.0, 255.0)
    resize: str = "area"

    def to_json(self) -> dict:
        return {"size": self.size, "color": self.color, "dtype": self.dtype, "range": [int(v) for v in self.range],
                "resize": self.resize}

    @classmethod
    def from_json(cls, inp, path: str | None = None) -> "InputSpec":
        """`busi.input` (classifier and segmenter alike), validated."""
        inp = mapping(inp, "busi.input", path)
        spec = cls(
            size=integer(inp["size"], "busi.input.size", path, 8, 4096),
            color=inp.get("color", "rgb"),
            dtype=inp.get("dtype", "float32"),
            range=tuple(number(v, "busi.input.range", path) for v in inp.get("range", (0, 255))),
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
    source: str = "box"  # mask source the model was trained with: box | gt | none
    box_margin: float = BOX_MARGIN
    placeholder: tuple[float, float] = PLACEHOLDER
    mode: str = "multiply"
    threshold: int = MASK_THRESHOLD

    def to_json(self) -> dict:
        return {"mode": self.mode, "threshold": self.threshold, "source": self.source, "box_margin": self.box_margin,
                "placeholder": [round(float(v), 4) for v in self.placeholder]}

    @classmethod
    def from_json(cls, msk, path: str | None = None) -> "MaskSpec":
        msk = mapping(msk, "busi.mask", path)
        # version-1 cards called the margin box_margin_eval
        margin = msk.get("box_margin", msk.get("box_margin_eval", BOX_MARGIN))
        return cls(
            mode=choice(msk.get("mode", "multiply"), "busi.mask.mode", path, ("multiply",)),
            threshold=integer(msk.get("threshold", MASK_THRESHOLD), "busi.mask.threshold", path, 0, 254),
            source=choice(msk.get("source", "box"), "busi.mask.source", path, MASK_SOURCES),
            box_margin=number(margin, "busi.mask.box_margin", path, 0.0, 1.0),
            placeholder=fractions(msk.get("placeholder", PLACEHOLDER), "busi.mask.placeholder", path),
        )


@dataclass(frozen=True)
class OperatingPoint:
    """The P(malignant) threshold that sets the malignant flag, chosen on validation."""

    malignant_threshold: float
    target_sensitivity: float | None = None
    estimated: bool = True
    note: str | None = None
    validation_sensitivity: float | None = None
    validation_specificity: float | None = None
    validation_n: int | None = None

    def to_json(self) -> dict:
        return _drop_none(asdict(self))

    @classmethod
    def from_json(cls, op, path: str | None = None) -> "OperatingPoint":
        op = mapping(op, "busi.operating_point", path)
        key = "busi.operating_point."
        n = op.get("validation_n")
        return cls(
            malignant_threshold=number(op.get("malignant_threshold"), key + "malignant_threshold", path, 0.0, 1.0),
            target_sensitivity=optional_number(op.get("target_sensitivity"), key + "target_sensitivity", path, 0.0, 1.0),
            estimated=bool(op.get("estimated", True)),
            note=optional_text(op.get("note"), key + "note", path),
            validation_sensitivity=optional_number(op.get("validation_sensitivity"), key + "validation_sensitivity", path, 0.0, 1.0),
            validation_specificity=optional_number(op.get("validation_specificity"), key + "validation_specificity", path, 0.0, 1.0),
            validation_n=None if n is None else integer(n, key + "validation_n", path, 0, 10**9),
        )


@dataclass(frozen=True)
class Provenance:
    """Where the weights came from: backbone weights, data fingerprint and split seed, the git
    commit, when it was trained and exported, and the library versions of both steps."""

    weights: str | None = None
    data_fingerprint: str | None = None
    split_seed: int | None = None
    git_commit: str | None = None
    trained: str | None = None
    exported: str | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d, path: str | None = None, key: str = "busi.provenance") -> "Provenance":
        d = mapping(d, key, path)
        names = {f.name for f in fields(cls)} - {"versions"}
        kw = {k: d[k] for k in names if k in d}
        if "trained" not in kw and "created" in d:  # a version-1 card's name for it
            kw["trained"] = d["created"]
        return cls(**kw, versions=dict(mapping(d.get("versions", {}), key + ".versions", path)))


@dataclass(frozen=True)
class Parity:
    """The export gate's figures: ONNX Runtime against Keras on held-out and edge inputs."""

    tolerance: float
    max_abs_diff: float
    worst_input: str | None = None
    inputs: int | None = None
    argmax_agreement: float | None = None  # classifier
    gradcam_rel_diff: float | None = None  # classifier
    pixel_flips: int | None = None  # segmenter
    passed: bool | None = None

    def to_json(self) -> dict:
        return _drop_none(asdict(self))

    @classmethod
    def from_json(cls, d, path: str | None = None) -> "Parity | None":
        if not d:
            return None
        d = mapping(d, "busi.parity", path)
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def _metrics(value, path: str | None) -> dict[str, dict[str, Any]]:
    """Held-out figures per mask source (and the segmenter's): a JSON object of objects."""
    m = mapping(value, "busi.metrics", path)
    for k, v in m.items():
        mapping(v, f"busi.metrics.{k}", path)
    return m


def _dump(props: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v, sort_keys=True) for k, v in props.items() if v is not None}


def _version(j: dict, path: str | None) -> int:
    v = integer(j.get("busi.contract_version", 1), "busi.contract_version", path, 1, 10**6)
    if v > CONTRACT_VERSION:
        raise ModelError(path, f"written by a newer busi (contract version {v}); this one reads up to {CONTRACT_VERSION}")
    return v


@dataclass(frozen=True)
class ModelInfo:
    """A classifier's contract: what the runtime needs to feed it and to read its output."""

    input: InputSpec
    mask: MaskSpec
    operating_point: OperatingPoint
    classes: tuple[str, ...] = CLASSES
    provenance: Provenance = field(default_factory=Provenance)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    parity: Parity | None = None
    quantization: dict[str, Any] | None = None
    role: str = "classifier"
    version: int = CONTRACT_VERSION

    @property
    def malignant_threshold(self) -> float:
        return self.operating_point.malignant_threshold

    @property
    def target_sensitivity(self) -> float | None:
        return self.operating_point.target_sensitivity

    def to_metadata(self) -> dict[str, str]:
        """The ONNX metadata_props (values JSON-encoded); always written at this contract version."""
        return _dump({
            "busi.contract_version": CONTRACT_VERSION,
            "busi.role": self.role,
            "busi.classes": list(self.classes),
            "busi.input": self.input.to_json(),
            "busi.mask": self.mask.to_json(),
            "busi.operating_point": self.operating_point.to_json(),
            "busi.provenance": self.provenance.to_json(),
            "busi.metrics": self.metrics,
            "busi.parity": None if self.parity is None else self.parity.to_json(),
            "busi.quantization": self.quantization,
        })

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: str | None = None) -> "ModelInfo":
        j = decode_json(meta, REQUIRED_KEYS, OPTIONAL_KEYS, path, "model")
        with malformed(path):
            role = j.get("busi.role", "classifier")
            if role != "classifier":
                raise ModelError(path, f"busi.role is {role!r}, expected a classifier")
            quant = j.get("busi.quantization")
            return cls(
                version=_version(j, path),
                classes=_classes(j["busi.classes"], path),
                input=InputSpec.from_json(j["busi.input"], path),
                mask=MaskSpec.from_json(j["busi.mask"], path),
                operating_point=OperatingPoint.from_json(j["busi.operating_point"], path),
                provenance=Provenance.from_json(j.get("busi.provenance", {}), path),
                metrics=_metrics(j.get("busi.metrics", {}), path),
                parity=Parity.from_json(j.get("busi.parity"), path),
                quantization=None if quant is None else mapping(quant, "busi.quantization", path),
            )


def _classes(raw, path: str | None) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise ModelError(path, f"busi.classes is {raw!r}, expected a list of class names")
    classes = tuple(raw)
    if len(set(classes)) != len(classes) or set(classes) != set(CLASSES):
        raise ModelError(path, f"busi.classes is {list(classes)}, expected exactly {', '.join(CLASSES)} (each once)")
    return classes


@dataclass(frozen=True)
class SegmenterInfo:
    """The lesion segmenter's contract: input spec and the post-processing it was evaluated with."""

    input: InputSpec
    threshold: float = SEGMENTER_THRESHOLD
    min_area_frac: float = SEGMENTER_MIN_AREA
    provenance: Provenance = field(default_factory=Provenance)
    metrics: dict[str, Any] = field(default_factory=dict)
    parity: Parity | None = None
    version: int = CONTRACT_VERSION

    def to_metadata(self) -> dict[str, str]:
        return _dump({
            "busi.contract_version": CONTRACT_VERSION,
            "busi.role": "segmenter",
            "busi.input": self.input.to_json(),
            "busi.segmentation": {"output": SEGMENTER_OUTPUT, "threshold": self.threshold,
                                  "min_area_frac": self.min_area_frac, "postprocess": SEGMENTER_POSTPROCESS},
            "busi.provenance": self.provenance.to_json(),
            "busi.metrics": self.metrics,
            "busi.parity": None if self.parity is None else self.parity.to_json(),
        })

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: str | None = None) -> "SegmenterInfo":
        j = decode_json(meta, SEGMENTER_KEYS, SEGMENTER_OPTIONAL_KEYS, path, "segmenter")
        if j["busi.role"] != "segmenter":
            raise ModelError(path, f"busi.role is {j['busi.role']!r}, expected 'segmenter'")
        with malformed(path):
            seg = mapping(j["busi.segmentation"], "busi.segmentation", path)
            return cls(
                version=_version(j, path),
                input=InputSpec.from_json(j["busi.input"], path),
                threshold=number(seg.get("threshold", SEGMENTER_THRESHOLD), "busi.segmentation.threshold", path, 0.0, 1.0),
                min_area_frac=number(seg.get("min_area_frac", SEGMENTER_MIN_AREA), "busi.segmentation.min_area_frac",
                                     path, 0.0, 1.0),
                provenance=Provenance.from_json(j.get("busi.provenance", {}), path),
                metrics=mapping(j.get("busi.metrics", {}), "busi.metrics", path),
                parity=Parity.from_json(j.get("busi.parity"), path),
            )


def check_graph_shape(path, what: str, shape, expect: tuple, key: str) -> None:
    """A graph tensor's static dimensions must agree with the metadata (symbolic ones pass)."""
    if len(shape) != len(expect) or any(isinstance(d, int) and e is not None and d != e for d, e in zip(shape, expect)):
        want = ["N" if e is None else e for e in expect]
        raise ModelError(path, f"{key} does not match the graph: {what} is {list(shape)}, the metadata implies {want}")


# ---- the model folder's cards: the contract plus what only the folder needs ------------------


@dataclass(frozen=True)
class DataInfo:
    """The data a model was trained on: where, its fingerprint (manifest hash) and split counts."""

    root: str
    fingerprint: str
    split_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    duplicate_groups: int | None = None
    conflicting_groups_excluded: int | None = None

    def to_json(self) -> dict:
        return _drop_none(asdict(self))

    @classmethod
    def from_json(cls, d, path: str | None = None) -> "DataInfo":
        d = mapping(d, "data", path)
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class ModelCard:
    """card.json: the classifier's contract (`info`, the same object the ONNX file carries)
    and the model folder's own facts. Update it with `dataclasses.replace`, write it with
    `write()`."""

    info: ModelInfo
    name: str
    data: DataInfo
    training: dict[str, Any]  # the fit configuration and what the run did
    architecture: dict[str, Any]  # backbone, head, parameter counts
    task: str = "breast ultrasound classification: normal / benign / malignant"
    intended_use: str = ""
    not_for: tuple[str, ...] = ()
    export: dict[str, Any] | None = None

    @property
    def seed(self) -> int:
        return int(self.training.get("seed", 0))

    @property
    def lesion_box_sizes(self) -> list[list[int]]:
        """(w, h) of the training split's lesion boxes, at the input size."""
        return self.training.get("lesion_box_sizes") or []

    def to_json(self) -> dict:
        i = self.info
        return _drop_none({
            "contract_version": CONTRACT_VERSION,
            "name": self.name,
            "task": self.task,
            "classes": list(i.classes),
            "intended_use": self.intended_use,
            "not_for": list(self.not_for),
            "input": i.input.to_json(),
            "mask": i.mask.to_json(),
            "operating_point": i.operating_point.to_json(),
            "metrics": i.metrics,
            "provenance": i.provenance.to_json(),
            "parity": None if i.parity is None else i.parity.to_json(),
            "quantization": i.quantization,
            "architecture": self.architecture,
            "training": self.training,
            "data": self.data.to_json(),
            "export": self.export,
        })

    @classmethod
    def from_json(cls, d: dict, path: str | None = None) -> "ModelCard":
        with malformed(path, "card"):
            d = mapping(d, "card", path)
            data = DataInfo.from_json(d["data"], path)
            training = mapping(d.get("training", {}), "training", path)
            arch = dict(mapping(d.get("architecture", {}), "architecture", path))
            legacy = "contract_version" not in d  # version 1: input and mask lived in the architecture
            inp, msk = (arch.pop("input"), arch.pop("mask")) if legacy else (d["input"], d["mask"])
            prov = Provenance.from_json(d.get("provenance", {}), path)
            if legacy:
                prov = replace(prov, data_fingerprint=data.fingerprint, split_seed=training.get("seed"))
            info = ModelInfo(
                version=1 if legacy else int(d["contract_version"]),
                classes=_classes(d.get("classes", list(CLASSES)), path),
                input=InputSpec.from_json(inp, path),
                mask=MaskSpec.from_json(msk, path),
                operating_point=OperatingPoint.from_json(d["operating_point"], path),
                provenance=prov,
                metrics=_metrics(d.get("metrics", {}), path),
                parity=None if legacy else Parity.from_json(d.get("parity"), path),
                quantization=d.get("quantization"),
            )
            return cls(info=info, name=d.get("name", ""), data=data, training=training, architecture=arch,
                       task=d.get("task", cls.task), intended_use=d.get("intended_use", ""),
                       not_for=tuple(d.get("not_for", ())), export=d.get("export"))

    @classmethod
    def load(cls, path: str | Path) -> "ModelCard":
        return cls.from_json(_read_json(path), str(path))

    def write(self, path: str | Path) -> None:
        """The one writer of card.json (atomically)."""
        atomic_write_text(Path(path), json.dumps(self.to_json(), indent=2) + "\n")


@dataclass(frozen=True)
class SegmenterCard:
    """segmenter.json: the segmenter's contract plus its training facts."""

    info: SegmenterInfo
    name: str
    data: DataInfo
    training: dict[str, Any]
    architecture: dict[str, Any]
    metrics_val: dict[str, Any] = field(default_factory=dict)
    task: str = "breast ultrasound lesion segmentation (for --mask auto)"

    def to_json(self) -> dict:
        i = self.info
        return _drop_none({
            "contract_version": CONTRACT_VERSION,
            "name": self.name,
            "role": "segmenter",
            "task": self.task,
            "architecture": self.architecture,
            "input": i.input.to_json(),
            "threshold": i.threshold,
            "min_area_frac": i.min_area_frac,
            "postprocess": SEGMENTER_POSTPROCESS,
            "training": self.training,
            "data": self.data.to_json(),
            "metrics": i.metrics,
            "metrics_val": self.metrics_val,
            "provenance": i.provenance.to_json(),
            "parity": None if i.parity is None else i.parity.to_json(),
        })

    @classmethod
    def from_json(cls, d: dict, path: str | None = None) -> "SegmenterCard":
        with malformed(path, "segmenter card"):
            d = mapping(d, "segmenter card", path)
            data = DataInfo.from_json(d["data"], path)
            prov = Provenance.from_json(d.get("provenance", {}), path)
            if "contract_version" not in d:
                prov = replace(prov, data_fingerprint=data.fingerprint)
            info = SegmenterInfo(
                version=int(d.get("contract_version", 1)),
                input=InputSpec.from_json(d["input"], path),
                threshold=number(d.get("threshold", SEGMENTER_THRESHOLD), "threshold", path, 0.0, 1.0),
                min_area_frac=number(d.get("min_area_frac", SEGMENTER_MIN_AREA), "min_area_frac", path, 0.0, 1.0),
                provenance=prov,
                metrics=mapping(d.get("metrics", {}), "metrics", path),
                parity=Parity.from_json(d.get("parity"), path),
            )
            return cls(info=info, name=d.get("name", ""), data=data, training=dict(d.get("training", {})),
                       architecture=dict(d.get("architecture", {})), metrics_val=dict(d.get("metrics_val", {})),
                       task=d.get("task", cls.task))

    @classmethod
    def load(cls, path: str | Path) -> "SegmenterCard":
        return cls.from_json(_read_json(path), str(path))

    def write(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_json(), indent=2) + "\n")


def _read_json(path: str | Path) -> dict:
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise ModelError(p, "not found (the model folder is incomplete)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(p, f"cannot read it as JSON ({type(e).__name__}: {e})") from None
