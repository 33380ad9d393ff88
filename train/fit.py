"""`busi-train fit`: data -> split -> masked ResNet50 -> held-out evaluation -> model folder."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from busi.runtime.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from busi.runtime.contract import input_spec

from . import dataset as ds
from .inputs import MASK_SOURCES, Arrays, eval_masks, lesion_sizes, load_rows
from .metrics import CLASSES, evaluate, operating_point
from .report import plots, prediction_rows, write_report

BACKUP = ".backup"


@dataclass
class FitConfig:
    data: str
    out: str
    weights: str = "imagenet"
    freeze: bool | None = None
    mask_source: str = "box"
    image_size: int = 224
    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None
    patience: int | None = None
    seed: int = 0
    val_frac: float = 0.15
    test_frac: float = 0.15
    dup_distance: int = 4
    keep_conflicts: bool = False
    augment: bool = True
    bn_momentum: float | None = None

    def resolved(self) -> "FitConfig":
        """Fill defaults: the seed recipe for pretrained weights; its own for scratch training.

        Pretrained (imagenet / .h5): Adam 1e-4, 20 epochs, patience 5 (the specification).
        From scratch (`none`): Adam 1e-3, 40 epochs, patience 12, batch-norm momentum 0.9;
        with 1e-4 and patience 5 the from-scratch ResNet50 stops at chance (batch-norm moving
        statistics still unsettled, validation loss in the thousands).
        """
        scratch = self.weights in ("none", None)
        c = FitConfig(**asdict(self))
        c.lr = self.lr if self.lr is not None else (1e-3 if scratch else 1e-4)
        c.epochs = self.epochs if self.epochs is not None else (40 if scratch else 20)
        c.patience = self.patience if self.patience is not None else (12 if scratch else 5)
        c.bn_momentum = self.bn_momentum if self.bn_momentum is not None else (0.9 if scratch else None)
        return c


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def prepare_split(cfg: FitConfig) -> tuple[ds.Scan, list[dict]]:
    scan = ds.scan_folder(cfg.data)
    ds.inspect(scan)
    ds.group_duplicates(scan, cfg.dup_distance)
    reason = ds.unusable_reason(scan)
    if reason:
        raise ds.DataError(reason)
    rows = ds.split(scan, cfg.seed, cfg.val_frac, cfg.test_frac, cfg.keep_conflicts)
    for part in ("train", "val", "test"):
        have = {r["label"] for r in rows if r["split"] == part}
        if part == "train" and have != set(CLASSES):
            raise ds.DataError(f"{cfg.data}: the training split lacks class(es) {sorted(set(CLASSES) - have)}; need more images")
        if not have:
            raise ds.DataError(f"{cfg.data}: too few images for a {part} split")
    return scan, rows


def predict(model, arr: Arrays, masks: np.ndarray, batch_size: int = 32) -> np.ndarray:
    from .pipeline import eval_inputs

    return model.predict(eval_inputs(arr, masks), batch_size=batch_size, verbose=0).astype(np.float64)


def evaluate_model(
    model,
    test: Arrays,
    sizes: np.ndarray,
    threshold: float,
    seed: int,
    split_name: str,
    batch_size: int = 32,
    extra_masks: dict[str, np.ndarray] | None = None,
) -> tuple[dict, list[dict]]:
    """Metrics for every mask source on the same images, plus their prediction rows.

    `extra_masks` adds sources whose masks come from elsewhere (`auto`: the segmenter)."""
    results, rows = {}, []
    sources = {src: None for src in MASK_SOURCES} | dict(extra_masks or {})
    for src, masks in sources.items():
        masks = eval_masks(test, src, sizes, seed) if masks is None else masks
        proba = predict(model, test, masks, batch_size)
        results[src] = evaluate(test.labels, proba, threshold, seed)
        rows += prediction_rows(test.paths, test.labels, proba, split_name, src)
    return results, rows


def card_metrics(report: dict) -> dict:
    """The summary of report.json that the card (and the ONNX metadata) carries."""
    keys = ("n", "accuracy", "balanced_accuracy", "macro_auc", "malignant_sensitivity", "malignant_specificity", "ece")
    out = {src: {k: m[k] for k in keys} for src, m in report["mask_sources"].items()}
    if "segmenter" in report:
        out["segmenter"] = {k: report["segmenter"][k] for k in ("n_lesion", "dice", "iou", "lesion_found_rate", "normal_empty_rate")}
    return out


class EpochLog:
    """One line per epoch on stderr (a Keras callback, made when Keras is imported)."""

    @staticmethod
    def make(keras, epochs: int):
        class _EpochLog(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.time()

            def on_epoch_end(self, epoch, logs=None):
                items = " ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()) if k != "learning_rate")
                log(f"epoch {epoch + 1}/{epochs} {items} ({time.time() - self.t:.1f}s)")

        return _EpochLog()


def _callbacks(cfg: FitConfig, out: Path, keras):
    backup = out / BACKUP
    backup.mkdir(parents=True, exist_ok=True)

    class BestWeights(keras.callbacks.Callback):
        """Keeps the best (lowest val_loss) weights in a file, written atomically, so the
        best epoch survives a killed run; restores them when training ends."""

        def __init__(self):
            super().__init__()
            self.path = backup / "best.weights.h5"
            self.meta = backup / "best.json"
            self.best = json.loads(self.meta.read_text())["val_loss"] if self.meta.exists() else float("inf")

        def on_epoch_end(self, epoch, logs=None):
            v = (logs or {}).get("val_loss")
            if v is not None and v < self.best:
                self.best = float(v)
                with atomic_path(self.path, suffix=".weights.h5") as tmp:
                    self.model.save_weights(tmp)
                atomic_write_text(self.meta, json.dumps({"epoch": epoch, "val_loss": self.best}))

        def on_train_end(self, logs=None):
            if self.path.exists():
                self.model.load_weights(self.path)
                log(f"restored best weights (epoch {json.loads(self.meta.read_text())['epoch'] + 1}, val_loss {self.best:.4f})")

    return [
        keras.callbacks.BackupAndRestore(str(backup / "state")),
        keras.callbacks.CSVLogger(str(backup / "history.csv"), append=True),
        BestWeights(),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience),
        EpochLog.make(keras, cfg.epochs),
    ]


def fit(cfg: FitConfig) -> Path:
    cfg = cfg.resolved()
    if cfg.mask_source not in MASK_SOURCES:
        raise ds.DataError(f"--mask-source must be one of {', '.join(MASK_SOURCES)}")
    out = Path(cfg.out)
    t_start = time.time()
    scan, rows = prepare_split(cfg)
    manifest = ds.manifest_bytes(rows)
    backup = out / BACKUP
    if (backup / "state").exists():
        old = (out / "manifest.csv").read_bytes() if (out / "manifest.csv").exists() else b""
        if old != manifest:
            raise ds.DataError(f"{out}: an interrupted run with other data/split is in {backup}; remove it or use another --out")
        log(f"resuming the interrupted run in {out}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "manifest.csv", manifest)
    fp = ds.fingerprint(rows)
    s = ds.summary(scan)
    log(
        f"data {cfg.data}: {s['images']} images {s['counts']}, {len(s['duplicate_groups'])} duplicate groups, "
        f"{len(s['conflicting_groups'])} label-conflicting ({'kept in train' if cfg.keep_conflicts else 'excluded'})"
    )
    part = {p: [r for r in rows if r["split"] == p] for p in ("train", "val", "test")}
    log("split: " + ", ".join(f"{p} {len(v)}" for p, v in part.items()))

    from ._tf import keras, seed_everything
    from .model import build_classifier, trainable_count
    from .pipeline import eval_inputs, train_dataset

    seed_everything(cfg.seed)
    arrays = {p: load_rows(cfg.data, v, cfg.image_size) for p, v in part.items()}
    sizes = lesion_sizes(arrays["train"].gt)
    from sklearn.utils.class_weight import compute_class_weight

    cw = compute_class_weight("balanced", classes=np.arange(3), y=arrays["train"].labels)
    class_weight = {i: float(w) for i, w in enumerate(cw)}
    log("class weights: " + ", ".join(f"{CLASSES[i]} {w:.3f}" for i, w in class_weight.items()))

    model = build_classifier(cfg.image_size, cfg.weights, cfg.freeze, bn_momentum=cfg.bn_momentum)
    n_trainable = trainable_count(model)
    log(f"model: {model.count_params():,} parameters, {n_trainable:,} trainable; weights {cfg.weights}")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg.lr),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    train_ds = train_dataset(arrays["train"], cfg.mask_source, sizes, cfg.batch_size, cfg.seed, cfg.augment)
    val = arrays["val"]
    val_x = eval_inputs(val, eval_masks(val, cfg.mask_source, sizes, cfg.seed))
    val_y = np.eye(3, dtype=np.float32)[val.labels]
    model.fit(
        train_ds,
        validation_data=(val_x, val_y),
        epochs=cfg.epochs,
        class_weight=class_weight,
        callbacks=_callbacks(cfg, out, keras),
        shuffle=False,  # the tf.data pipeline shuffles (seeded) itself
        verbose=0,
    )
    history = list(csv.DictReader(io.StringIO((backup / "history.csv").read_text())))
    with atomic_path(out / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)

    # operating point on validation (trained mask source), then the test split, every source
    p_val = predict(model, val, val_x["mask"], cfg.batch_size)
    op = operating_point(val.labels, p_val[:, 2])
    results, pred_rows = evaluate_model(
        model, arrays["test"], sizes, op["malignant_threshold"], cfg.seed, "test", cfg.batch_size
    )
    pred_rows = prediction_rows(val.paths, val.labels, p_val, "val", cfg.mask_source) + pred_rows
    report = {
        "model": out.name,
        "data": str(cfg.data),
        "data_fingerprint": fp,
        "split": "test",
        "weights": cfg.weights,
        "trained_mask_source": cfg.mask_source,
        "operating_point": op,
        "mask_sources": results,
    }
    write_report(out, report, pred_rows)
    atomic_write_text(out / "history.csv", (backup / "history.csv").read_text())
    plots(out, report, pred_rows, history)
    card = make_card(cfg, report, rows, s, n_trainable, model.count_params(), len(history), time.time() - t_start, sizes)
    atomic_write_text(out / "card.json", json.dumps(card, indent=2) + "\n")
    shutil.rmtree(backup, ignore_errors=True)
    seg_card = out / "segmenter.json"
    if seg_card.is_file():  # a segmenter trained on this very split: report auto next to the others
        if json.loads(seg_card.read_text())["data"]["fingerprint"] == fp:
            from .segmenter import add_auto_to_report

            add_auto_to_report(out)
        else:
            log(f"note: {seg_card} was trained on another split; retrain it (busi-train segmenter) for mask source auto")
    return out


def placeholder_frac(sizes: np.ndarray, size: int) -> list[float]:
    """Median lesion box (w, h) of the training split as fractions of the image side: the size
    of the box a box-trained model gets where there is no lesion to outline."""
    if not len(sizes):
        return [0.25, 0.25]
    return [round(float(np.median(sizes[:, 0])) / size, 4), round(float(np.median(sizes[:, 1])) / size, 4)]


def make_card(cfg, report, rows, s, n_trainable, n_params, epochs_run, seconds, sizes) -> dict:
    import keras
    import sklearn
    import tensorflow as tf

    counts = {p: {c: sum(r["split"] == p and r["label"] == c for r in rows) for c in CLASSES} for p in ("train", "val", "test")}
    return {
        "name": Path(cfg.out).name,
        "task": "breast ultrasound classification: normal / benign / malignant",
        "classes": list(CLASSES),
        "intended_use": (
            "Research and education on breast ultrasound classification; a second opinion "
            "aid for studying model behaviour on BUSI-like images, with a lesion box or mask."
        ),
        "not_for": [
            "diagnosis, triage or any clinical decision: this is not a medical device",
            "images other than 2-D B-mode breast ultrasound",
            "populations, scanners or settings unlike the training data without external validation",
        ],
        "architecture": {
            "backbone": "ResNet50 (include_top=False)",
            "head": "GlobalAveragePooling -> Dense 256 relu -> Dropout 0.5 -> Dense 3 softmax",
            "input": input_spec(cfg.image_size),
            "mask": {"mode": "multiply", "threshold": 127, "source": cfg.mask_source, "box_margin_eval": 0.10,
                     "placeholder": placeholder_frac(sizes, cfg.image_size)},
            "parameters": n_params,
            "trainable_parameters": n_trainable,
        },
        "training": {
            **{k: v for k, v in asdict(cfg).items() if k not in ("out",)},
            "epochs_run": epochs_run,
            "optimizer": "Adam",
            "loss": "categorical_crossentropy",
            "class_weights": "balanced (sklearn compute_class_weight)",
            "augmentation": "rotation 20deg, shift 10%, shear 0.2, zoom 20%, horizontal flip (joint image+mask)",
            "seconds": round(seconds, 1),
            "lesion_box_sizes": sizes.tolist() if len(sizes) <= 2000 else None,
        },
        "data": {
            "root": str(cfg.data),
            "fingerprint": report["data_fingerprint"],
            "split_counts": counts,
            "duplicate_groups": len(s["duplicate_groups"]),
            "conflicting_groups_excluded": 0 if cfg.keep_conflicts else len(s["conflicting_groups"]),
        },
        "operating_point": report["operating_point"],
        "metrics": card_metrics(report),
        "provenance": {
            "weights": cfg.weights,
            "git_commit": git_commit(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "scikit-learn": sklearn.__version__, "python": sys.version.split()[0]},
        },
    }
