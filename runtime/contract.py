"""The training -> export -> runtime contract: one typed object, in the ONNX file and the card.

`ModelInfo` is what a classifier's ONNX `metadata_props` carry (`busi.*` keys, JSON values);
`to_metadata()` writes them and `from_metadata()` reads and validates them (the two are
inverse: a round-trip test holds them to it). `SegmenterInfo` is the lesion segmenter's. The
model folder's cards (`busi.runtime.card`) are these objects plus what only the folder needs. Files without
`busi.contract_version` are version 1 (the exporter before the key) and read the same.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any, Callable

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
    packed_floats,
    unpack_floats,
)

#: 5: busi.presence in the segmenter's metadata (when `--mask auto` classifies and when it
#: abstains with needs_roi; a segmenter without it never abstains);
#: 4: busi.ood (the out-of-distribution guard: statistics and threshold per mask source);
#: 3: busi.calibration (the operating point is on calibrated probabilities, so a runtime that
#: does not apply it must refuse the file), busi.prevalence, busi.conformal;
#: 2: busi.contract_version; 1: files before the key
CONTRACT_VERSION = 5
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
                 "busi.role", "busi.calibration", "busi.prevalence", "busi.conformal", "busi.ood")
SEGMENTER_KEYS = ("busi.role", "busi.input", "busi.segmentation")
SEGMENTER_OPTIONAL_KEYS = ("busi.contract_version", "busi.provenance", "busi.metrics", "busi.parity", "busi.presence")
INPUT_NAMES = ("image", "mask")
OUTPUT_NAME = "probabilities"
#: extra classifier outputs for Grad-CAM: the last conv block's feature map (N, h, w, K) and
#: the closed-form Grad-CAM channel weights d logit_c / d feature, averaged over space (N, K, C)
FEATURES_NAME = "features"
CAM_WEIGHTS_NAME = "cam_weights"
SEGMENTER_INPUT = "image"
SEGMENTER_OUTPUT = "lesion"
#: the models' names on an inference server (Triton repository, busi-serve)
SERVED_NAMES = {"classifier": "busi_classifier", "segmenter": "busi_segmenter"}
#: the prefix of the contract's metadata keys, and the key beside them on a server that names the file's digest
PREFIX = "busi."
SHA256_KEY = "busi.sha256"


def drop_none(d: dict) -> dict:
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
    #: where the threshold was chosen: None (the validation split) or "K-fold cross-validation
    #: on train + validation (out-of-fold predictions)"; the validation_* figures are then out-of-fold
    method: str | None = None

    def to_json(self) -> dict:
        return drop_none(asdict(self))

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
            method=optional_text(op.get("method"), key + "method", path),
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
        return drop_none(asdict(self))

    @classmethod
    def from_json(cls, d, path: str | None = None) -> "Parity | None":
        if not d:
            return None
        d = mapping(d, "busi.parity", path)
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted on one half of the validation split (the other half is kept
    for what must not see the same scores): probabilities = softmax(log p / temperature)."""

    temperature: float
    n: int  # validation images it was fitted on
    nll_before: float | None = None
    nll_after: float | None = None
    method: str = "temperature"

    def to_json(self) -> dict:
        return drop_none(asdict(self))

    @classmethod
    def from_json(cls, d, path: str | None = None) -> "Calibration | None":
        if d is None:
            return None
        d = mapping(d, "busi.calibration", path)
        return cls(
            method=choice(d.get("method", "temperature"), "busi.calibration.method", path, ("temperature",)),
            temperature=number(d.get("temperature"), "busi.calibration.temperature", path, 0.01, 100.0),
            n=integer(d.get("n", 0), "busi.calibration.n", path, 0, 10**9),
            nll_before=optional_number(d.get("nll_before"), "busi.calibration.nll_before", path, 0.0),
            nll_after=optional_number(d.get("nll_after"), "busi.calibration.nll_after", path, 0.0),
        )


@dataclass(frozen=True)
class Conformal:
    """Split conformal prediction sets (LAC): the nonconformity scores 1 - p(true class) of the
    validation images held back from calibration, sorted. A set at coverage 1 - a holds every
    class whose score is at most the ceil((n + 1)(1 - a))-th smallest of them."""

    scores: tuple[float, ...]
    coverage: float = 0.9  # the default when the user asks for none
    method: str = "lac"

    def to_json(self) -> dict:
        return {"scores": [round(float(v), 8) for v in self.scores], "coverage": self.coverage, "method": self.method}

    @classmethod
    def from_json(cls, d, path: str | None = None) -> "Conformal | None":
        if d is None:
            return None
        d = mapping(d, "busi.conformal", path)
        raw = d.get("scores")
        if not isinstance(raw, list) or not raw:
            raise ModelError(path, f"busi.conformal.scores is {raw!r:.60}, expected a list of numbers")
        scores = tuple(sorted(number(v, "busi.conformal.scores", path, 0.0, 1.0) for v in raw))
        return cls(scores=scores, coverage=number(d.get("coverage", 0.9), "busi.conformal.coverage", path, 0.0, 1.0),
                   method=choice(d.get("method", "lac"), "busi.conformal.method", path, ("lac",)))


@dataclass(frozen=True)
class OodStats:
    """The training statistics of one mask source: class means of the pooled features (the
    `features` output averaged over space, D values) of the training images with that mask
    source, and one covariance shared by the classes (Ledoit-Wolf shrinkage), exact in its k
    leading principal directions and one pooled variance in the rest, so the file carries
    D x k numbers instead of D x D; and the threshold: the `quantile` of the validation images'
    scores with the same mask source.

    The arrays are float32, little-endian, base64 (`means` C x D, `components` D x k with
    orthonormal columns, `variances` k); properties give them as numpy arrays."""

    dim: int
    rank: int
    means: str
    components: str
    variances: str
    residual_variance: float
    threshold: float = float("inf")

    @cached_property
    def mean_array(self):
        return unpack_floats(self.means, (-1, self.dim))

    @cached_property
    def component_array(self):
        return unpack_floats(self.components, (self.dim, self.rank))

    @cached_property
    def variance_array(self):
        return unpack_floats(self.variances, (self.rank,))

    def to_json(self) -> dict:
        return {"dim": self.dim, "rank": self.rank, "means": self.means, "components": self.components,
                "variances": self.variances, "residual_variance": self.residual_variance, "threshold": self.threshold}

    @classmethod
    def from_json(cls, d, key: str, path: str | None = None) -> "OodStats":
        d = mapping(d, key, path)
        dim = integer(d.get("dim"), f"{key}.dim", path, 1, 1 << 16)
        rank = integer(d.get("rank"), f"{key}.rank", path, 1, dim)
        stats = cls(
            dim=dim, rank=rank,
            means=packed_floats(d.get("means"), f"{key}.means", path, None, dim),
            components=packed_floats(d.get("components"), f"{key}.components", path, dim * rank),
            variances=packed_floats(d.get("variances"), f"{key}.variances", path, rank, positive=True),
            residual_variance=number(d.get("residual_variance"), f"{key}.residual_variance", path, 1e-30),
            threshold=number(d.get("threshold"), f"{key}.threshold", path, 0.0),
        )
        return stats


@dataclass(frozen=True)
class OodGuard:
    """The out-of-distribution guard: the squared Mahalanobis distance of an image's pooled
    features to the nearest class mean of the training images with the same mask source
    (`sources`: one `OodStats` each). An image whose distance exceeds its source's threshold is
    flagged; the flag never changes the class."""

    sources: dict[str, OodStats]
    quantile: float = 0.99
    n_fit: int = 0
    n_validation: int = 0
    method: str = "mahalanobis"
    features: str = "features output, mean over space"

    def stats(self, mask_source: str, trained: str) -> OodStats:
        """The statistics of a mask source; `auto` (and any source without its own) uses the
        trained source's: the segmenter's lesion becomes the same kind of mask."""
        return self.sources.get(mask_source) or self.sources.get(trained) or next(iter(self.sources.values()))

    @property
    def thresholds(self) -> dict[str, float]:
        return {k: v.threshold for k, v in self.sources.items()}

    def to_json(self) -> dict:
        return {"method": self.method, "features": self.features, "quantile": self.quantile, "n_fit": self.n_fit,
                "n_validation": self.n_validation, "sources": {k: v.to_json() for k, v in self.sources.items()}}

    @classmethod
    def from_json(cls, d, path: str | None = None) -> "OodGuard | None":
        if d is None:
            return None
        d = mapping(d, "busi.ood", path)
        sources = mapping(d.get("sources"), "busi.ood.sources", path)
        if not sources or not set(sources) <= set(MASK_SOURCES) | {"auto"}:
            raise ModelError(path, f"busi.ood.sources names {sorted(sources)!r:.80}, expected mask sources")
        return cls(
            sources={k: OodStats.from_json(v, f"busi.ood.sources.{k}", path) for k, v in sources.items()},
            method=choice(d.get("method"), "busi.ood.method", path, ("mahalanobis",)),
            features=optional_text(d.get("features", cls.features), "busi.ood.features", path),
            quantile=number(d.get("quantile", 0.99), "busi.ood.quantile", path, 0.0, 1.0),
            n_fit=integer(d.get("n_fit", 0), "busi.ood.n_fit", path, 0, 10**9),
            n_validation=integer(d.get("n_validation", 0), "busi.ood.n_validation", path, 0, 10**9),
        )


def prevalence_of(value, path: str | None, key: str = "busi.prevalence") -> dict[str, float] | None:
    """Class prevalences {class: fraction}, every class once, summing to 1."""
    if value is None:
        return None
    d = mapping(value, key, path)
    if set(d) != set(CLASSES):
        raise ModelError(path, f"{key} names {sorted(d)}, expected {', '.join(CLASSES)}")
    out = {c: number(d[c], f"{key}.{c}", path, 0.0, 1.0) for c in CLASSES}
    if abs(sum(out.values()) - 1) > 1e-3 or min(out.values()) <= 0:
        raise ModelError(path, f"{key} is {out}, expected fractions above 0 that sum to 1")
    return out


def metrics_of(value, path: str | None) -> dict[str, dict[str, Any]]:
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
    calibration: Calibration | None = None
    #: the training split's class fractions (the prior the probabilities carry)
    prevalence: dict[str, float] | None = None
    conformal: Conformal | None = None
    ood: OodGuard | None = None
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
        return _dump({"busi.contract_version": CONTRACT_VERSION, "busi.role": self.role,
                      **dump_fields(self, MODEL_FIELDS, PREFIX)})

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: str | None = None) -> "ModelInfo":
        j = decode_json(meta, REQUIRED_KEYS, OPTIONAL_KEYS, path, "model")
        with malformed(path):
            role = j.get("busi.role", "classifier")
            if role != "classifier":
                raise ModelError(path, f"busi.role is {role!r}, expected a classifier")
            return cls(version=_version(j, path), **load_fields(j, MODEL_FIELDS, path, PREFIX))


def classes_of(raw, path: str | None) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise ModelError(path, f"busi.classes is {raw!r}, expected a list of class names")
    classes = tuple(raw)
    if len(set(classes)) != len(classes) or set(classes) != set(CLASSES):
        raise ModelError(path, f"busi.classes is {list(classes)}, expected exactly {', '.join(CLASSES)} (each once)")
    return classes


@dataclass(frozen=True)
class Presence:
    """When `--mask auto` classifies and when it abstains (`needs_roi`).

    score: the lesion presence of an image (`masks.find_lesion`: mean probability inside the
    largest component x the fraction of the image it covers). At or below `low` there is no
    lesion, from `high` on there is one, in between the segmenter is unsure and auto abstains.
    Chosen on validation (`train.segmenter.fit_presence`): of the score that keeps
    `target_sensitivity` of the lesion images at or above it and the one that keeps
    `target_specificity` of the normal images at or below it, `low` is the lower, `high` the
    higher. A found region is classified only when it is plausible (`masks.implausible`: not
    at the frame, not larger than `max_area`, not wholly in the top `near_field` of the rows)."""

    low: float
    high: float
    target_sensitivity: float = 0.95
    target_specificity: float = 0.95
    max_area: float = 0.6
    frame_margin: float = 0.01
    near_field: float = 0.12
    n_lesion: int = 0
    n_normal: int = 0
    score: str = "mean probability inside the largest component x its area fraction"

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("score", "low", "high", "target_sensitivity", "target_specificity",
                                               "max_area", "frame_margin", "near_field", "n_lesion", "n_normal")}

    @classmethod
    def from_json(cls, d, path: str | None = None) -> "Presence | None":
        if d is None:
            return None
        d = mapping(d, "busi.presence", path)
        low = number(d.get("low"), "busi.presence.low", path, 0.0, 1.0)
        high = number(d.get("high"), "busi.presence.high", path, 0.0, 1.0)
        if high < low:
            raise ModelError(path, f"busi.presence.high ({high}) is below busi.presence.low ({low})")
        return cls(
            low=low, high=high,
            target_sensitivity=number(d.get("target_sensitivity", 0.95), "busi.presence.target_sensitivity", path, 0.0, 1.0),
            target_specificity=number(d.get("target_specificity", 0.95), "busi.presence.target_specificity", path, 0.0, 1.0),
            max_area=number(d.get("max_area", 0.6), "busi.presence.max_area", path, 0.0, 1.0),
            frame_margin=number(d.get("frame_margin", 0.01), "busi.presence.frame_margin", path, 0.0, 0.5),
            near_field=number(d.get("near_field", 0.12), "busi.presence.near_field", path, 0.0, 1.0),
            n_lesion=integer(d.get("n_lesion", 0), "busi.presence.n_lesion", path, 0, 10**9),
            n_normal=integer(d.get("n_normal", 0), "busi.presence.n_normal", path, 0, 10**9),
            score=optional_text(d.get("score", cls.score), "busi.presence.score", path),
        )


@dataclass(frozen=True)
class SegmenterInfo:
    """The lesion segmenter's contract: input spec and the post-processing it was evaluated with."""

    input: InputSpec
    threshold: float = SEGMENTER_THRESHOLD
    min_area_frac: float = SEGMENTER_MIN_AREA
    provenance: Provenance = field(default_factory=Provenance)
    metrics: dict[str, Any] = field(default_factory=dict)
    parity: Parity | None = None
    #: when auto classifies and when it abstains (None: a segmenter from before contract 5,
    #: which never abstains)
    presence: Presence | None = None
    version: int = CONTRACT_VERSION

    def to_metadata(self) -> dict[str, str]:
        j = dump_fields(self, SEGMENTER_FIELDS, PREFIX)
        seg = {"output": SEGMENTER_OUTPUT, "threshold": j.pop("busi.threshold"),
               "min_area_frac": j.pop("busi.min_area_frac"), "postprocess": SEGMENTER_POSTPROCESS}
        return _dump({"busi.contract_version": CONTRACT_VERSION, "busi.role": "segmenter", **j, "busi.segmentation": seg})

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: str | None = None) -> "SegmenterInfo":
        j = decode_json(meta, SEGMENTER_KEYS, SEGMENTER_OPTIONAL_KEYS, path, "segmenter")
        if j["busi.role"] != "segmenter":
            raise ModelError(path, f"busi.role is {j['busi.role']!r}, expected 'segmenter'")
        with malformed(path):
            seg = mapping(j["busi.segmentation"], "busi.segmentation", path)
            nested = {k: v for k, v in SEGMENTER_FIELDS.items() if k in SEGMENTATION_KEYS}
            flat = {k: v for k, v in SEGMENTER_FIELDS.items() if k not in SEGMENTATION_KEYS}
            return cls(version=_version(j, path), **load_fields(j, flat, path, PREFIX),
                       **load_fields(seg, nested, path, "busi.segmentation."))


# ---- the field tables: how each field of ModelInfo and SegmenterInfo is read from its JSON value.
# Written by `dump_fields` (nested objects by their to_json, tuples as lists, None left out) and
# read by `load_fields`, with a key prefix: "busi." in the ONNX metadata, none in the card.

#: an absent key that must be there
REQUIRED = object()
#: (JSON value, or `absent` when the key is missing; file; key) -> the field's value
Loader = Callable[[Any, "str | None", str], Any]


def _by_path(read) -> Loader:
    """A loader from a reader that names its own key: read(value, path)."""
    return lambda value, path, key: read(value, path)


#: ModelInfo: field -> (loader, the JSON value an absent key stands for); the order is the files'
MODEL_FIELDS: dict[str, tuple[Loader, Any]] = {
    "classes": (_by_path(classes_of), list(CLASSES)),
    "input": (_by_path(InputSpec.from_json), REQUIRED),
    "mask": (_by_path(MaskSpec.from_json), REQUIRED),
    "operating_point": (_by_path(OperatingPoint.from_json), REQUIRED),
    "provenance": (lambda v, p, k: Provenance.from_json(v, p, k), {}),
    "metrics": (_by_path(metrics_of), {}),
    "parity": (_by_path(Parity.from_json), None),
    "quantization": (lambda v, p, k: None if v is None else mapping(v, k, p), None),
    "calibration": (_by_path(Calibration.from_json), None),
    "prevalence": (prevalence_of, None),
    "conformal": (_by_path(Conformal.from_json), None),
    "ood": (_by_path(OodGuard.from_json), None),
}
#: SegmenterInfo's; in the ONNX metadata the SEGMENTATION_KEYS live inside busi.segmentation
SEGMENTER_FIELDS: dict[str, tuple[Loader, Any]] = {
    "input": (_by_path(InputSpec.from_json), REQUIRED),
    "threshold": (lambda v, p, k: number(v, k, p, 0.0, 1.0), SEGMENTER_THRESHOLD),
    "min_area_frac": (lambda v, p, k: number(v, k, p, 0.0, 1.0), SEGMENTER_MIN_AREA),
    "provenance": (lambda v, p, k: Provenance.from_json(v, p, k), {}),
    "metrics": (lambda v, p, k: mapping(v, k, p), {}),
    "parity": (_by_path(Parity.from_json), None),
    "presence": (_by_path(Presence.from_json), None),
}
SEGMENTATION_KEYS = ("threshold", "min_area_frac")
for _cls, _table in ((ModelInfo, MODEL_FIELDS), (SegmenterInfo, SEGMENTER_FIELDS)):  # every field has its entry
    assert set(_table) == {f.name for f in fields(_cls)} - {"role", "version"}, _cls


def _json_value(value):
    if value is None or isinstance(value, (str, int, float, bool, dict, list)):
        return value
    return list(value) if isinstance(value, tuple) else value.to_json()


def dump_fields(info, table: dict, prefix: str = "", **special: Callable[[Any], Any]) -> dict[str, Any]:
    """The JSON values of `info`'s fields under `prefix + name` (None where a field is None);
    `special[name]` writes that field its own way."""
    out = {}
    for name in table:
        value = getattr(info, name)
        out[prefix + name] = value if value is None else special.get(name, _json_value)(value)
    return out


def load_fields(d: dict, table: dict, path: str | None, prefix: str = "", **special: Loader) -> dict[str, Any]:
    """The fields of `table` read and validated from `d[prefix + name]`; `special[name]` reads
    that field its own way. A missing required key raises KeyError (`malformed` names it)."""
    out = {}
    for name, (load, absent) in table.items():
        key = prefix + name
        raw = d.get(key, absent)
        if raw is REQUIRED:
            raise KeyError(key)
        out[name] = special.get(name, load)(raw, path, key)
    return out


def served_parameters(metadata: dict[str, str], sha256: str) -> dict[str, str]:
    """What an inference server's model configuration carries (Triton repository and busi-serve
    alike): every contract key of the file's metadata, verbatim, and the file's digest."""
    return {**{k: v for k, v in metadata.items() if k.startswith(PREFIX)}, SHA256_KEY: sha256}


def check_graph_shape(path, what: str, shape, expect: tuple, key: str) -> None:
    """A graph tensor's static dimensions must agree with the metadata (symbolic ones pass)."""
    if len(shape) != len(expect) or any(isinstance(d, int) and e is not None and d != e for d, e in zip(shape, expect)):
        want = ["N" if e is None else e for e in expect]
        raise ModelError(path, f"{key} does not match the graph: {what} is {list(shape)}, the metadata implies {want}")
