"""Mask helpers shared by training and runtime: boxes, merging, lookup of BUSI mask files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

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


def scale_box(box: Box, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> Box:
    """Map a box from one image size to another (e.g. original -> model input)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    x, y, w, h = box
    x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
    x1, y1 = int(np.ceil((x + w) * sx)), int(np.ceil((y + h) * sy))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)
