"""Adding mask source `auto` (the lesion segmenter) to a classifier's held-out report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from busi.runtime.calibration import apply_temperature
from busi.runtime.log import get as get_logger
from busi.runtime.model_dir import ModelDir
from busi.runtime.trust import model_qhat

from . import dataset as ds
from .calibrate import split_validation
from .evaluation import card_metrics, evaluate_model, predict
from .inputs import eval_masks, load_rows
from .ood import ood_sets
from .report import plots, prediction_rows, write_report
from .segmenter import (
    auto_masks,
    findings,
    load_segmenter,
    predict_lesions,
    segment_split,
    segmentation_metrics,
    segmentation_rows,
)

_LOG = get_logger(__name__)


def add_auto_to_report(model_dir: str | Path) -> dict:
    """Re-evaluate the classifier in MODEL_DIR on its test split with mask sources gt, box,
    none and auto (this segmenter), from fresh predictions, and rewrite its report, plots and
    card metrics. The operating point stays the one chosen on validation at training time."""
    from dataclasses import replace

    from . import model as _model  # noqa: F401  (registers the custom layer)
    from .backend import keras

    md = ModelDir(model_dir)
    card = md.read_card()
    info = card.info
    report = json.loads(md.report_json.read_text())
    rows = ds.read_manifest(md.manifest)
    root = card.data.root
    S, seed, source = info.input.size, card.seed, info.mask.source
    sizes = np.array(card.lesion_box_sizes, np.int64).reshape(-1, 2)
    val = load_rows(root, [r for r in rows if r["split"] == "val"], S)
    test_rows = [r for r in rows if r["split"] == "test"]
    test = load_rows(root, test_rows, S)
    seg_arr, probs, seg_card = segment_split(md, root, test_rows)
    decided = findings(seg_arr, probs, seg_card.info)  # once, for the classifier's masks and the rows
    auto, abstained = auto_masks(test, probs, info.mask, seg_card.info, decided)
    model = keras.models.load_model(md.keras, compile=False)
    t = report["operating_point"]["malignant_threshold"]
    T = info.calibration.temperature if info.calibration is not None else None
    qhat = model_qhat(info.conformal)
    sets = None
    if info.ood is not None:  # the OOD sets with auto masks too: the segmenter's lesion on each of them
        near = card.training.get("near_ood", "phantoms")
        sets = ood_sets(near, root, S)[0]
        at_seg_size = ood_sets(near, root, seg_card.info.input.size)[0]
        seg_model = load_segmenter(md)
        for name, entry in sets.items():
            if entry is not None:
                found = predict_lesions(seg_model, at_seg_size[name].arrays.images)
                entry.extra_masks["auto"] = auto_masks(entry.arrays, found, info.mask, seg_card.info)[0]
    results, pred_rows = evaluate_model(model, test, sizes, t, seed, "test", extra_masks={"auto": auto}, temperature=T,
                                        qhat=qhat, guard=info.ood, trained=source, ood_sets=sets,
                                        abstained={"auto": abstained})
    p_val_raw = predict(model, val, eval_masks(val, source, sizes, seed))
    p_val = p_val_raw if T is None else apply_temperature(p_val_raw, T)
    cal_ix = set(split_validation(val.labels, seed)[0].tolist()) if T is not None else set()
    roles = ["fit" if i in cal_ix else "held_back" for i in range(len(val))] if T is not None else None
    # the out-of-fold rows of a --cv run stay: the operating point was chosen on them
    cv_rows = [r for r in csv.DictReader(md.predictions.read_text().splitlines()) if r["split"] == "cv"] \
        if md.predictions.is_file() else []
    pred_rows = prediction_rows(val.paths, val.labels, p_val, "val", source, p_val_raw, roles) + cv_rows + pred_rows
    seg_rows = segmentation_rows(seg_arr, probs, "test", seg_card.info, decided)
    report["mask_sources"] = results
    report["segmenter"] = segmentation_metrics(seg_rows, seed) | {"file": md.segmenter_keras.name}
    write_report(md.path, report, pred_rows)
    history = list(csv.DictReader(md.history.read_text().splitlines())) if md.history.is_file() else []
    plots(md.path, report, pred_rows, history)
    replace(card, info=replace(info, metrics=card_metrics(report))).write(md.card)
    _LOG.info("classifier re-evaluated with mask source auto: " + ", ".join(
        f"{s} acc {m['accuracy']:.3f}" for s, m in results.items()))
    return report
