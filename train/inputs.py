"""From a manifest to model inputs: decoded images, lesion masks and the three mask sources.

Images are decoded and resized by `busi.runtime.imageio` (the runtime's own reader), so
training and runtime see identical pixels. Mask sources:

- `gt`: the ground-truth lesion mask (upper bound; the seed's `image * mask`).
- `box`: the lesion's bounding box with a margin (random 0-20 % in training, 10 % in
  evaluation); normal images get a lesion-sized box at a random plausible place, so an
  empty mask never gives the class away.
- `none`: the whole image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from busi.runtime.contract import BOX_MARGIN, CLASSES
from busi.runtime.imageio import read_rgb, resize_mask, resize_rgb
from busi.runtime.masks import bbox, box_mask, expand_box

from .dataset import Sample, load_mask

TRAIN_MARGIN = (0.0, 2 * BOX_MARGIN)


@dataclass
class Arrays:
    """Decoded split: images (N,S,S,3) uint8, gt masks (N,S,S) bool, labels (N,) int, paths,
    and each image's original (H, W)."""

    images: np.ndarray
    gt: np.ndarray
    labels: np.ndarray
    paths: list[str]
    shapes: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.labels)


def load_rows(root: str | Path, rows: list[dict], size: int) -> Arrays:
    """Decode manifest rows at `size` x `size` (image INTER_AREA, mask nearest)."""
    root = Path(root)
    n = len(rows)
    images = np.zeros((n, size, size, 3), np.uint8)
    gt = np.zeros((n, size, size), bool)
    labels = np.zeros(n, np.int64)
    shapes = []
    from busi.runtime.progress import tracked

    for i, r in enumerate(tracked(rows, n, "decode")):
        rgb = read_rgb(root / r["path"])
        shapes.append(rgb.shape[:2])
        images[i] = resize_rgb(rgb, size)
        masks = [root / m for m in r["mask_paths"].split(";") if m]
        s = Sample(path=root / r["path"], label=r["label"], masks=masks)
        gt[i] = resize_mask(load_mask(s, rgb.shape[:2]), size)
        labels[i] = CLASSES.index(r["label"])
    return Arrays(images, gt, labels, [r["path"] for r in rows], shapes)


def lesion_sizes(gt: np.ndarray) -> np.ndarray:
    """(w, h) of every non-empty mask's box: the sizes placeholder boxes are drawn from."""
    sizes = [b[2:] for b in (bbox(m) for m in gt) if b is not None]
    return np.array(sizes, np.int64).reshape(-1, 2)


def placeholder_box(rng: np.random.Generator, size: int, sizes: np.ndarray) -> tuple[int, int, int, int]:
    """A lesion-sized box at a plausible place (central part of the image, below the skin)."""
    if len(sizes):
        w, h = sizes[rng.integers(len(sizes))]
    else:
        w = h = size // 4
    w, h = int(min(w, size - 2)), int(min(h, size - 2))
    cx = rng.uniform(0.2, 0.8) * size
    cy = rng.uniform(0.3, 0.7) * size
    x = int(np.clip(cx - w / 2, 0, size - w))
    y = int(np.clip(cy - h / 2, 0, size - h))
    return x, y, w, h


def source_mask(
    source: str,
    gt: np.ndarray,
    rng: np.random.Generator,
    sizes: np.ndarray,
    margin: float,
) -> np.ndarray:
    """The (S, S) bool mask that a mask source gives for one image."""
    if source == "gt":
        return gt
    if source == "none":
        return np.ones_like(gt, bool)
    if source != "box":
        raise ValueError(f"unknown mask source {source!r}")
    size = gt.shape[0]
    b = bbox(gt)
    if b is None:
        b = placeholder_box(rng, size, sizes)
    return box_mask(gt.shape, expand_box(b, margin, gt.shape))


def _stable_seed(path: str, seed: int) -> list[int]:
    digest = hashlib.sha256(path.encode()).digest()
    return [seed, int.from_bytes(digest[:4], "little")]


def eval_masks(arr: Arrays, source: str, sizes: np.ndarray, seed: int = 0) -> np.ndarray:
    """Deterministic evaluation masks (N, S, S, 1) float32 for one mask source."""
    out = np.zeros(arr.gt.shape + (1,), np.float32)
    for i in range(len(arr)):
        rng = np.random.default_rng(_stable_seed(arr.paths[i], seed))
        out[i, :, :, 0] = source_mask(source, arr.gt[i], rng, sizes, BOX_MARGIN)
    return out
