"""The lesion segmenter behind `--mask auto`: the U-Net, its loss, and its evaluation after
the runtime's own post-processing (threshold, largest connected component). Training is in
`fit_segmenter`."""

from __future__ import annotations

import numpy as np

from busi.runtime.card import SegmenterCard
from busi.runtime.contract import CLASSES, MaskSpec, Presence, SegmenterInfo
from busi.runtime.imageio import resize_mask
from busi.runtime.masks import bbox, model_mask
from busi.runtime.model_dir import ModelDir
from busi.runtime.segmenter import Finding, assess

from . import dataset as ds
from .inputs import Arrays, load_rows
from .metrics import bootstrap

SEG_FIELDS = ("path", "label", "split", "presence", "decision", "lesion_found", "needs_roi", "dice", "iou")


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
    out = L.Conv2D(1, 1, activation="sigmoid", name="lesion", dtype="float32")(x)  # float32 under --precision mixed
    return keras.Model(image, out, name="busi_lesion_unet")


def dice_bce_loss(y_true, y_pred):
    """Binary cross-entropy + soft Dice over the batch (empty normal masks stay well defined)."""
    from .backend import keras

    ops = keras.ops
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    inter = ops.sum(y_true * y_pred)
    dice = (2.0 * inter + 1.0) / (ops.sum(y_true) + ops.sum(y_pred) + 1.0)
    return bce + (1.0 - dice)


def dice_score():
    """Dice of the thresholded (0.5) prediction over a whole validation set (intersections and
    areas summed over every batch, so normal images count through their false positives), for
    early stopping on validation Dice; named `dice`."""
    from .backend import keras

    ops = keras.ops

    class DiceScore(keras.metrics.Metric):
        def __init__(self, name="dice", **kw):
            super().__init__(name=name, **kw)
            self.inter = self.add_variable(shape=(), initializer="zeros", name="inter")
            self.total = self.add_variable(shape=(), initializer="zeros", name="total")

        def update_state(self, y_true, y_pred, sample_weight=None):
            p = ops.cast(y_pred >= 0.5, "float32")
            t = ops.cast(y_true, "float32")
            self.inter.assign_add(ops.sum(t * p))
            self.total.assign_add(ops.sum(t) + ops.sum(p))

        def result(self):
            return (2.0 * self.inter + 1.0) / (self.total + 1.0)

        def reset_state(self):
            self.inter.assign(0.0)
            self.total.assign(0.0)

    return DiceScore()


def dice_iou(pred: np.ndarray | None, gt: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two bool masks; an empty prediction scores 0 on a lesion."""
    if pred is None:
        return 0.0, 0.0
    inter = float((pred & gt).sum())
    total = float(pred.sum() + gt.sum())
    union = float((pred | gt).sum())
    return (2 * inter / total if total else 1.0), (inter / union if union else 1.0)


def findings(arr: Arrays, probs: np.ndarray, seg: SegmenterInfo) -> list[Finding]:
    """What the runtime makes of each image (`runtime.segmenter.assess`, at the image's own
    size): lesion, presence score, and the reason to abstain."""
    S = probs.shape[1]
    return [assess(probs[i, :, :, 0], arr.shapes[i] if arr.shapes else (S, S), seg) for i in range(len(arr))]


def decision(f: Finding) -> str:
    """lesion (classified with it), none (no lesion: the normal-image placeholder), needs_roi."""
    return "needs_roi" if f.needs_roi else "lesion" if f.lesion is not None else "none"


def segmentation_rows(arr: Arrays, probs: np.ndarray, split: str, seg: SegmenterInfo,
                      found: list[Finding] | None = None) -> list[dict]:
    """Per image: the runtime's decision and presence score, and the region the segmenter
    found (its largest component, whatever the decision) against the ground truth, at the
    segmenter's input size."""
    rows = []
    S = probs.shape[1]
    for i, f in enumerate(findings(arr, probs, seg) if found is None else found):
        region = None if f.candidate is None else resize_mask(f.candidate, S)
        gt = arr.gt[i]
        d, j = dice_iou(region, gt) if gt.any() else (float("nan"), float("nan"))
        rows.append({"path": arr.paths[i], "label": CLASSES[int(arr.labels[i])], "split": split, "presence": f.presence,
                     "decision": decision(f), "lesion_found": int(f.lesion is not None), "needs_roi": int(bool(f.needs_roi)),
                     "dice": d, "iou": j})
    return rows


def segmentation_metrics(rows: list[dict], seed: int = 0) -> dict:
    """Dice/IoU of the region found over lesion images (mean, 95 % bootstrap interval; a miss
    scores 0) and over those where auto classifies with it (`dice_found`); how often a lesion
    is used on lesion images, how often nothing is found on normal images, how often auto
    abstains; and the AUROC of the presence score, lesion images against normal ones."""
    from sklearn.metrics import roc_auc_score

    lesion = [r for r in rows if r["label"] != "normal"]
    normal = [r for r in rows if r["label"] == "normal"]
    dice = np.array([r["dice"] for r in lesion], float)
    iou = np.array([r["iou"] for r in lesion], float)
    found = np.array([r["dice"] for r in lesion if r["decision"] == "lesion"], float)
    rate = lambda rs, key, v: float(np.mean([r[key] == v for r in rs])) if rs else None  # noqa: E731
    y = [int(r["label"] != "normal") for r in rows]
    out = {
        "n": len(rows),
        "n_lesion": len(lesion),
        "n_normal": len(normal),
        "dice": float(dice.mean()) if len(dice) else None,
        "iou": float(iou.mean()) if len(iou) else None,
        "dice_found": float(found.mean()) if len(found) else None,
        "lesion_found_rate": rate(lesion, "decision", "lesion"),
        "normal_empty_rate": rate(normal, "decision", "none"),
        "needs_roi_rate": rate(rows, "decision", "needs_roi"),
        "needs_roi_rate_normal": rate(normal, "decision", "needs_roi"),
        "needs_roi_rate_lesion": rate(lesion, "decision", "needs_roi"),
        "presence_auroc": float(roc_auc_score(y, [r["presence"] for r in rows])) if 0 < sum(y) < len(y) else None,
        "ci95": {},
    }
    if len(dice):
        out["ci95"] = bootstrap(lambda ix: {"dice": dice[ix].mean(), "iou": iou[ix].mean()}, len(dice), seed)
    return out


def fit_presence(rows: list[dict], train_gt: np.ndarray, target_sensitivity: float = 0.95,
                 target_specificity: float = 0.95) -> Presence:
    """The presence operating point from the validation rows (`segmentation_rows` of a
    segmenter without one). Two scores: the one that keeps `target_sensitivity` of the lesion
    images at or above it, and the one at or below which `target_specificity` of the normal
    images lie. The lower is `low` (at or below: no lesion), the higher `high` (from there: a
    lesion); between them auto abstains, whether the two groups overlap there or neither
    reaches there. The largest plausible lesion: 1.5 x the largest training lesion's share of
    its image (0.2 to 0.9); the near field: the top 12 % of the rows, or less if a training
    lesion reaches up there."""
    les = np.array([r["presence"] for r in rows if r["label"] != "normal"], float)
    nor = np.array([r["presence"] for r in rows if r["label"] == "normal"], float)
    q_lesion = float(np.quantile(les, 1 - target_sensitivity, method="lower")) if len(les) else 0.0
    q_normal = float(np.quantile(nor, target_specificity, method="higher")) if len(nor) else q_lesion
    areas = [g.mean() for g in train_gt if g.any()]
    bottoms = [(bbox(g)[1] + bbox(g)[3]) / g.shape[0] for g in train_gt if g.any()]
    return Presence(low=min(q_lesion, q_normal), high=max(q_lesion, q_normal), target_sensitivity=target_sensitivity,
                    target_specificity=target_specificity, max_area=float(np.clip(1.5 * max(areas, default=0.4), 0.2, 0.9)),
                    near_field=float(min(0.12, 0.8 * min(bottoms, default=1.0))), n_lesion=int(len(les)),
                    n_normal=int(len(nor)))


def rows_csv(rows: list[dict]) -> str:
    """Dice and IoU to 6 decimals; the presence score in full (its AUROC recomputes exactly)."""
    return ds.csv_text([{**r, "presence": repr(float(r["presence"]))} for r in rows], SEG_FIELDS, 6)


def predict_lesions(seg_model, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    from .pipeline import batches

    return seg_model.predict(batches(images.astype(np.float32), batch_size=batch_size), verbose=0)


def auto_masks(arr: Arrays, probs: np.ndarray, mask: MaskSpec, seg: SegmenterInfo,
               found: list[Finding] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's (N,S,S,1) masks for mask source `auto` and where the runtime abstains
    (N,) bool: the segmenter's lesion at each image's original size (the runtime's own
    decision, `runtime.segmenter.assess`), then the mask the classifier was trained with (its
    box with margin, the lesion itself, or the whole image). Where it abstains, the mask is
    that of the region found (a guessed box), so both "auto had it classified" and "the images
    auto keeps" can be reported."""
    S = arr.images.shape[1]
    out = np.zeros((len(arr), S, S, 1), np.float32)
    abstained = np.zeros(len(arr), bool)
    for i, f in enumerate(findings(arr, probs, seg) if found is None else found):
        shape = arr.shapes[i] if arr.shapes else (S, S)
        lesion = f.candidate if f.needs_roi else f.lesion
        m, _ = model_mask(lesion, shape, S, mask.source, mask.box_margin, mask.placeholder)
        out[i, :, :, 0] = m
        abstained[i] = bool(f.needs_roi)
    return out, abstained


def load_segmenter(md: ModelDir):
    from .backend import keras

    return keras.models.load_model(md.segmenter_keras, compile=False)


def segment_split(md: ModelDir, data_root: str, rows: list[dict]) -> tuple[Arrays, np.ndarray, SegmenterCard]:
    """Decode rows at the segmenter's size and run it: (arrays, probabilities, segmenter card)."""
    card = md.read_segmenter_card()
    arr = load_rows(data_root, rows, card.info.input.size)
    return arr, predict_lesions(load_segmenter(md), arr.images), card
