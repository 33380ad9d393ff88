"""The lesion segmenter behind `--mask auto`: a small U-Net trained on the classifier's split.

`busi-train segmenter --data DIR --out MODEL_DIR` trains it on the same manifest (and split)
as the classifier in MODEL_DIR (normal images teach it to return an empty mask), measures
Dice and IoU on the held-out split after the runtime's own post-processing (threshold,
largest connected component), and then re-evaluates the classifier with mask source `auto`
next to gt, box and none, so the report shows the two-stage pipeline end to end.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from busi.runtime.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from busi.runtime.contract import input_spec
from busi.runtime.masks import largest_component, model_mask
from busi.runtime.verify import sha256_file

from . import dataset as ds
from .fit import EpochLog, git_commit, log
from .inputs import Arrays, load_rows
from .report import _fmt

MODEL_FILE = "segmenter.keras"
CARD_FILE = "segmenter.json"
ROWS_FILE = "segmentation.csv"
SEG_FIELDS = ("path", "label", "split", "lesion_found", "dice", "iou")


@dataclass
class SegConfig:
    data: str
    out: str
    image_size: int = 128
    base_filters: int = 16
    epochs: int = 60
    batch_size: int = 16
    lr: float = 1e-3
    patience: int = 10
    seed: int = 0
    threshold: float = 0.5
    min_area_frac: float = 0.002
    augment: bool = True


def build_segmenter(size: int, base: int = 16, depth: int = 4):
    """U-Net: `depth` levels of two 3x3 conv + batch norm + ReLU, max-pool down, transposed
    conv up with skip connections; input `image` (N,S,S,3) RGB 0..255, output `lesion`
    (N,S,S,1) sigmoid. S must be divisible by 2**depth."""
    from ._tf import keras

    if size % (2**depth):
        raise ValueError(f"segmenter input size {size} must be divisible by {2 ** depth}")
    L = keras.layers

    def block(x, f, name):
        for i in (1, 2):
            x = L.Conv2D(f, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
            x = L.BatchNormalization(name=f"{name}_bn{i}")(x)
            x = L.ReLU(name=f"{name}_relu{i}")(x)
        return x

    image = keras.Input((size, size, 3), name="image", dtype="float32")
    x = L.Rescaling(1 / 255.0, name="scale")(image)
    skips = []
    for d in range(depth):
        x = block(x, base * 2**d, f"down{d}")
        skips.append(x)
        x = L.MaxPooling2D(name=f"pool{d}")(x)
    x = block(x, base * 2**depth, "bottom")
    for d in reversed(range(depth)):
        x = L.Conv2DTranspose(base * 2**d, 2, strides=2, name=f"up{d}")(x)
        x = L.Concatenate(name=f"skip{d}")([x, skips[d]])
        x = block(x, base * 2**d, f"dec{d}")
    out = L.Conv2D(1, 1, activation="sigmoid", name="lesion")(x)
    return keras.Model(image, out, name="busi_lesion_unet")


def dice_bce_loss(y_true, y_pred):
    """Binary cross-entropy + soft Dice over the batch (empty normal masks stay well defined)."""
    from ._tf import keras

    ops = keras.ops
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    inter = ops.sum(y_true * y_pred)
    dice = (2.0 * inter + 1.0) / (ops.sum(y_true) + ops.sum(y_pred) + 1.0)
    return bce + (1.0 - dice)


def dice_iou(pred: np.ndarray | None, gt: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two bool masks; an empty prediction scores 0 on a lesion."""
    if pred is None:
        return 0.0, 0.0
    inter = float((pred & gt).sum())
    total = float(pred.sum() + gt.sum())
    union = float((pred | gt).sum())
    return (2 * inter / total if total else 1.0), (inter / union if union else 1.0)


def segmentation_rows(arr: Arrays, probs: np.ndarray, split: str, threshold: float, min_area_frac: float) -> list[dict]:
    """Per image: the post-processed lesion (as the runtime finds it) against the ground truth,
    at the segmenter's input size."""
    rows = []
    S = probs.shape[1]
    for i in range(len(arr)):
        lesion = largest_component(probs[i, :, :, 0], (S, S), threshold, min_area_frac)
        gt = arr.gt[i]
        d, j = dice_iou(lesion, gt) if gt.any() else (float("nan"), float("nan"))
        rows.append({"path": arr.paths[i], "label": ds.CLASSES[int(arr.labels[i])], "split": split,
                     "lesion_found": int(lesion is not None), "dice": d, "iou": j})
    return rows


def segmentation_metrics(rows: list[dict], seed: int = 0) -> dict:
    """Dice/IoU over lesion images (mean, 95 % bootstrap interval), how often a lesion was
    found on lesion images and how often nothing was found on normal images."""
    lesion = [r for r in rows if r["label"] != "normal"]
    normal = [r for r in rows if r["label"] == "normal"]
    dice = np.array([r["dice"] for r in lesion], float)
    iou = np.array([r["iou"] for r in lesion], float)
    out = {
        "n": len(rows),
        "n_lesion": len(lesion),
        "n_normal": len(normal),
        "dice": float(dice.mean()) if len(dice) else None,
        "iou": float(iou.mean()) if len(iou) else None,
        "lesion_found_rate": float(np.mean([r["lesion_found"] for r in lesion])) if lesion else None,
        "normal_empty_rate": float(np.mean([1 - r["lesion_found"] for r in normal])) if normal else None,
        "ci95": {},
    }
    if len(dice):
        rng = np.random.default_rng(seed)
        draws = {"dice": [], "iou": []}
        for _ in range(1000):
            ix = rng.integers(0, len(dice), len(dice))
            draws["dice"].append(dice[ix].mean())
            draws["iou"].append(iou[ix].mean())
        out["ci95"] = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in draws.items()}
    return out


def rows_csv(rows: list[dict]) -> str:
    return ds.csv_text(rows, SEG_FIELDS, 6)


def predict_lesions(seg_model, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    return seg_model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)


def auto_masks(arr: Arrays, probs: np.ndarray, mask_spec: dict, seg_card: dict) -> np.ndarray:
    """The classifier's (N,S,S,1) masks for mask source `auto`: the segmenter's lesion at each
    image's original size (the runtime's own post-processing), then the mask the classifier was
    trained with (its box with margin, the lesion itself, or the whole image)."""
    S = arr.images.shape[1]
    out = np.zeros((len(arr), S, S, 1), np.float32)
    placeholder = tuple(mask_spec.get("placeholder", (0.25, 0.25)))
    for i in range(len(arr)):
        shape = arr.shapes[i] if arr.shapes else (S, S)
        lesion = largest_component(probs[i, :, :, 0], shape, seg_card["threshold"], seg_card["min_area_frac"])
        m, _ = model_mask(lesion, shape, S, mask_spec["source"], mask_spec.get("box_margin_eval", 0.10), placeholder)
        out[i, :, :, 0] = m
    return out


def load_segmenter(model_dir: Path):
    from ._tf import keras

    return keras.models.load_model(Path(model_dir) / MODEL_FILE, compile=False)


def segment_split(model_dir: Path, data_root: str, rows: list[dict]) -> tuple[Arrays, np.ndarray, dict]:
    """Decode rows at the segmenter's size and run it: (arrays, probabilities, segmenter card)."""
    seg_card = json.loads((Path(model_dir) / CARD_FILE).read_text())
    arr = load_rows(data_root, rows, seg_card["input"]["size"])
    return arr, predict_lesions(load_segmenter(model_dir), arr.images), seg_card


def _split_rows(cfg: SegConfig) -> list[dict]:
    """The classifier's manifest when MODEL_DIR has one (checked against the files), else a
    fresh duplicate-aware split written as MODEL_DIR/manifest.csv."""
    out = Path(cfg.out)
    mp = out / "manifest.csv"
    if mp.is_file():
        rows = ds.read_manifest(mp)
        root = Path(cfg.data)
        for r in rows:
            p = root / r["path"]
            if not p.is_file() or sha256_file(p) != r["sha256"]:
                raise ds.DataError(f"{p}: missing or changed since {mp} was written; pass the classifier's --data")
        log(f"using the classifier's split from {mp}")
        return rows
    from .fit import FitConfig, prepare_split

    _, rows = prepare_split(FitConfig(data=cfg.data, out=cfg.out, seed=cfg.seed))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(mp, ds.manifest_bytes(rows))
    return rows


def train_segmenter(cfg: SegConfig) -> Path:
    out = Path(cfg.out)
    t0 = time.time()
    rows = _split_rows(cfg)
    size = cfg.image_size
    part = {p: [r for r in rows if r["split"] == p] for p in ("train", "val", "test")}
    log("segmenter split: " + ", ".join(f"{p} {len(v)}" for p, v in part.items()) + f"; {size} px")

    from ._tf import keras, seed_everything
    from .pipeline import train_dataset

    seed_everything(cfg.seed)
    arrays = {p: load_rows(cfg.data, v, size) for p, v in part.items()}
    model = build_segmenter(size, cfg.base_filters)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.lr), loss=dice_bce_loss)
    log(f"segmenter: U-Net, {model.count_params():,} parameters")
    # the classifier's tf.data pipeline with ground-truth masks: one joint geometry for both
    train_ds = train_dataset(arrays["train"], "gt", np.zeros((0, 2)), cfg.batch_size, cfg.seed, cfg.augment)
    train_ds = train_ds.map(lambda x, y: (x["image"], x["mask"]))
    val = arrays["val"]
    val_xy = (val.images.astype(np.float32), val.gt[..., None].astype(np.float32))
    hist = model.fit(
        train_ds,
        validation_data=val_xy,
        epochs=cfg.epochs,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True),
            EpochLog.make(keras, cfg.epochs),
        ],
        shuffle=False,  # the tf.data pipeline shuffles (seeded) itself
        verbose=0,
    )
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / MODEL_FILE, suffix=".keras") as tmp:
        model.save(tmp)

    seg_rows = []
    for split in ("val", "test"):
        probs = predict_lesions(model, arrays[split].images, cfg.batch_size)
        seg_rows += segmentation_rows(arrays[split], probs, split, cfg.threshold, cfg.min_area_frac)
    metrics = {s: segmentation_metrics([r for r in seg_rows if r["split"] == s], cfg.seed) for s in ("val", "test")}
    atomic_write_text(out / ROWS_FILE, rows_csv(seg_rows))
    card = {
        "name": out.name,
        "role": "segmenter",
        "task": "breast ultrasound lesion segmentation (for --mask auto)",
        "architecture": {"type": "U-Net", "depth": 4, "base_filters": cfg.base_filters, "parameters": model.count_params(),
                         "output": "lesion probability (sigmoid)"},
        "input": input_spec(size),
        "threshold": cfg.threshold,
        "min_area_frac": cfg.min_area_frac,
        "postprocess": "resize to image, threshold, largest 8-connected component",
        "training": {**{k: v for k, v in asdict(cfg).items() if k != "out"}, "epochs_run": len(hist.history["loss"]),
                     "loss": "binary cross-entropy + soft Dice", "seconds": round(time.time() - t0, 1)},
        "data": {"root": str(cfg.data), "fingerprint": ds.fingerprint(rows)},
        "metrics": metrics["test"],
        "metrics_val": metrics["val"],
        "provenance": {"git_commit": git_commit(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    atomic_write_text(out / CARD_FILE, json.dumps(card, indent=2) + "\n")
    m = metrics["test"]
    log(
        f"segmenter on the test split: Dice {_fmt(m['dice'])} IoU {_fmt(m['iou'])} over {m['n_lesion']} lesion images, "
        f"lesion found on {_fmt(m['lesion_found_rate'])}, nothing found on {_fmt(m['normal_empty_rate'])} of {m['n_normal']} normal images"
    )
    if (out / "model.keras").is_file() and (out / "card.json").is_file() and (out / "report.json").is_file():
        add_auto_to_report(out)
    return out


def add_auto_to_report(model_dir: Path) -> dict:
    """Re-evaluate the classifier in MODEL_DIR on its test split with mask sources gt, box,
    none and auto (this segmenter), from fresh predictions, and rewrite its report, plots and
    card metrics. The operating point stays the one chosen on validation at training time."""
    from ._tf import keras
    from . import model as _m  # noqa: F401  (custom layer)
    from .fit import card_metrics, evaluate_model, predict
    from .inputs import eval_masks
    from .report import plots, prediction_rows, write_report

    model_dir = Path(model_dir)
    card = json.loads((model_dir / "card.json").read_text())
    report = json.loads((model_dir / "report.json").read_text())
    rows = ds.read_manifest(model_dir / "manifest.csv")
    root = card["data"]["root"]
    S = card["architecture"]["input"]["size"]
    seed = card["training"]["seed"]
    sizes = np.array(card["training"].get("lesion_box_sizes") or [], np.int64).reshape(-1, 2)
    val = load_rows(root, [r for r in rows if r["split"] == "val"], S)
    test_rows = [r for r in rows if r["split"] == "test"]
    test = load_rows(root, test_rows, S)
    seg_arr, probs, seg_card = segment_split(model_dir, root, test_rows)
    auto = auto_masks(test, probs, card["architecture"]["mask"], seg_card)
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    t = report["operating_point"]["malignant_threshold"]
    results, pred_rows = evaluate_model(model, test, sizes, t, seed, "test", extra_masks={"auto": auto})
    p_val = predict(model, val, eval_masks(val, card["architecture"]["mask"]["source"], sizes, seed))
    pred_rows = prediction_rows(val.paths, val.labels, p_val, "val", card["architecture"]["mask"]["source"]) + pred_rows
    seg_rows = segmentation_rows(seg_arr, probs, "test", seg_card["threshold"], seg_card["min_area_frac"])
    report["mask_sources"] = results
    report["segmenter"] = segmentation_metrics(seg_rows, seed) | {"file": MODEL_FILE}
    write_report(model_dir, report, pred_rows)
    hp = model_dir / "history.csv"
    history = list(csv.DictReader(hp.read_text().splitlines())) if hp.is_file() else []
    plots(model_dir, report, pred_rows, history)
    card["metrics"] = card_metrics(report)
    atomic_write_text(model_dir / "card.json", json.dumps(card, indent=2) + "\n")
    log("classifier re-evaluated with mask source auto: " + ", ".join(
        f"{s} acc {m['accuracy']:.3f}" for s, m in results.items()))
    return report
