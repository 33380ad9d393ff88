"""`busi-train fit`: data -> split -> masked ResNet50 -> held-out evaluation -> model folder."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from busi.runtime.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from busi.runtime.calibration import apply_temperature
from busi.runtime.card import DataInfo, ModelCard
from busi.runtime.contract import (
    CLASSES,
    MALIGNANT,
    MASK_SOURCES,
    PLACEHOLDER,
    Conformal,
    InputSpec,
    MaskSpec,
    ModelInfo,
    OodGuard,
    OperatingPoint,
    Provenance,
)
from busi.runtime.errors import DataError
from busi.runtime.log import get as get_logger
from busi.runtime.model_dir import ModelDir
from busi.runtime.trust import model_qhat

from . import dataset as ds
from .calibrate import fit_temperature, split_validation
from .callbacks import best_weights, epoch_log, kept_epoch
from .evaluation import card_metrics, evaluate_model, predict, predict_with_features
from .inputs import Arrays, eval_masks, lesion_sizes, load_rows
from .metrics import operating_point
from .ood import fit_guard_from_features, guard_summary, ood_sets
from .phantoms import PHANTOM_MARKER
from .provenance import git_commit, now, versions
from .report import plots, prediction_rows, write_report
from .stages import EXTRA_TEXT, parse_extra, parse_stages

_LOG = get_logger(__name__)


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
    scanner_augment: bool = False  # pipeline.scanner_augment: gain, gamma, resolution, blur, noise
    augment_extra: str = "none"  # pipeline.EXTRA_AUGMENTS, comma-separated: vflip, intensity, mixup
    bn_momentum: float | None = None
    #: the near-OOD set of the out-of-distribution guard's evaluation: a BUSI-layout folder,
    #: "phantoms" (generated; skipped when the training data are phantoms) or "none"
    near_ood: str = "phantoms"
    #: K > 1: the operating point from K-fold out-of-fold predictions over train + validation
    #: (K more fits; busi.train.cv); 0: from the validation split
    cv: int = 0
    #: distribute.make_strategy / distribute.precision: "mirrored" over the GPUs of this host,
    #: "mixed" float16; cpu_replicas splits the CPU (tests)
    strategy: str = "default"
    precision: str = "float32"
    cpu_replicas: int = 0
    #: fine-tuning after the head has converged (pretrained weights only): the backbone stages
    #: made trainable ("conv5", "conv4,conv5"; "none": the frozen recipe), at fine_tune_lr for
    #: up to fine_tune_epochs more epochs, with the same early stopping on validation loss;
    #: batch normalization stays frozen. The best epoch over both phases is kept.
    fine_tune: str = "none"
    fine_tune_lr: float = 1e-5
    fine_tune_epochs: int = 10
    #: a finished model folder trained on the same split: its weights replace the first phase
    #: (for fine-tuning a model already trained with the frozen recipe)
    init: str | None = None

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


def prepare_split(cfg: FitConfig) -> tuple[ds.Scan, list[dict]]:
    scan = ds.scan_folder(cfg.data)
    ds.inspect(scan)
    ds.group_duplicates(scan, cfg.dup_distance)
    reason = ds.unusable_reason(scan)
    if reason:
        raise DataError(reason)
    rows = ds.split(scan, cfg.seed, cfg.val_frac, cfg.test_frac, cfg.keep_conflicts)
    for part in ("train", "val", "test"):
        have = {r["label"] for r in rows if r["split"] == part}
        if part == "train" and have != set(CLASSES):
            raise DataError(f"{cfg.data}: the training split lacks class(es) {sorted(set(CLASSES) - have)}; need more images")
        if not have:
            raise DataError(f"{cfg.data}: too few images for a {part} split")
    return scan, rows


def _callbacks(cfg: FitConfig, backup: Path, keras, state: str = "state", epochs: int | None = None):
    backup.mkdir(parents=True, exist_ok=True)
    return [
        keras.callbacks.BackupAndRestore(str(backup / state)),
        keras.callbacks.CSVLogger(str(backup / "history.csv"), append=True),
        best_weights(keras, backup),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience),
        epoch_log(keras, epochs or cfg.epochs),
    ]


def _initial_weights(cfg: FitConfig, manifest: bytes, keras):
    """The weights of `cfg.init`, a finished model folder trained on this very split."""
    src = ModelDir(cfg.init)
    if not src.keras.is_file():
        raise DataError(f"--init {cfg.init}: no {src.keras.name} there (a folder written by busi-train fit)")
    if not src.manifest.is_file() or src.manifest.read_bytes() != manifest:
        raise DataError(f"--init {cfg.init}: trained on another split or data (its {src.manifest.name} differs); "
                        "use the same --data and --seed")
    seconds = json.loads(src.card.read_text()).get("training", {}).get("seconds", 0.0) if src.card.is_file() else 0.0
    return keras.saving.load_model(src.keras, compile=False).get_weights(), src.history.read_text(), float(seconds)


def fit(cfg: FitConfig) -> Path:
    cfg = cfg.resolved()
    if cfg.mask_source not in MASK_SOURCES:
        raise DataError(f"--mask-source must be one of {', '.join(MASK_SOURCES)}")
    md = ModelDir(cfg.out)
    out = md.path
    t_start = time.time()
    scan, rows = prepare_split(cfg)
    manifest = ds.manifest_bytes(rows)
    backup = md.backup
    if (backup / "state").exists() or (backup / "head.weights.h5").exists():
        old = md.manifest.read_bytes() if md.manifest.exists() else b""
        if old != manifest:
            raise DataError(f"{out}: an interrupted run with other data/split is in {backup}; remove it or use another --out")
        _LOG.info(f"resuming the interrupted run in {out}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(md.manifest, manifest)
    fp = ds.fingerprint(rows)
    s = ds.summary(scan)
    _LOG.info(
        f"data {cfg.data}: {s['images']} images {s['counts']}, {len(s['duplicate_groups'])} duplicate groups, "
        f"{len(s['conflicting_groups'])} label-conflicting ({'kept in train' if cfg.keep_conflicts else 'excluded'})"
    )
    part = {p: [r for r in rows if r["split"] == p] for p in ("train", "val", "test")}
    _LOG.info("split: " + ", ".join(f"{p} {len(v)}" for p, v in part.items()))

    from .backend import keras, seed_everything
    from .distribute import check_global_batch, make_strategy, one_device_validation, plain_copy, precision
    from .model import build_classifier, trainable_count, unfreeze
    from .pipeline import batches, eval_inputs, train_dataset

    seed_everything(cfg.seed)
    arrays = {p: load_rows(cfg.data, v, cfg.image_size) for p, v in part.items()}
    sizes = lesion_sizes(arrays["train"].gt)
    from sklearn.utils.class_weight import compute_class_weight

    cw = compute_class_weight("balanced", classes=np.arange(3), y=arrays["train"].labels)
    class_weight = {i: float(w) for i, w in enumerate(cw)}
    _LOG.info("class weights: " + ", ".join(f"{CLASSES[i]} {w:.3f}" for i, w in class_weight.items()))

    def build():
        return build_classifier(cfg.image_size, cfg.weights, cfg.freeze, bn_momentum=cfg.bn_momentum)

    strategy = make_strategy(cfg.strategy, cfg.cpu_replicas)
    replicas = strategy.num_replicas_in_sync
    check_global_batch(cfg.batch_size, replicas, len(arrays["train"]))
    val = arrays["val"]
    val_x = eval_inputs(val, eval_masks(val, cfg.mask_source, sizes, cfg.seed))
    val_y = np.eye(3, dtype=np.float32)[val.labels]
    compiled = dict(loss="categorical_crossentropy", metrics=["accuracy"])
    twin = None
    if replicas > 1:  # the float32 single-device copy: validation each epoch, then the saved model
        twin = build()
        twin.compile(**compiled)
    stages = parse_stages(cfg.fine_tune)
    head_done = backup / "head.weights.h5"  # phase 1 finished (a resumed run skips it)
    with precision(cfg.precision), strategy.scope():
        model = build()
        n_trainable = trainable_count(model)
        _LOG.info(f"model: {model.count_params():,} parameters, {n_trainable:,} trainable; weights {cfg.weights}")
        validation = None if twin else batches(val_x, val_y, cfg.batch_size)
        extra = [one_device_validation(keras, twin, val_x, val_y, cfg.batch_size)] if twin else []
        train_ds = train_dataset(arrays["train"], cfg.mask_source, sizes, cfg.batch_size, cfg.seed, cfg.augment,
                                 cfg.scanner_augment, drop_remainder=replicas > 1, extra=parse_extra(cfg.augment_extra))
        if cfg.init:
            weights, init_history, init_seconds = _initial_weights(cfg, manifest, keras)
            model.set_weights(weights)
            t_start -= init_seconds  # the card's training time is the whole recipe's, both phases
            backup.mkdir(parents=True, exist_ok=True)
            if not head_done.exists():  # its history and best epoch are this run's first phase
                atomic_write_text(backup / "history.csv", init_history)
                losses = [float(h["val_loss"]) for h in _history(backup)]
                _save_weights(model, backup / "best.weights.h5")
                atomic_write_text(backup / "best.json", json.dumps({"epoch": int(np.argmin(losses)), "val_loss": min(losses)}))
                _save_weights(model, head_done)
            _LOG.info(f"first phase: the weights of {cfg.init} ({len(_history(backup))} epochs)")
        elif head_done.exists():
            model.load_weights(head_done)
            _LOG.info(f"first phase already done in the interrupted run ({len(_history(backup))} epochs)")
        else:
            model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.lr), **compiled)
            model.fit(train_ds, validation_data=validation, epochs=cfg.epochs, class_weight=class_weight,
                      callbacks=extra + _callbacks(cfg, backup, keras),
                      shuffle=False,  # the tf.data pipeline shuffles (seeded) itself
                      verbose=0)
            if stages:  # a fine-tuning run killed later resumes from here
                _save_weights(model, head_done)
        head_epochs = len(_history(backup))
        if stages:
            names = unfreeze(model, stages)
            n_trainable = trainable_count(model)
            _LOG.info(f"fine-tuning {'+'.join(stages)}: {len(names)} layers, {n_trainable:,} trainable parameters "
                      f"(batch normalization frozen), Adam {cfg.fine_tune_lr:g}, up to {cfg.fine_tune_epochs} epochs")
            model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.fine_tune_lr), **compiled)
            model.fit(train_ds, validation_data=validation, initial_epoch=head_epochs,
                      epochs=head_epochs + cfg.fine_tune_epochs, class_weight=class_weight,
                      callbacks=extra + _callbacks(cfg, backup, keras, "state-fine-tune", head_epochs + cfg.fine_tune_epochs),
                      shuffle=False, verbose=0)
    if twin is not None or cfg.precision != "float32":
        model = plain_copy(model, lambda: twin or build())  # saved, evaluated and exported: float32, one device
    history = _history(backup)
    with atomic_path(md.keras, suffix=".keras") as tmp:
        model.save(tmp)

    # calibration on one half of validation, the operating point on all of it (calibrated
    # probabilities, trained mask source), then the test split, every mask source
    p_val_raw = predict(model, val, val_x["mask"], cfg.batch_size)
    guard = fit_guard(model, arrays["train"], val, sizes, cfg)
    cal_ix, held_ix = split_validation(val.labels, cfg.seed)
    calibration = fit_temperature(val.labels[cal_ix], p_val_raw[cal_ix])
    _LOG.info(f"calibration: temperature {calibration.temperature:.3f} fitted on {len(cal_ix)} validation images "
              f"(NLL {calibration.nll_before:.3f} -> {calibration.nll_after:.3f}); {len(held_ix)} held back")
    p_val = apply_temperature(p_val_raw, calibration.temperature)
    op = operating_point(val.labels, p_val[:, MALIGNANT])
    cv_facts, cv_rows = None, []
    if cfg.cv:
        from .cv import cross_validated_operating_point, join

        groups = [r["group"] for r in part["train"] + part["val"]]
        op_val = op
        op, cv_facts, cv_rows = cross_validated_operating_point(cfg, join(arrays["train"], val), groups, sizes,
                                                                best_epochs(history, head_epochs, stages),
                                                                calibration.temperature)
        cv_facts["validation_operating_point"] = op_val
        _LOG.info(f"operating point from {cfg.cv}-fold cross-validation: P(malignant) >= {op['malignant_threshold']:.4f} "
                  f"(validation alone: {op_val['malignant_threshold']:.4f}); {cv_facts['seconds']:.0f}s for {cfg.cv} fits")
    # conformal scores: the calibrated validation images the temperature was not fitted on
    conformal = Conformal(scores=tuple(sorted(float(1 - p_val[i, val.labels[i]]) for i in held_ix)))
    qhat = model_qhat(conformal)
    sets, sets_what = ood_sets(cfg.near_ood, cfg.data, cfg.image_size)
    results, pred_rows = evaluate_model(
        model, arrays["test"], sizes, op["malignant_threshold"], cfg.seed, "test", cfg.batch_size,
        temperature=calibration.temperature, qhat=qhat, guard=guard, trained=cfg.mask_source, ood_sets=sets,
    )
    roles = ["fit" if i in set(cal_ix.tolist()) else "held_back" for i in range(len(val))]
    pred_rows = prediction_rows(val.paths, val.labels, p_val, "val", cfg.mask_source, p_val_raw, roles) + cv_rows + pred_rows
    report = {
        "model": out.name,
        "data": str(cfg.data),
        "data_fingerprint": fp,
        "split": "test",
        "weights": cfg.weights,
        "trained_mask_source": cfg.mask_source,
        "operating_point": op,
        "calibration": {**calibration.to_json(), "validation_held_back": int(len(held_ix))},
        "conformal": {"coverage": conformal.coverage, "n": len(conformal.scores), "qhat": qhat, "method": conformal.method},
        "ood": guard_summary(guard, sets_what),
        **({"cross_validation": cv_facts} if cv_facts else {}),
        "mask_sources": results,
    }
    write_report(out, report, pred_rows)
    atomic_write_text(md.history, (backup / "history.csv").read_text())
    plots(out, report, pred_rows, history)
    card = make_card(cfg, report, rows, s, n_trainable, model.count_params(), len(history), time.time() - t_start, sizes,
                     calibration, conformal, guard, head_epochs=head_epochs)
    card.write(md.card)
    shutil.rmtree(backup, ignore_errors=True)
    if md.has_segmenter():  # a segmenter trained on this very split: report auto next to the others
        if md.read_segmenter_card().data.fingerprint == fp:
            from .auto_eval import add_auto_to_report

            add_auto_to_report(out)
        else:
            _LOG.info(f"note: {md.segmenter_card} was trained on another split; retrain it (busi-train segmenter) for mask source auto")
    return out


def _history(backup: Path) -> list[dict]:
    p = backup / "history.csv"
    return list(csv.DictReader(io.StringIO(p.read_text()))) if p.is_file() else []


def _save_weights(model, path: Path) -> None:
    with atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)


def best_epochs(history: list[dict], head_epochs: int, stages: tuple[str, ...]) -> tuple[int, int]:
    """(epochs of the first phase, epochs of fine-tuning) that led to the kept weights (the
    lowest validation loss over both phases; fine-tuning started from the first phase's best)."""
    best, head_best = kept_epoch(history), kept_epoch(history[:head_epochs])
    return (best, 0) if best <= head_epochs or not stages else (head_best, best - head_epochs)


def placeholder_frac(sizes: np.ndarray, size: int) -> list[float]:
    """Median lesion box (w, h) of the training split as fractions of the image side: the size
    of the box a box-trained model gets where there is no lesion to outline."""
    if not len(sizes):
        return list(PLACEHOLDER)
    return [round(float(np.median(sizes[:, 0])) / size, 4), round(float(np.median(sizes[:, 1])) / size, 4)]


def fit_guard(model, train: Arrays, val: Arrays, sizes: np.ndarray, cfg: FitConfig) -> OodGuard:
    """The out-of-distribution guard: per mask source, statistics of the training images' pooled
    features (no augmentation) and a threshold from the validation images with that source."""
    def feats(arr: Arrays, src: str) -> np.ndarray:
        return predict_with_features(model, arr, eval_masks(arr, src, sizes, cfg.seed), cfg.batch_size)[1]

    guard = fit_guard_from_features({s: feats(train, s) for s in MASK_SOURCES}, train.labels,
                                    {s: feats(val, s) for s in MASK_SOURCES})
    _LOG.info(f"out-of-distribution guard: pooled features of {guard.n_fit} training images per mask source; thresholds "
              f"({guard.quantile:.0%} of {guard.n_validation} validation images) "
              + ", ".join(f"{k} {v:.4g}" for k, v in guard.thresholds.items()))
    return guard


def make_card(cfg, report, rows, s, n_trainable, n_params, epochs_run, seconds, sizes, calibration=None,
              conformal=None, guard=None, head_epochs=None) -> ModelCard:
    """The card of a freshly trained classifier: its contract (export copies it into the ONNX
    file) and the training facts."""
    counts = {p: {c: sum(r["split"] == p and r["label"] == c for r in rows) for c in CLASSES} for p in ("train", "val", "test")}
    info = ModelInfo(
        input=InputSpec(cfg.image_size),
        mask=MaskSpec(source=cfg.mask_source, placeholder=tuple(placeholder_frac(sizes, cfg.image_size))),
        operating_point=OperatingPoint.from_json(report["operating_point"]),
        metrics=card_metrics(report),
        calibration=calibration,
        conformal=conformal,
        ood=guard,
        prevalence={c: counts["train"][c] / max(1, sum(counts["train"].values())) for c in CLASSES},
        provenance=Provenance(
            weights=cfg.weights, data_fingerprint=report["data_fingerprint"], split_seed=cfg.seed, git_commit=git_commit(),
            trained=now(), versions=versions("tensorflow", "keras", "sklearn"),
        ),
    )
    return ModelCard(
        info=info,
        name=Path(cfg.out).name,
        intended_use=(
            "Research and education on breast ultrasound classification; a second opinion "
            "aid for studying model behaviour on BUSI-like images, with a lesion box or mask."
        ),
        not_for=(
            "diagnosis, triage or any clinical decision: this is not a medical device",
            "images other than 2-D B-mode breast ultrasound",
            "populations, scanners or settings unlike the training data without external validation",
        ),
        architecture={
            "backbone": "ResNet50 (include_top=False)",
            "head": "GlobalAveragePooling -> Dense 256 relu -> Dropout 0.5 -> Dense 3 softmax",
            "parameters": n_params,
            "trainable_parameters": n_trainable,
        },
        training={
            **{k: v for k, v in asdict(cfg).items() if k not in ("out",)},
            "epochs_run": epochs_run,
            **({"fine_tune_from_epoch": head_epochs} if parse_stages(cfg.fine_tune) else {}),
            "optimizer": "Adam",
            "loss": "categorical_crossentropy",
            "class_weights": "balanced (sklearn compute_class_weight)",
            "augmentation": "rotation 20deg, shift 10%, shear 0.2, zoom 20%, horizontal flip (joint image+mask)"
                            + ("; scanner: gain, gamma, resolution, blur, noise (image only)" if cfg.scanner_augment else "")
                            + "".join(f"; {EXTRA_TEXT[e]}" for e in parse_extra(cfg.augment_extra)),
            "seconds": round(seconds, 1),
            "lesion_box_sizes": sizes.tolist() if len(sizes) <= 2000 else None,
        },
        data=DataInfo(
            root=str(cfg.data),
            fingerprint=report["data_fingerprint"],
            split_counts=counts,
            duplicate_groups=len(s["duplicate_groups"]),
            conflicting_groups_excluded=0 if cfg.keep_conflicts else len(s["conflicting_groups"]),
            kind="phantoms" if (Path(cfg.data) / PHANTOM_MARKER).is_file() else "busi-layout",
        ),
    )
