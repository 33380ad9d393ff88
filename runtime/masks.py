"""Mask helpers shared by training and runtime: boxes, merging, lookup of BUSI mask files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .imageio import resize_mask

Box = tuple[int, int, int, int]  # x, y, w, h in pixels

_MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<n>\d+))?$")


def mask_stem(path: str | Path) -> tuple[str, int] | None:
    """'benign (4)_mask_1.png' -> ('benign (4)', 1); '..._mask.png' -> (stem, 0); else None."""
    m = _MASK_RE.match(Path(path).stem)
    if not m:
        return None
    return m.group("stem"), int(m.group("n") or 0)


def find_mask_files(image_path: str | Path, folder: str | Path | None = None, recursive: bool = False) -> list[Path]:
    """The `<stem>_mask.png`, `<stem>_mask_N.png` files of an image, in order.

    Looked up in `folder` (default: the image's own), and below it when `recursive`."""
    image_path = Path(image_path)
    folder = Path(folder) if folder is not None else image_path.parent
    found = []
    for p in (folder.rglob if recursive else folder.glob)(f"{glob_escape(image_path.stem)}_mask*.png"):
        ms = mask_stem(p)
        if ms and ms[0] == image_path.stem:
            found.append((ms[1], p))
    return [p for _, p in sorted(found)]


def glob_escape(s: str) -> str:
    """Escape glob metacharacters ('benign (4)' has none, but '[' would be one)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in s)


def bbox(mask: np.ndarray) -> Box | None:
    """Tight bounding box (x, y, w, h) of a bool mask, or None when it is empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)


def expand_box(box: Box, margin: float, shape: tuple[int, int]) -> Box:
    """Grow a box by `margin` x its width/height on every side, clipped to the image."""
    x, y, w, h = box
    H, W = shape
    dx, dy = margin * w, margin * h
    x0, y0 = max(0, int(np.floor(x - dx))), max(0, int(np.floor(y - dy)))
    x1, y1 = min(W, int(np.ceil(x + w + dx))), min(H, int(np.ceil(y + h + dy)))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def box_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    """A bool mask of `shape` (H, W) that is True inside the box."""
    x, y, w, h = box
    m = np.zeros(shape, bool)
    m[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)] = True
    return m


def placeholder_box(shape: tuple[int, int], size_frac: tuple[float, float]) -> Box:
    """A lesion-sized box in the middle of the image: what a box-trained model is given when
    there is no lesion to outline (training drew such boxes at random plausible places)."""
    H, W = shape
    w = max(1, min(W, int(round(size_frac[0] * W))))
    h = max(1, min(H, int(round(size_frac[1] * H))))
    return (W - w) // 2, (H - h) // 2, w, h


def find_lesion(prob: np.ndarray, shape: tuple[int, int], threshold: float = 0.5,
                min_area_frac: float = 0.002) -> tuple[np.ndarray | None, float]:
    """Segmenter output -> (the lesion, its presence score). Probabilities (h, w) are resized
    (bilinear) to the image's `shape` (H, W) and thresholded; the largest 8-connected
    component is the lesion, None when it covers less than `min_area_frac` of the image (or
    there is none). Presence: the mean probability inside that component times the fraction
    of the image it covers (its "soft area"; 0 without a component), whatever its size.

    One function for the runtime's `--mask auto` and the training side's evaluation of it."""
    import cv2

    H, W = shape
    p = prob.astype(np.float32)
    if p.shape != (H, W):
        p = cv2.resize(p, (W, H), interpolation=cv2.INTER_LINEAR)
    binary = (p >= threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return None, 0.0
    areas = stats[1:, cv2.CC_STAT_AREA]
    k = int(np.argmax(areas))
    component = labels == k + 1
    presence = float(p[component].sum() / (H * W))
    if areas[k] < max(1.0, min_area_frac * H * W):
        return None, presence
    return component, presence


def largest_component(prob: np.ndarray, shape: tuple[int, int], threshold: float = 0.5, min_area_frac: float = 0.002) -> np.ndarray | None:
    """The lesion of `find_lesion` without its presence score."""
    return find_lesion(prob, shape, threshold, min_area_frac)[0]


def implausible(lesion: np.ndarray, frame_margin: float, max_area: float, near_field: float) -> str | None:
    """Why a found component is not a lesion to classify, or None: it touches the image frame
    (within `frame_margin` of the shorter side), covers more than `max_area` of the image, or
    lies wholly in the top `near_field` of the rows (probe contact and reverberation
    artefacts live there)."""
    H, W = lesion.shape
    x, y, w, h = bbox(lesion)
    if y + h <= near_field * H:
        return f"the found region lies in the top {near_field:.0%} of the image, where near-field artefacts are"
    m = frame_margin * min(H, W)
    if x <= m or y <= m or x + w >= W - m or y + h >= H - m:
        return f"the found region touches the image frame (box {x},{y},{w},{h} in a {W}x{H} image)"
    frac = float(lesion.mean())
    if frac > max_area:
        return f"the found region covers {frac:.0%} of the image, more than a lesion in training did ({max_area:.0%})"
    return None


def model_mask(
    lesion: np.ndarray | None,
    shape: tuple[int, int],
    size: int,
    trained_source: str,
    margin: float,
    placeholder: tuple[float, float],
) -> tuple[np.ndarray, Box | None]:
    """The (size, size) bool mask the classifier gets for a lesion mask at image `shape`,
    as the model was trained: its box with `margin` (box), the mask itself (gt), or the whole
    image (none). With no lesion (None): a central placeholder box, an empty mask, or the
    whole image. Also returns the lesion's tight box in image pixels (None without one)."""
    box = bbox(lesion) if lesion is not None else None
    if trained_source == "none":
        return np.ones((size, size), bool), box
    if box is None:
        if trained_source == "gt":
            return np.zeros((size, size), bool), None
        return resize_mask(box_mask(shape, placeholder_box(shape, placeholder)), size), None
    if trained_source == "box":
        return resize_mask(box_mask(shape, expand_box(box, margin, shape)), size), box
    return resize_mask(lesion, size), box
