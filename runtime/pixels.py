"""Pixel rules shared by every decoder and by arrays given to the API: size limits and the
conversion of stored sample values to 8 bits."""

from __future__ import annotations

import numpy as np

from .errors import InputError

#: refuse images with more pixels than this before decoding them (option in CLI and API)
DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 8


def check_pixel_limit(path, width: int, height: int, max_pixels: int) -> None:
    if max_pixels and width * height > max_pixels:
        raise InputError(
            path, f"image is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,}"
        )


def check_min_side(path, width: int, height: int) -> None:
    """One rule for files and arrays: at least MIN_SIDE pixels each way."""
    if min(width, height) < MIN_SIDE:
        raise InputError(path, f"image is only {width}x{height} pixels (at least {MIN_SIDE}x{MIN_SIDE} needed)")


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """8-bit as stored; 16-bit mapped from its full 0..65535 range (rounded); bool to 0/255.
    Any other type is scaled from its own minimum and maximum."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    a = arr.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip((a - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
