"""The one decode/resize path shared by training and runtime.

Training calls these functions too, so what the model saw in training and what it sees at
the scanner cannot drift apart. Everything here is pure (numpy + OpenCV); errors are
`InputError` with a one-line message that names the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

#: refuse images with more pixels than this before decoding them (option in CLI/API)
DEFAULT_MAX_PIXELS = 50_000_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
MIN_SIDE = 8


def _read_bytes(path: Path) -> bytes:
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    if p.is_dir():
        raise InputError(p, "is a directory, expected an image file")
    try:
        data = p.read_bytes()
    except PermissionError:
        raise InputError(p, "permission denied") from None
    except OSError as e:
        raise InputError(p, f"cannot read ({e.strerror or e})") from None
    if not data:
        raise InputError(p, "empty file (0 bytes)")
    return data


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data.startswith(PNG_MAGIC) and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _jpeg_sof(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from the first SOF marker, without decoding pixels."""
    if not data.startswith(JPEG_MAGIC):
        return None
    i = 2
    n = len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return w, h, data[i + 9]
        i += 2 + seg
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    sof = _jpeg_sof(data)
    return sof[:2] if sof else None


def _jpeg_is_cmyk(data: bytes) -> bool:
    """True when the first SOF frame has 4 components (CMYK/YCCK)."""
    sof = _jpeg_sof(data)
    return bool(sof and sof[2] == 4)


def check_pixel_limit(path: Path, width: int, height: int, max_pixels: int) -> None:
    if max_pixels and width * height > max_pixels:
        raise InputError(
            path, f"image is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,}"
        )


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        # 16-bit PNG: full 0..65535 range mapped to 0..255 (rounded)
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    a = arr.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip((a - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _decode_raster(path: Path, data: bytes, max_pixels: int) -> np.ndarray:
    """PNG/JPEG bytes -> array as stored (grey, BGR or BGRA; 8 or 16 bit)."""
    size = _png_size(data) or _jpeg_size(data)
    if size is None:
        if data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC):
            raise InputError(path, "truncated or corrupt image header")
        raise InputError(path, "not a PNG, JPEG or DICOM image")
    check_pixel_limit(path, size[0], size[1], max_pixels)
    if data.startswith(JPEG_MAGIC) and _jpeg_is_cmyk(data):
        raise InputError(path, "CMYK JPEG is not supported; save the image as RGB or greyscale")
    if data.startswith(PNG_MAGIC) and b"IEND" not in data[-64:]:
        raise InputError(path, "truncated PNG (no IEND chunk)")
    if data.startswith(JPEG_MAGIC) and b"\xff\xd9" not in data[-64:]:
        raise InputError(path, "truncated JPEG (no end-of-image marker)")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise InputError(path, "corrupt image data (decoder failed)")
    return arr


def _stored_to_rgb(arr: np.ndarray) -> np.ndarray:
    arr = _to_uint8(arr)
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return cv2.cvtColor(arr[:, :, 0], cv2.COLOR_GRAY2RGB)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    if arr.ndim == 3 and arr.shape[2] == 4:
        # RGBA: ultrasound frames carry no meaningful transparency; drop alpha
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
    raise ValueError(f"unsupported image layout {arr.shape}")


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_rgb(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int = 0) -> np.ndarray:
    """Decode a PNG, JPEG or DICOM file into an RGB uint8 array (H, W, 3).

    Accepts every PNG mode (1-bit, grey, RGB, RGBA, 16-bit) and unicode paths.
    Raises `InputError` with a one-line reason naming the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if is_dicom(data):
        from .dicom import read_dicom_rgb  # pydicom only when needed

        rgb = read_dicom_rgb(path, data, max_pixels=max_pixels, frame=frame)
    else:
        try:
            rgb = _stored_to_rgb(_decode_raster(path, data, max_pixels))
        except ValueError as e:
            raise InputError(path, str(e)) from None
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(path, f"image is only {w}x{h} pixels (at least {MIN_SIDE}x{MIN_SIDE} needed)")
    return np.ascontiguousarray(rgb)


def read_mask(path: str | os.PathLike, *, threshold: int = 127, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a mask PNG of any mode into a bool array (H, W): True = lesion.

    1-bit, grey, RGB and RGBA masks are accepted; a pixel is lesion when its brightest
    colour channel is above `threshold` (8-bit scale). Alpha is ignored unless the colour
    channels are all zero while alpha varies (a mask drawn only in the alpha channel).
    """
    path = Path(path)
    data = _read_bytes(path)
    arr = _to_uint8(_decode_raster(path, data, max_pixels))
    if arr.ndim == 2:
        grey = arr
    elif arr.shape[2] == 1:
        grey = arr[:, :, 0]
    else:
        grey = arr[:, :, :3].max(axis=2)
        if arr.shape[2] == 4 and grey.max() == 0 and arr[:, :, 3].min() != arr[:, :, 3].max():
            grey = arr[:, :, 3]
    return grey > threshold


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB image to size x size with INTER_AREA (the training/runtime contract)."""
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a bool mask with nearest neighbour. `size` is an int (square) or (height, width)."""
    hw = (size, size) if isinstance(size, int) else size
    out = cv2.resize(mask.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool)


def load_image(path: str | os.PathLike, size: int, **kw) -> np.ndarray:
    """read_rgb + resize_rgb: the exact input that both training and inference use."""
    return resize_rgb(read_rgb(path, **kw), size)
