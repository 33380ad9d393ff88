"""The files of a model folder, named once (models/README.md describes each)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .card import MARKDOWN_FILE, OOD_FILE, ModelCard, SegmenterCard


@dataclass(frozen=True)
class ModelDir:
    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    # training (busi-train fit)
    @property
    def keras(self) -> Path:
        return self.path / "model.keras"

    @property
    def card(self) -> Path:
        return self.path / "card.json"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.csv"

    @property
    def ood(self) -> Path:
        """The OOD guard's statistics, beside the card (card.json names the file)."""
        return self.path / OOD_FILE

    @property
    def model_card_md(self) -> Path:
        """MODEL_CARD.md: the card for people (written with card.json)."""
        return self.path / MARKDOWN_FILE

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def backup(self) -> Path:
        """Interrupted-run state (Keras BackupAndRestore, best weights); removed when fit ends."""
        return self.path / ".backup"

    # evaluation (fit, segmenter, evaluate)
    @property
    def report_json(self) -> Path:
        return self.path / "report.json"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.csv"

    # lesion segmenter (busi-train segmenter)
    @property
    def segmenter_keras(self) -> Path:
        return self.path / "segmenter.keras"

    @property
    def segmenter_card(self) -> Path:
        return self.path / "segmenter.json"

    @property
    def segmentation(self) -> Path:
        return self.path / "segmentation.csv"

    # export (busi-export)
    @property
    def onnx(self) -> Path:
        return self.path / "model.onnx"

    @property
    def int8(self) -> Path:
        return self.path / "model.int8.onnx"

    @property
    def segmenter_onnx(self) -> Path:
        return self.path / "segmenter.onnx"

    def eval_dir(self, data: str | Path) -> Path:
        """Where `busi-train evaluate` writes the report for an external data folder."""
        return self.path / f"eval-{Path(data).resolve().name}"

    def read_card(self) -> ModelCard:
        return ModelCard.load(self.card)

    def read_segmenter_card(self) -> SegmenterCard:
        return SegmenterCard.load(self.segmenter_card)

    def has_segmenter(self) -> bool:
        return self.segmenter_card.is_file()
