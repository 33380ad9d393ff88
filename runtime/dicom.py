"""DICOM -> RGB uint8 with pydicom: VOI LUT / windowing, MONOCHROME1, YBR, multi-frame."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .errors import InputError


def read_dicom_rgb(path: Path, data: bytes, *, max_pixels: int, frame: int = 0) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError) as e:
        raise InputError(path, f"corrupt DICOM ({type(e).__name__})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(path, "DICOM has no pixel data")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols == 0:
        raise InputError(path, "DICOM has no image size (Rows/Columns)")
    if max_pixels and rows * cols > max_pixels:
        raise InputError(path, f"image is {cols}x{rows} = {rows * cols:,} pixels, above the limit of {max_pixels:,}")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < n_frames:
        raise InputError(path, f"frame {frame} requested, the DICOM has {n_frames} frame(s) (0-based)")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = pixel_array(ds, index=frame if n_frames > 1 else None)
    except Exception as e:  # missing decoder plugin, corrupt fragments
        name = getattr(ts, "name", str(ts)) if ts is not None else "unknown"
        if ts is not None and getattr(ts, "is_compressed", False):
            raise InputError(
                path, f"compressed transfer syntax '{name}' ({ts}) cannot be decoded here ({type(e).__name__})"
            ) from None
        raise InputError(path, f"cannot decode DICOM pixel data ({type(e).__name__}: {str(e)[:120]})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples == 1:
        x = apply_modality_lut(arr, ds)
        x = apply_voi_lut(x, ds, index=0) if ("WindowCenter" in ds or "VOILUTSequence" in ds) else x
        x = x.astype(np.float64)
        lo, hi = float(x.min()), float(x.max())
        grey = np.zeros(x.shape, np.uint8) if hi <= lo else ((x - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8)
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        return np.repeat(grey[:, :, None], 3, axis=2)
    # colour: pydicom's pixel_array already converts YBR_FULL(_422) to RGB (as_rgb=True)
    rgb = arr
    if rgb.dtype != np.uint8:
        rgb = (rgb.astype(np.float64) / max(1.0, float(rgb.max())) * 255 + 0.5).astype(np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(path, f"unsupported DICOM pixel layout {rgb.shape} ({photometric})")
    return rgb
