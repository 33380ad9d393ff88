"""What the Predictor gives back: a Prediction, a NeedsRoi (auto abstained), a Failure, and the
Prepared inputs between.

The kind of a result is said one way: `result.kind` (PREDICTION, NEEDS_ROI, FAILURE), and for
a record (a result's `to_dict()`, or busi-infer's study summary) `record_kind(record)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .masks import Box

PREDICTION, NEEDS_ROI, FAILURE, STUDY = "prediction", "needs_roi", "failure", "study"


def record_kind(record: dict) -> str:
    """The kind of a record: STUDY (a `--by study` summary), FAILURE, NEEDS_ROI or PREDICTION."""
    if record.get("record") == STUDY:
        return STUDY
    if "error" in record:
        return FAILURE
    return NEEDS_ROI if record.get("needs_roi") else PREDICTION


def flag_probability(cine: dict | None, probabilities: dict[str, float]) -> float:
    """The P(malignant) behind a result's (or a record's) malignant flag: a cine loop's highest
    frame, else the image's."""
    return float((cine or {}).get("max_malignant", probabilities["malignant"]))


@dataclass
class Prediction:
    kind: ClassVar[str] = PREDICTION
    path: str | None
    label: str
    confidence: float
    probabilities: dict[str, float]
    malignant: bool
    threshold: float
    mask_source: str
    lesion_box: Box | None
    provider: str
    model_sha256: str
    tta: bool = False
    #: probabilities calibrated with the model's temperature (False: a model without one)
    calibrated: bool = False
    lesion_found: bool | None = None  # mask source auto: did the segmenter find a lesion?
    lesion_presence: float | None = None  # mask source auto: the segmenter's presence score
    notes: list[str] = field(default_factory=list)
    #: DICOM inputs: StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, frame and frames
    dicom: dict[str, Any] | None = None
    #: a cine loop classified frame by frame (frames="all"): see Predictor.aggregate
    cine: dict[str, Any] | None = None
    #: the likelihood band aligned with BI-RADS of the P(malignant) behind the flag (runtime.trust)
    likelihood: dict[str, Any] | None = None
    #: probabilities adjusted to the site prevalence given (prior shift); the flag does not use them
    adjusted_probabilities: dict[str, float] | None = None
    #: the conformal prediction set at `coverage`, most probable class first
    prediction_set: list[str] | None = None
    coverage: float | None = None
    #: the out-of-distribution guard: True when the image is unlike the training images (the
    #: class is then not to be trusted; it is never changed), with its score and threshold
    out_of_distribution: bool | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None
    #: not serialized: "cam" (Grad-CAM map, feature-map size) with explain=True; "view"
    #: (thumbnail RGB), "mask" (what the classifier saw) and "lesion" (found/given lesion)
    #: with keep_view=True
    extras: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    #: the fields a record leaves out when they are None (the rest are always there)
    OPTIONAL = ("dicom", "cine", "likelihood", "adjusted_probabilities", "prediction_set", "coverage",
                "out_of_distribution", "ood_score", "ood_threshold", "lesion_presence")

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extras"}
        d["probabilities"] = dict(self.probabilities)
        d["notes"] = list(self.notes)
        d = {"class" if k == "label" else k: v for k, v in d.items()}
        d["lesion_box"] = list(self.lesion_box) if self.lesion_box else None
        for key in self.OPTIONAL:
            if d[key] is None:
                del d[key]
            elif isinstance(d[key], dict):
                d[key] = dict(d[key])
            elif isinstance(d[key], list):
                d[key] = list(d[key])
        return d

    @property
    def flag_probability(self) -> float:
        """The P(malignant) that set the malignant flag: a cine loop's highest frame, else the image's."""
        return flag_probability(self.cine, self.probabilities)

    def __getitem__(self, key: str):  # result["class"], result["confidence"] as in the seed
        return self.to_dict()[key]


@dataclass
class NeedsRoi:
    """`--mask auto` abstained: the segmenter is unsure whether there is a lesion, or what it
    found is not a plausible one (at the frame, too large, in the near field). The image is
    not classified: give a box (--roi) or a mask. Not an error."""

    kind: ClassVar[str] = NEEDS_ROI
    path: str | None
    reason: str
    lesion_presence: float
    presence_band: tuple[float, float]
    lesion_box: Box | None  # the region found, in image pixels, for a reviewer to check
    provider: str
    model_sha256: str
    notes: list[str] = field(default_factory=list)
    dicom: dict[str, Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    mask_source: str = "auto"
    needs_roi: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = {"path": self.path, "needs_roi": True, "reason": self.reason, "mask_source": self.mask_source,
             "lesion_presence": self.lesion_presence, "presence_band": list(self.presence_band),
             "lesion_box": list(self.lesion_box) if self.lesion_box else None, "provider": self.provider,
             "model_sha256": self.model_sha256, "notes": list(self.notes)}
        if self.dicom is not None:
            d["dicom"] = dict(self.dicom)
        return d

    def __getitem__(self, key: str):
        return self.to_dict()[key]


@dataclass
class Failure:
    kind: ClassVar[str] = FAILURE
    path: str | None
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error}


@dataclass
class Prepared:
    path: str | None
    image: np.ndarray  # (S, S, 3) float32
    mask: np.ndarray  # (S, S, 1) float32
    mask_source: str
    lesion_box: Box | None
    lesion_found: bool | None = None
    notes: list[str] = field(default_factory=list)
    view: dict[str, np.ndarray] | None = None
    dicom: dict[str, Any] | None = None
    lesion_presence: float | None = None


def aggregate(frames: list["Prediction | NeedsRoi | Failure"], classes: tuple[str, ...]) -> "Prediction | NeedsRoi | Failure":
    """One result for a cine loop classified frame by frame. Class and confidence come from
    the mean of the frames' probabilities; the malignant flag (and the ROI, Grad-CAM and
    view) from the frame with the highest P(malignant): sensitivity comes first, a lesion
    seen well in one frame is not averaged away. `cine` says so, with the figures."""
    ok = [f for f in frames if isinstance(f, Prediction)]
    if not ok:  # no frame classified: a loop where auto abstained on every frame says so
        return next((f for f in frames if isinstance(f, NeedsRoi)), frames[0])
    mal = classes.index("malignant")
    P = np.array([[f.probabilities[c] for c in classes] for f in ok])
    mean = P.mean(axis=0)
    j = int(np.argmax(P[:, mal]))
    top, k = ok[j], int(np.argmax(mean))
    failed = [f for f in frames if isinstance(f, Failure)]
    notes = list(dict.fromkeys(n for f in ok for n in f.notes))
    guarded = [f for f in ok if f.ood_score is not None]
    worst = max(guarded, key=lambda f: f.ood_score / f.ood_threshold) if guarded else None
    if failed:
        notes.append(f"{len(failed)} of {len(frames)} frames could not be classified: {failed[0].error}")
    abstained = [f for f in frames if isinstance(f, NeedsRoi)]
    if abstained:
        notes.append(f"{len(abstained)} of {len(frames)} frames not classified, auto abstained: {abstained[0].reason}")
    cine = {
        "frames": len(ok),
        "mean_probabilities": {c: float(v) for c, v in zip(classes, mean)},
        "max_malignant_frame": int((top.dicom or {}).get("frame", j)),
        "max_malignant": float(P[j, mal]),
        "max_frame_probabilities": dict(top.probabilities),
        "rule": "class and confidence from the mean probabilities over the frames; the malignant flag, ROI and "
                "views from the frame with the highest P(malignant)",
    }
    return Prediction(
        path=top.path, label=classes[k], confidence=float(mean[k]),
        probabilities={c: float(v) for c, v in zip(classes, mean)},
        malignant=bool(P[j, mal] >= top.threshold), threshold=top.threshold, mask_source=top.mask_source,
        lesion_box=top.lesion_box, provider=top.provider, model_sha256=top.model_sha256, tta=top.tta,
        calibrated=top.calibrated,
        lesion_found=top.lesion_found, lesion_presence=top.lesion_presence, notes=notes, dicom=top.dicom, cine=cine,
        extras=top.extras,
        # a loop is out of distribution when any frame is: the frame furthest above its threshold speaks
        out_of_distribution=None if worst is None else any(f.out_of_distribution for f in guarded),
        ood_score=None if worst is None else worst.ood_score, ood_threshold=None if worst is None else worst.ood_threshold,
    )
