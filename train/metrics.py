"""Held-out metrics, all from one set of predictions (scikit-learn where it has them)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from busi.runtime.contract import CLASSES, MALIGNANT

TARGET_SENSITIVITY = 0.95
ECE_BINS = 15
BOOTSTRAP = 1000


def operating_point(y: np.ndarray, p_malignant: np.ndarray, target: float = TARGET_SENSITIVITY) -> dict:
    """Highest P(malignant) threshold whose sensitivity on (validation) data reaches `target`."""
    pos = y == MALIGNANT
    if pos.sum() == 0 or (~pos).sum() == 0:
        return {
            "malignant_threshold": 0.5,
            "target_sensitivity": target,
            "estimated": False,
            "note": "validation split lacks malignant or non-malignant cases; default 0.5 used",
        }
    fpr, tpr, thr = roc_curve(pos, p_malignant, drop_intermediate=False)
    ok = np.flatnonzero(tpr >= target)
    t = float(min(1.0, thr[ok[0]]))
    return {
        "malignant_threshold": t,
        "target_sensitivity": target,
        "estimated": True,
        "validation_sensitivity": float(tpr[ok[0]]),
        "validation_specificity": float(1 - fpr[ok[0]]),
        "validation_n": int(len(y)),
    }


def ece(y: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-label confidence, equal-width bins."""
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)


def macro_auc(y: np.ndarray, proba: np.ndarray) -> float | None:
    """Macro one-vs-rest AUC over the classes present (None when fewer than two)."""
    present = np.unique(y)
    if len(present) < 2:
        return None
    if len(present) == proba.shape[1]:
        return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(range(proba.shape[1]))))
    return float(np.mean([roc_auc_score(y == c, proba[:, c]) for c in present]))


def _sens_spec(y: np.ndarray, p_mal: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    pos = y == MALIGNANT
    flag = p_mal >= threshold
    sens = float(flag[pos].mean()) if pos.any() else None
    spec = float((~flag[~pos]).mean()) if (~pos).any() else None
    return sens, spec


def point_metrics(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict:
    pred = proba.argmax(axis=1)
    sens, spec = _sens_spec(y, proba[:, MALIGNANT], threshold)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(np.unique(y)) > 0 else None,
        "macro_auc": macro_auc(y, proba),
        "malignant_sensitivity": sens,
        "malignant_specificity": spec,
    }


def bootstrap(stats, n_cases: int, seed: int, n: int = BOOTSTRAP) -> dict[str, list[float]]:
    """95 % percentile bootstrap intervals (resampling cases, seeded) of every figure that
    `stats(ix)` returns for a resample `ix` of the case indices; None figures are left out."""
    import warnings

    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n):
        ix = rng.integers(0, n_cases, n_cases)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = stats(ix)
        for k, v in m.items():
            if v is not None:
                draws.setdefault(k, []).append(v)
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in sorted(draws.items())}


def bootstrap_ci(y: np.ndarray, proba: np.ndarray, threshold: float, seed: int, n: int = BOOTSTRAP) -> dict:
    """95 % intervals of the point metrics of one mask source."""
    return bootstrap(lambda ix: point_metrics(y[ix], proba[ix], threshold), len(y), seed, n)


def evaluate(y: np.ndarray, proba: np.ndarray, threshold: float, seed: int = 0) -> dict:
    """Every figure the report prints for one mask source."""
    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    pred = proba.argmax(axis=1)
    labels = list(range(len(CLASSES)))
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    out = {"n": int(len(y))}
    out.update(point_metrics(y, proba, threshold))
    out.update(
        {
            "malignant_threshold": float(threshold),
            "per_class": {
                c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(sup[i])}
                for i, c in enumerate(CLASSES)
            },
            "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
            "ece": ece(y, proba),
            "ci95": bootstrap_ci(y, proba, threshold, seed),
        }
    )
    return out
