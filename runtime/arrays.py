"""Images, masks and ROIs given as Python values (arrays, tuples, strings), checked by the
rules files follow: one InputError naming the problem, never a silent conversion."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import InputError, UsageError
from .masks import Box
from .pixels import check_min_side, check_pixel_limit, to_uint8


def parse_box(value: Any) -> Box:
    """(x, y, w, h) from a tuple/list or 'x,y,w,h' string; InputError when malformed."""
    try:
        parts = value.replace(" ", "").split(",") if isinstance(value, str) else list(np.ravel(value))
        if len(parts) != 4:
            raise ValueError
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise InputError(None, f"ROI must be x,y,w,h (four numbers), got {value!r}") from None
    if not all(math.isfinite(v) and abs(v) < 1e9 for v in numbers):
        raise InputError(None, f"ROI must be four finite pixel coordinates, got {value!r}")
    x, y, w, h = (int(round(v)) for v in numbers)
    return x, y, w, h


def check_threshold(value: Any, what: str = "threshold") -> float:
    """A probability threshold: a finite number in [0, 1] (NaN, 5 or -1 would set the
    malignant flag never or always); UsageError otherwise."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number in [0, 1], got {value!r}") from None
    if isinstance(value, bool) or not 0.0 <= t <= 1.0:  # NaN fails the comparison too
        raise UsageError(f"{what} must be a number in [0, 1], got {value!r}")
    return t


def is_box(item) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 4 and all(isinstance(v, (int, float)) for v in item)


def frame_index(frame) -> int:
    """A frame number (0-based) from an int or a string; 'all' is handled by the caller."""
    try:
        f = int(frame)
        if isinstance(frame, bool) or (isinstance(frame, float) and frame != f):  # 1.5 is no frame
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(None, f"frame must be a number (0-based) or 'all', got {frame!r}") from None
    if f < 0:
        raise InputError(None, f"frame must be 0 or more, got {f}")
    return f


def numeric(a: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
        raise InputError(None, f"{what} must be a numeric numpy array, got {getattr(a, 'dtype', type(a).__name__)}")
    if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
        raise InputError(None, f"{what} holds NaN or infinite values")
    if a.dtype.kind in "if" and a.size and a.min() < 0:
        raise InputError(None, f"{what} holds negative values")
    return a


def check_array(a: np.ndarray, max_pixels: int = 0) -> np.ndarray:
    """An image array -> RGB uint8 (H, W, 3), by the rules files follow: uint8 as is, uint16
    like a 16-bit PNG (0..65535), bool as 0/255, floats on the 0..255 scale (rounded); NaN,
    inf, negative values, a float array whose maximum is 1 or less (a 0..1 image, ambiguous)
    and images under 8x8 are refused."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise InputError(None, f"image array must be HxW, HxWx3 (RGB) or HxWx4, got shape {a.shape}")
    check_min_side(None, a.shape[1], a.shape[0])
    check_pixel_limit(None, a.shape[1], a.shape[0], max_pixels)
    a = numeric(a, "image array")[:, :, :3]
    if a.dtype in (np.uint8, np.uint16, bool):
        a = to_uint8(a)
    elif a.dtype.kind == "f":
        # one scale, 0..255 as the model's input: guessing 0..1 from the maximum flipped the flag of
        # a dark 0..255 image, so an array that would be ambiguous is refused instead
        top = float(a.max())
        if top > 255.0:
            raise InputError(None, f"float image values must lie in 0..255, the maximum is {top:g}")
        if top <= 1.0:
            raise InputError(None, f"float image values are read on the 0..255 scale and this array's maximum is "
                                   f"{top:g}: multiply a 0..1 image by 255 (or pass uint8)")
        a = np.clip(a, 0, 255).round().astype(np.uint8)
    else:
        top = int(a.max())
        if top > 255:
            raise InputError(None, f"integer image values must lie in 0..255 (uint16 arrays are read as 16-bit), the maximum is {top}")
        a = a.astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def mask_array(mask: np.ndarray, threshold: int) -> np.ndarray:
    """A lesion mask array (H, W) or (H, W, C): bool, 0/1 or 0..255 -> bool (H, W)."""
    m = numeric(mask, "mask array")
    if m.ndim not in (2, 3) or min(m.shape[:2]) == 0:
        raise InputError(None, f"mask array must be HxW or HxWxC, got shape {m.shape}")
    lesion = m.astype(bool) if m.dtype == bool else m > (threshold if m.max() > 1 else 0.5)
    return lesion.any(axis=2) if lesion.ndim == 3 else lesion
