"""card.json and segmenter.json: the contract (`ModelInfo`, `SegmenterInfo`, the very objects
the ONNX files carry) plus what only the model folder needs (data, training, architecture,
export facts). Written only by `write()`; cards written before the contract had a version
(version 1: input and mask inside "architecture", `box_margin_eval`, `created`) still load."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .contract import (
    CONTRACT_VERSION,
    MODEL_FIELDS,
    SEGMENTER_FIELDS,
    SEGMENTER_POSTPROCESS,
    ModelInfo,
    OodGuard,
    SegmenterInfo,
    drop_none,
    dump_fields,
    load_fields,
)
from .errors import ModelError
from .validate import malformed, mapping


@dataclass(frozen=True)
class DataInfo:
    """The data a model was trained on: where, its fingerprint (manifest hash) and split counts."""

    root: str
    fingerprint: str
    split_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    duplicate_groups: int | None = None
    conflicting_groups_excluded: int | None = None
    #: "phantoms" (busi-train phantoms) or "busi-layout" (real images; for the card's licence line)
    kind: str | None = None

    def to_json(self) -> dict:
        return drop_none(asdict(self))

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
        return drop_none({
            "contract_version": CONTRACT_VERSION,
            "name": self.name,
            "task": self.task,
            "intended_use": self.intended_use,
            "not_for": list(self.not_for),
            **dump_fields(self.info, MODEL_FIELDS, ood=_ood_summary),
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
            if legacy:
                d = {**d, "input": arch.pop("input"), "mask": arch.pop("mask"), "parity": None}
            kw = load_fields(d, MODEL_FIELDS, path, ood=lambda v, p, k: _load_ood(v, p))
            if legacy:
                kw["provenance"] = replace(kw["provenance"], data_fingerprint=data.fingerprint,
                                           split_seed=training.get("seed"))
            info = ModelInfo(version=1 if legacy else int(d["contract_version"]), **kw)
            return cls(info=info, name=d.get("name", ""), data=data, training=training, architecture=arch,
                       task=d.get("task", cls.task), intended_use=d.get("intended_use", ""),
                       not_for=tuple(d.get("not_for", ())), export=d.get("export"))

    @classmethod
    def load(cls, path: str | Path) -> "ModelCard":
        return cls.from_json(_read_json(path), str(path))

    def write(self, path: str | Path) -> None:
        """The one writer of card.json (atomically), with what belongs to it beside it: the
        OOD guard's statistics (ood.json; the card keeps their summary, so it stays small) and
        MODEL_CARD.md (the same card for people)."""
        from .card_markdown import render

        path = Path(path)
        if self.info.ood is not None:
            atomic_write_text(path.parent / OOD_FILE, json.dumps(self.info.ood.to_json()) + "\n")
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")
        atomic_write_text(path.parent / MARKDOWN_FILE, render(self) + "\n")


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
        return drop_none({
            "contract_version": CONTRACT_VERSION,
            "name": self.name,
            "role": "segmenter",
            "task": self.task,
            "architecture": self.architecture,
            **dump_fields(self.info, SEGMENTER_FIELDS),
            "postprocess": SEGMENTER_POSTPROCESS,
            "training": self.training,
            "data": self.data.to_json(),
            "metrics_val": self.metrics_val,
        })

    @classmethod
    def from_json(cls, d: dict, path: str | None = None) -> "SegmenterCard":
        with malformed(path, "segmenter card"):
            d = mapping(d, "segmenter card", path)
            data = DataInfo.from_json(d["data"], path)
            kw = load_fields(d, SEGMENTER_FIELDS, path)
            if "contract_version" not in d:
                kw["provenance"] = replace(kw["provenance"], data_fingerprint=data.fingerprint)
            info = SegmenterInfo(version=int(d.get("contract_version", 1)), **kw)
            return cls(info=info, name=d.get("name", ""), data=data, training=dict(d.get("training", {})),
                       architecture=dict(d.get("architecture", {})), metrics_val=dict(d.get("metrics_val", {})),
                       task=d.get("task", cls.task))

    @classmethod
    def load(cls, path: str | Path) -> "SegmenterCard":
        return cls.from_json(_read_json(path), str(path))

    def write(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_json(), indent=2) + "\n")


#: beside card.json: the OOD guard's statistics (about 1 MB for ResNet50's 2048 features) and the readable card
OOD_FILE = "ood.json"
MARKDOWN_FILE = "MODEL_CARD.md"


def _ood_summary(guard: OodGuard) -> dict:
    """What card.json says of the OOD guard: everything but the statistics, and where they are."""
    full = guard.to_json()
    full.pop("sources")
    return {**full, "thresholds": guard.thresholds, "statistics": OOD_FILE}


def _load_ood(d, path: str | None) -> OodGuard | None:
    """The card's OOD guard: inline (cards before ood.json) or from the file the card names."""
    if not isinstance(d, dict) or "sources" in d or "statistics" not in d:
        return OodGuard.from_json(d, path)
    name = d["statistics"]
    if not isinstance(name, str) or Path(name).name != name or path is None:
        raise ModelError(path, f"card.ood.statistics is {name!r}: expected a file name beside the card")
    side = Path(path).parent / name
    return OodGuard.from_json(_read_json(side), str(side))


def _read_json(path: str | Path) -> dict:
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise ModelError(p, "not found (the model folder is incomplete)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(p, f"cannot read it as JSON ({type(e).__name__}: {e})") from None
