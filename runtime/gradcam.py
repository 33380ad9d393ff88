"""Grad-CAM from what the ONNX file holds, without TensorFlow.

The classifier's head is GAP -> Dense 256 ReLU -> Dropout -> Dense 3, so the gradient of a
class logit with respect to the last conv block's feature map is closed-form; export puts
the feature map A (h, w, K) and the Grad-CAM channel weights alpha (K, C) = d logit_c / d A,
averaged over space, into the ONNX file as extra outputs. Here:

    cam_c = ReLU(sum_k alpha[k, c] * A[:, :, k])

which is Grad-CAM (Selvaraju et al. 2017) of the pre-softmax class score.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

#: the PNG text chunk every overlay busi writes carries, so a folder walk never reads one as a patient image
SOFTWARE_KEY = b"Software"
SOFTWARE_PREFIX = "busi "


def grad_cam(features: np.ndarray, weights: np.ndarray, class_index: int) -> np.ndarray:
    """(h, w) Grad-CAM map of one image: features (h, w, K), weights (K, C)."""
    return np.maximum(features.astype(np.float64) @ weights[:, class_index].astype(np.float64), 0.0)


def heat_at(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The map resized (bilinear) to `shape` (H, W) and scaled to 0..1 by its maximum."""
    h = cv2.resize(cam.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    top = float(h.max())
    return h / top if top > 0 else np.zeros_like(h)


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heat map (JET colours) blended over an RGB uint8 image of any size."""
    heat = (heat_at(cam, rgb.shape[:2]) * 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(rgb, 1 - alpha, colour, alpha, 0)


def outline(rgb: np.ndarray, mask: np.ndarray, colour=(0, 255, 0), thickness: int = 2) -> np.ndarray:
    """The outline of a bool mask (any size; resized nearest) drawn on a copy of the image."""
    H, W = rgb.shape[:2]
    m = mask.astype(np.uint8)
    if m.shape != (H, W):
        m = cv2.resize(m, (W, H), interpolation=cv2.INTER_NEAREST)
    out = rgb.copy()
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, colour, thickness)
    return out


#: the outlines' colours, in the HTML report and the DICOM overlay alike
GREEN, YELLOW = (0, 200, 0), (255, 210, 0)


def marked(view: np.ndarray, mask: np.ndarray | None, lesion: np.ndarray | None = None,
           cam: np.ndarray | None = None) -> np.ndarray:
    """The picture the HTML report and the DICOM overlay (SC) show: the image, under the Grad-CAM
    heat map when one is given, with what the classifier saw outlined in green and the lesion
    given or found in yellow."""
    shown = overlay(view, cam) if cam is not None else view.copy()
    if mask is not None:
        shown = outline(shown, mask, GREEN)
    return outline(shown, lesion, YELLOW, 1) if lesion is not None else shown


def thumbnail(rgb: np.ndarray, max_side: int = 320) -> np.ndarray:
    H, W = rgb.shape[:2]
    k = max_side / max(H, W)
    if k >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(W * k)), max(1, round(H * k))), interpolation=cv2.INTER_AREA)


def mark_png(png: bytes) -> bytes:
    """The PNG with a tEXt chunk `Software: busi <version> Grad-CAM overlay ...` right after its
    header (IHDR is 8 + 25 bytes in), where `is_busi_png` finds it reading 1 KB."""
    from busi import __version__

    text = SOFTWARE_KEY + b"\0" + f"{SOFTWARE_PREFIX}{__version__} Grad-CAM overlay (research software, not a medical device)".encode()
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]


def is_busi_png(head: bytes) -> bool:
    """Whether PNG bytes (their first KB is enough for busi's own) carry busi's Software text
    chunk before the image data."""
    if not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    i = 8
    while i + 8 <= len(head):
        n, kind = struct.unpack(">I4s", head[i:i + 8])
        if kind in (b"IDAT", b"IEND"):
            return False
        if kind == b"tEXt":
            key, _, value = head[i + 8:i + 8 + n].partition(b"\0")
            if key == SOFTWARE_KEY and value.startswith(SOFTWARE_PREFIX.encode()):
                return True
        i += 12 + n
    return False
