"""The out-of-distribution guard at run time (numpy only): the distance of an image's pooled
features to the training images, and the flag. Training fits the numbers
(busi.train.ood); the contract carries them (`contract.OodGuard`)."""

from __future__ import annotations

import numpy as np

from .contract import OodStats

NOTE = ("unlike the images this model was trained on (out-of-distribution score {score:.3g} above {threshold:.3g}): "
        "do not trust the class; check the image and its source")


def pooled(feature_maps: np.ndarray) -> np.ndarray:
    """(N, h, w, D) feature maps -> (N, D): the global average the classifier's head pools."""
    return np.asarray(feature_maps, np.float64).mean(axis=(1, 2))


def ood_scores(stats: OodStats, features: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each (N, D) pooled feature vector to the nearest class
    mean: sum_i (v . u_i)^2 / lambda_i over the k leading directions u_i, plus the rest of
    |v|^2 over the pooled variance of the other directions (v = x - mean)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != stats.dim:
        raise ValueError(f"features of shape {x.shape}, expected (N, {stats.dim})")
    v = x[:, None, :] - stats.mean_array[None]  # (N, C, D)
    proj = v @ stats.component_array  # (N, C, k)
    inside = (proj ** 2 / stats.variance_array).sum(-1)
    rest = np.maximum((v ** 2).sum(-1) - (proj ** 2).sum(-1), 0.0) / stats.residual_variance
    return (inside + rest).min(axis=1)
