"""The lesion segmenter behind `--mask auto`: the U-Net, its loss, and its evaluation after
the runtime's own post-processing (threshold, largest connected component). Training is in
`fit_segmenter`."""

from __future__ import annotations

import numpy as np

from busi.runtime.card import SegmenterCard
from busi.runtime.contract import CLASSES, MaskSpec, SegmenterInfo
from busi.runtime.masks import largest_component, model_mask
from busi.runtime.model_dir import ModelDir

from . import dataset as ds
from .inputs import Arrays, load_rows
from .metrics import bootstrap

SEG_FIELDS = ("path", "label", "split", "lesion_found", "dice", "iou")


def build_segmenter(size: int, base: int = 16, depth: int = 4):
    """U-Net: `depth` levels of two 3x3 conv + batch norm + ReLU, max-pool down, transposed
    conv up with skip connections; input `image` (N,S,S,3) RGB 0..255, output `lesion`
    (N,S,S,1) sigmoid. S must be divisible by 2**depth."""
    from .backend import keras

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
    from .backend import keras

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
        rows.append({"path": arr.paths[i], "label": CLASSES[int(arr.labels[i])], "split": split,
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
        out["ci95"] = bootstrap(lambda ix: {"dice": dice[ix].mean(), "iou": iou[ix].mean()}, len(dice), seed)
    return out


def rows_csv(rows: list[dict]) -> str:
    return ds.csv_text(rows, SEG_FIELDS, 6)


def predict_lesions(seg_model, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    return seg_model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)


def auto_masks(arr: Arrays, probs: np.ndarray, mask: MaskSpec, seg: SegmenterInfo) -> np.ndarray:
    """The classifier's (N,S,S,1) masks for mask source `auto`: the segmenter's lesion at each
    image's original size (the runtime's own post-processing), then the mask the classifier was
    trained with (its box with margin, the lesion itself, or the whole image)."""
    S = arr.images.shape[1]
    out = np.zeros((len(arr), S, S, 1), np.float32)
    for i in range(len(arr)):
        shape = arr.shapes[i] if arr.shapes else (S, S)
        lesion = largest_component(probs[i, :, :, 0], shape, seg.threshold, seg.min_area_frac)
        m, _ = model_mask(lesion, shape, S, mask.source, mask.box_margin, mask.placeholder)
        out[i, :, :, 0] = m
    return out


def load_segmenter(md: ModelDir):
    from .backend import keras

    return keras.models.load_model(md.segmenter_keras, compile=False)


def segment_split(md: ModelDir, data_root: str, rows: list[dict]) -> tuple[Arrays, np.ndarray, SegmenterCard]:
    """Decode rows at the segmenter's size and run it: (arrays, probabilities, segmenter card)."""
    card = md.read_segmenter_card()
    arr = load_rows(data_root, rows, card.info.input.size)
    return arr, predict_lesions(load_segmenter(md), arr.images), card
