"""Grad-CAM from what the ONNX file holds, without TensorFlow.

The classifier's head is GAP -> Dense 256 ReLU -> Dropout -> Dense 3, so the gradient of a
class logit with respect to the last conv block's feature map is closed-form; export puts
the feature map A (h, w, K) and the Grad-CAM channel weights alpha (K, C) = d logit_c / d A,
averaged over space, into the ONNX file as extra outputs. Here:

    cam_c = ReLU(sum_k alpha[k, c] * A[:, :, k])

which is Grad-CAM (Selvaraju et al. 2017) of the pre-softmax class score.
"""

from __future__ import annotations

import cv2
import numpy as np


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


def thumbnail(rgb: np.ndarray, max_side: int = 320) -> np.ndarray:
    H, W = rgb.shape[:2]
    k = max_side / max(H, W)
    if k >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(W * k)), max(1, round(H * k))), interpolation=cv2.INTER_AREA)
