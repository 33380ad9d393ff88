"""`busi-train fit --cv K`: an operating point from K-fold out-of-fold predictions.

About 30 malignant validation images cannot certify a sensitivity of 0.95 (a one-sided 95 %
lower bound needs at least 59 malignant cases without a miss). Pooling out-of-fold
predictions over train + validation gives every malignant image of both a prediction from a
model that did not see it. Each fold model is trained with the main run's recipe for the
number of epochs the main run kept (its best epoch), with no early stopping on the fold it
predicts; its probabilities are calibrated with the main model's temperature. Duplicate groups
never straddle folds. It costs K more fits.
"""

from __future__ import annotations

import gc
import time

import numpy as np

from busi.runtime.calibration import apply_temperature
from busi.runtime.contract import MALIGNANT
from busi.runtime.log import get as get_logger

from .inputs import Arrays, eval_masks
from .metrics import operating_point

_LOG = get_logger(__name__)


def join(a: Arrays, b: Arrays) -> Arrays:
    return Arrays(np.concatenate([a.images, b.images]), np.concatenate([a.gt, b.gt]), np.concatenate([a.labels, b.labels]),
                  a.paths + b.paths, (a.shapes or []) + (b.shapes or []))


def take(a: Arrays, ix: np.ndarray) -> Arrays:
    return Arrays(a.images[ix], a.gt[ix], a.labels[ix], [a.paths[i] for i in ix],
                  [a.shapes[i] for i in ix] if a.shapes else None)


def folds(labels: np.ndarray, groups: list[str], k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, group-aware K folds (an image without a duplicate group is its own group)."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    g = np.array([x or f"single{i}" for i, x in enumerate(groups)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small classes: sklearn warns, the split is still valid
        return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels, g))


def cross_validated_operating_point(cfg, pool: Arrays, groups: list[str], sizes: np.ndarray, epochs: tuple[int, int],
                                    temperature: float | None) -> tuple[dict, dict, list[dict]]:
    """(the operating point from the pooled out-of-fold P(malignant), what it cost and saw, the
    out-of-fold prediction rows for predictions.csv, split "cv"). `epochs`: (first phase,
    fine-tuning) epochs, as the main run kept them."""
    from sklearn.utils.class_weight import compute_class_weight

    from .backend import keras
    from .evaluation import predict
    from .model import build_classifier, unfreeze
    from .pipeline import train_dataset
    from .report import prediction_rows
    from .stages import parse_extra, parse_stages

    t0 = time.time()
    oof = np.zeros((len(pool), 3))
    for i, (tr, ho) in enumerate(folds(pool.labels, groups, cfg.cv, cfg.seed)):
        part, held = take(pool, tr), take(pool, ho)
        cw = compute_class_weight("balanced", classes=np.arange(3), y=part.labels)
        model = build_classifier(cfg.image_size, cfg.weights, cfg.freeze, bn_momentum=cfg.bn_momentum)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.lr), loss="categorical_crossentropy")
        ds = train_dataset(part, cfg.mask_source, sizes, cfg.batch_size, cfg.seed + 101 * (i + 1), cfg.augment,
                           cfg.scanner_augment, extra=parse_extra(cfg.augment_extra))
        weights = {j: float(w) for j, w in enumerate(cw)}
        model.fit(ds, epochs=epochs[0], class_weight=weights, shuffle=False, verbose=0)
        if epochs[1]:
            unfreeze(model, parse_stages(cfg.fine_tune))
            model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.fine_tune_lr), loss="categorical_crossentropy")
            model.fit(ds, initial_epoch=epochs[0], epochs=sum(epochs), class_weight=weights, shuffle=False, verbose=0)
        oof[ho] = predict(model, held, eval_masks(held, cfg.mask_source, sizes, cfg.seed), cfg.batch_size)
        _LOG.info(f"cross-validation fold {i + 1}/{cfg.cv}: trained on {len(tr)}, predicted {len(ho)} "
                  f"({time.time() - t0:.0f}s so far)")
        del model, ds
        gc.collect()
    p = oof if temperature is None else apply_temperature(oof, temperature)
    op = operating_point(pool.labels, p[:, MALIGNANT])
    n = sum(epochs)
    op["method"] = (f"{cfg.cv}-fold cross-validation on train + validation (out-of-fold predictions, {n} epoch{'s' if n != 1 else ''} "
                    f"a fold{f', the last {epochs[1]} fine-tuning' if epochs[1] else ''})")
    facts = {"folds": cfg.cv, "epochs_per_fold": n, "fine_tune_epochs_per_fold": epochs[1], "n": int(len(pool)),
             "n_malignant": int((pool.labels == MALIGNANT).sum()), "seconds": round(time.time() - t0, 1)}
    return op, facts, prediction_rows(pool.paths, pool.labels, p, "cv", cfg.mask_source, oof)
