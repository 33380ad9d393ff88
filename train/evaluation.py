"""A Keras classifier on decoded arrays: predictions, metrics per mask source, the card's summary."""

from __future__ import annotations

import numpy as np

from busi.runtime.calibration import apply_temperature
from busi.runtime.contract import MASK_SOURCES

from .inputs import Arrays, eval_masks
from .metrics import evaluate
from .ood import guard_metrics
from .report import prediction_rows

#: the figures of each mask source that the card (and the ONNX metadata) carries
CARD_KEYS = ("n", "accuracy", "balanced_accuracy", "macro_auc", "malignant_sensitivity", "malignant_specificity", "ece",
             "nll", "brier", "ece_raw", "coverage", "set_size", "ood_flagged", "ood_auroc_far", "ood_auroc_near",
             "abstained", "balanced_accuracy_kept", "malignant_sensitivity_kept", "ci95")
POOLED_LAYER = "avg_pool"
SEGMENTER_CARD_KEYS = ("n_lesion", "dice", "iou", "lesion_found_rate", "normal_empty_rate", "dice_found", "presence_auroc",
                       "needs_roi_rate")


def predict(model, arr: Arrays, masks: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return predict_with_features(model, arr, masks, batch_size)[0]


def predict_with_features(model, arr: Arrays, masks: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, pooled features): the `avg_pool` layer is the mean over space of the
    exported `features` output, which the runtime's out-of-distribution guard pools."""
    from .backend import keras
    from .pipeline import batches, eval_inputs

    both = getattr(model, "_busi_with_features", None)
    if both is None:  # one two-output view per model: Keras traces its predict function once, not per call
        both = keras.Model(model.input, [model.output, model.get_layer(POOLED_LAYER).output])
        model._busi_with_features = both
    p, f = both.predict(batches(eval_inputs(arr, masks), batch_size=batch_size), verbose=0)
    return np.asarray(p, np.float64), np.asarray(f, np.float64)


def evaluate_model(
    model,
    test: Arrays,
    sizes: np.ndarray,
    threshold: float,
    seed: int,
    split_name: str,
    batch_size: int = 32,
    extra_masks: dict[str, np.ndarray] | None = None,
    temperature: float | None = None,
    qhat: float | None = None,
    guard=None,
    trained: str | None = None,
    ood_sets: dict | None = None,
    abstained: dict[str, np.ndarray] | None = None,
) -> tuple[dict, list[dict]]:
    """Metrics for every mask source on the same images, plus their prediction rows; with a
    `temperature`, on calibrated probabilities (and ECE/NLL/Brier before calibration too).
    With an out-of-distribution `guard`, its figures too: the fraction of these images flagged
    and, for each of `ood_sets` ({name: train.ood.OodSet or None}), the AUROC.

    `extra_masks` adds sources whose masks come from elsewhere (`auto`: the segmenter);
    `abstained` marks, per such source, the images the runtime does not classify: its figures
    are then on all images (as if it classified the guessed boxes) and, with `_kept`, on the
    images it keeps, beside the fraction it abstains on."""
    from busi.runtime.progress import Bar

    results, rows = {}, []
    sources = {src: None for src in MASK_SOURCES} | dict(extra_masks or {})
    n_ood = sum(len(e.arrays.labels) for e in (ood_sets or {}).values() if e is not None) if guard is not None else 0
    bar = Bar(len(sources) * (len(test.labels) + n_ood), "evaluate")  # rate and ETA on a terminal, else nothing
    with bar:
        for src, masks in sources.items():
            masks = eval_masks(test, src, sizes, seed) if masks is None else masks
            raw, feats = predict_with_features(model, test, masks, batch_size)
            bar.advance(len(test.labels))
            proba = raw if temperature is None else apply_temperature(raw, temperature)
            results[src] = evaluate(test.labels, proba, threshold, seed, raw=None if temperature is None else raw, qhat=qhat)
            if guard is not None:
                sets = {}
                for name, entry in (ood_sets or {}).items():
                    m = None if entry is None else entry.masks(src, sizes, seed)
                    sets[name] = None if m is None else predict_with_features(model, entry.arrays, m, batch_size)[1]
                    bar.advance(0 if entry is None else len(entry.arrays.labels))
                results[src].update(guard_metrics(guard, src, trained or src, feats, sets))
            skip = (abstained or {}).get(src)
            if skip is not None:
                kept = kept_metrics(test.labels, proba, skip, threshold, seed)
                results[src]["ci95"].update(kept.pop("ci95_kept", {}))
                results[src].update(kept)
            rows += prediction_rows(test.paths, test.labels, proba, split_name, src, raw, needs_roi=skip)
    return results, rows


KEPT_KEYS = ("accuracy", "balanced_accuracy", "macro_auc", "malignant_sensitivity", "malignant_specificity")


def kept_metrics(y: np.ndarray, proba: np.ndarray, abstained: np.ndarray, threshold: float, seed: int) -> dict:
    """The fraction abstained on and the figures on the images kept (`<key>_kept`, with their
    bootstrap intervals in ci95)."""
    keep = ~np.asarray(abstained, bool)
    out = {"abstained": float(np.mean(~keep)) if len(keep) else None, "n_kept": int(keep.sum())}
    if keep.any():
        m = evaluate(np.asarray(y)[keep], np.asarray(proba)[keep], threshold, seed)
        out.update({f"{k}_kept": m.get(k) for k in KEPT_KEYS})
        out["ci95_kept"] = {f"{k}_kept": v for k, v in m["ci95"].items() if k in KEPT_KEYS}
    return out


def card_metrics(report: dict) -> dict:
    """The summary of report.json that the card (and the ONNX metadata) carries."""
    out = {src: {k: m[k] for k in CARD_KEYS if k in m} for src, m in report["mask_sources"].items()}
    if "segmenter" in report:
        out["segmenter"] = {k: report["segmenter"].get(k) for k in SEGMENTER_CARD_KEYS}
    return out
