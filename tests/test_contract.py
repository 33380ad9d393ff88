"""The contract as one typed object: ONNX metadata and card round trips, version 1 files
(the exporter before `busi.contract_version`) still load, a newer version is refused."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from busi.runtime.card import DataInfo, ModelCard
from busi.runtime.contract import (
    CONTRACT_VERSION,
    InputSpec,
    MaskSpec,
    ModelInfo,
    OodGuard,
    OodStats,
    OperatingPoint,
    Parity,
    Provenance,
    SegmenterInfo,
)
from busi.runtime.errors import ModelError
from busi.runtime.validate import pack_floats

INFO = ModelInfo(
    input=InputSpec(96),
    mask=MaskSpec(source="box", box_margin=0.1, placeholder=(0.2031, 0.1719)),
    operating_point=OperatingPoint(0.3125, 0.95, True, None, 1.0, 0.6, 17),
    provenance=Provenance(weights="none", data_fingerprint="ab" * 32, split_seed=0, git_commit=None,
                          trained="2026-11-25T20:00:00+00:00", exported="2026-11-25T20:10:00+00:00",
                          versions={"tensorflow": "2.21.0", "onnx": "1.19.0"}),
    metrics={"box": {"n": 27, "accuracy": 0.7037, "macro_auc": None}},
    parity=Parity(tolerance=1e-4, max_abs_diff=5.9e-7, worst_input="heldout_gt", inputs=79, argmax_agreement=1.0,
                  gradcam_rel_diff=1.4e-6),
    quantization={"type": "int8", "argmax_agreement": 1.0},
    ood=OodGuard(sources={src: OodStats(dim=4, rank=2, means=pack_floats(np.arange(12.0).reshape(3, 4)),
                                        components=pack_floats(np.eye(4)[:, :2]), variances=pack_floats([2.0, 1.0]),
                                        residual_variance=0.5, threshold=t) for src, t in (("box", 9.5), ("none", 30.25))},
                 n_fit=128, n_validation=26),
)

#: what the exporter wrote before the contract had a version (busi 0.1.0, stop 10)
V1_METADATA = {
    "busi.classes": '["normal", "benign", "malignant"]',
    "busi.input": '{"color": "rgb", "dtype": "float32", "range": [0, 255], "resize": "area", "size": 96}',
    "busi.mask": '{"box_margin": 0.1, "mode": "multiply", "placeholder": [0.2031, 0.1719], "source": "box", "threshold": 127}',
    "busi.operating_point": '{"estimated": true, "malignant_threshold": 0.3125, "target_sensitivity": 0.95, '
                            '"validation_n": 17, "validation_sensitivity": 1.0, "validation_specificity": 0.6}',
    "busi.provenance": '{"data_fingerprint": "' + "ab" * 32 + '", "exported": "2026-11-25T20:10:00+00:00", "git_commit": null, '
                       '"split_seed": 0, "trained": "2026-11-25T20:00:00+00:00", "versions": {"onnx": "1.19.0", '
                       '"tensorflow": "2.21.0"}, "weights": "none"}',
    "busi.metrics": '{"box": {"accuracy": 0.7037, "macro_auc": null, "n": 27}}',
    "busi.parity": '{"argmax_agreement": 1.0, "gradcam_rel_diff": 1.4e-06, "inputs": 79, "max_abs_diff": 5.9e-07, '
                   '"tolerance": 0.0001, "worst_input": "heldout_gt"}',
    "busi.quantization": '{"argmax_agreement": 1.0, "type": "int8"}',
    "busi.role": '"classifier"',
}

#: a card.json as busi-train fit wrote it before the contract (input and mask in "architecture")
V1_CARD = {
    "name": "demo", "task": "breast ultrasound classification: normal / benign / malignant",
    "classes": ["normal", "benign", "malignant"], "intended_use": "research", "not_for": ["diagnosis"],
    "architecture": {"backbone": "ResNet50 (include_top=False)",
                     "input": {"size": 96, "color": "rgb", "dtype": "float32", "range": [0, 255], "resize": "area"},
                     "mask": {"mode": "multiply", "threshold": 127, "source": "box", "box_margin_eval": 0.1,
                              "placeholder": [0.2031, 0.1719]},
                     "parameters": 24112515},
    "training": {"seed": 0, "weights": "none", "lesion_box_sizes": [[20, 16]]},
    "data": {"root": "data/phantoms", "fingerprint": "ab" * 32, "split_counts": {}},
    "operating_point": {"malignant_threshold": 0.3125, "target_sensitivity": 0.95, "estimated": True},
    "metrics": {"box": {"n": 27, "accuracy": 0.7037}},
    "provenance": {"weights": "none", "git_commit": None, "created": "2026-11-25T20:00:00+00:00",
                   "versions": {"tensorflow": "2.21.0"}},
    "export": {"sha256": "cd" * 32},
}


def test_metadata_round_trip():
    meta = INFO.to_metadata()
    assert all(k.startswith("busi.") and isinstance(v, str) for k, v in meta.items())
    assert json.loads(meta["busi.contract_version"]) == CONTRACT_VERSION
    assert ModelInfo.from_metadata(meta) == INFO
    seg = SegmenterInfo(input=InputSpec(64), threshold=0.5, min_area_frac=0.002, provenance=INFO.provenance,
                        metrics={"dice": 0.8}, parity=Parity(tolerance=1e-4, max_abs_diff=1e-7, inputs=40, pixel_flips=0, passed=True))
    assert SegmenterInfo.from_metadata(seg.to_metadata()) == seg


def test_version_1_metadata_still_loads_and_writes_back_as_the_current_version():
    info = ModelInfo.from_metadata(V1_METADATA, "old.onnx")
    assert info.version == 1
    assert info == ModelInfo(**{**INFO.__dict__, "version": 1, "ood": None})
    again = ModelInfo.from_metadata(info.to_metadata())
    assert again.version == CONTRACT_VERSION and again == ModelInfo(**{**INFO.__dict__, "ood": None})


def test_a_newer_contract_is_refused_with_its_version():
    meta = dict(INFO.to_metadata(), **{"busi.contract_version": str(CONTRACT_VERSION + 1)})
    with pytest.raises(ModelError, match=f"new.onnx: written by a newer busi \\(contract version {CONTRACT_VERSION + 1}\\)"):
        ModelInfo.from_metadata(meta, "new.onnx")


def test_card_round_trip_and_the_same_contract_as_the_onnx_file(tmp_path):
    card = ModelCard(info=INFO, name="demo", data=DataInfo(root="data/phantoms", fingerprint="ab" * 32),
                     training={"seed": 3, "lesion_box_sizes": [[20, 16]]}, architecture={"backbone": "ResNet50"},
                     not_for=("diagnosis",), export={"file": "model.onnx"})
    card.write(tmp_path / "card.json")
    back = ModelCard.load(tmp_path / "card.json")
    assert back == card and back.seed == 3 and back.lesion_box_sizes == [[20, 16]]
    assert ModelInfo.from_metadata(back.info.to_metadata()) == INFO
    # written through temp files: the card, its OOD statistics beside it, and the card for people
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MODEL_CARD.md", "card.json", "ood.json"]
    raw = json.loads((tmp_path / "card.json").read_text())
    assert raw["ood"]["statistics"] == "ood.json" and "sources" not in raw["ood"]
    assert raw["ood"]["thresholds"] == INFO.ood.thresholds
    # a card with the statistics inline (before ood.json) loads the same
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "card.json").write_text(json.dumps({**raw, "ood": INFO.ood.to_json()}))
    assert ModelCard.load(tmp_path / "old" / "card.json") == card
    (tmp_path / "ood.json").unlink()
    with pytest.raises(ModelError, match="ood.json: not found"):
        ModelCard.load(tmp_path / "card.json")
    md = (tmp_path / "MODEL_CARD.md").read_text()
    assert md.startswith("# Model card: demo") and "## Ethical considerations" in md and "diagnosis" in md
    # real BUSI data: the citation and what is known of the images' terms (the README says the same)
    from busi.runtime.card_markdown import render

    real = render(dataclasses.replace(card, data=dataclasses.replace(card.data, kind="busi-layout")))
    assert "doi:10.1016/j.dib.2019.104863" in real and "CC BY" in real and "no licence file" in real


def test_version_1_card_loads(tmp_path):
    (tmp_path / "card.json").write_text(json.dumps(V1_CARD))
    card = ModelCard.load(tmp_path / "card.json")
    assert card.info.version == 1 and card.info.input.size == 96 and card.info.mask.box_margin == 0.1
    assert card.info.mask.placeholder == (0.2031, 0.1719) and card.info.malignant_threshold == 0.3125
    assert card.info.provenance.trained == "2026-11-25T20:00:00+00:00" and card.info.provenance.split_seed == 0
    assert card.data.fingerprint == "ab" * 32 and card.seed == 0 and card.export == {"sha256": "cd" * 32}
    assert "input" not in card.architecture and card.architecture["parameters"] == 24112515
    assert ModelCard.from_json(card.to_json()).info == card.info.__class__(**{**card.info.__dict__, "version": CONTRACT_VERSION})


@pytest.mark.parametrize("damage, problem", [
    (lambda d: d.pop("data"), "card is malformed"),
    (lambda d: d["operating_point"].update(malignant_threshold=2.0), "malignant_threshold is 2.0, outside [0, 1]"),
    (lambda d: d.get("architecture").get("mask").update(source="lasso"), "busi.mask.source is 'lasso'"),  # version 1
])
def test_a_damaged_card_is_one_model_error_naming_the_file(tmp_path, damage, problem):
    d = json.loads(json.dumps(V1_CARD))
    damage(d)
    (tmp_path / "card.json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match=re.escape(problem)) as e:
        ModelCard.load(tmp_path / "card.json")
    assert str(tmp_path / "card.json") in str(e.value)
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read it as JSON"):
        ModelCard.load(tmp_path / "card.json")
