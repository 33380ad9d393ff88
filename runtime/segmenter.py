"""The lesion segmenter behind `--mask auto`, on ONNX Runtime (no TensorFlow).

image -> segmenter -> lesion probability -> (resize to the image, threshold, largest
connected component, presence score: `masks.find_lesion`, the same function the training
side evaluates with) -> `assess`: the lesion to classify, no lesion, or the reason to abstain
(`needs_roi`: the segmenter is unsure, or the region is not a plausible lesion).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .contract import SEGMENTER_INPUT, SEGMENTER_OUTPUT, SERVED_NAMES, SegmenterInfo, check_graph_shape
from .errors import NOT_FINITE, ModelError
from .imageio import resize_rgb
from .masks import find_lesion, implausible, largest_component
from .session import open_model


@dataclass
class Finding:
    """What the segmenter makes of one image for `--mask auto`."""

    lesion: np.ndarray | None  # the lesion to classify; None: no lesion (or abstaining)
    presence: float  # the lesion presence score (contract.Presence)
    needs_roi: str | None = None  # why auto abstains instead of classifying, or None
    candidate: np.ndarray | None = None  # the largest region found, also when it is not used


class Segmenter:
    """A loaded busi segmenter ONNX file. Safe to share between threads."""

    def __init__(self, path: str | os.PathLike | None, device: str = "auto", verify: bool = True, threads: int | None = None,
                 notice: Callable[[str], None] | None = None, require_sha256: bool = False, server: str | None = None,
                 token: str | None = None):
        """`server`: the segmenter `busi_segmenter` on that inference server (remote backend)."""
        self.path, self.session, self.provider, self.sha256 = open_model(
            path, device, verify, threads, notice, require_sha256, server, SERVED_NAMES["segmenter"], token)
        self.info = SegmenterInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        ins = {i.name: i.shape for i in self.session.get_inputs()}
        outs = {o.name: o.shape for o in self.session.get_outputs()}
        if list(ins) != [SEGMENTER_INPUT] or SEGMENTER_OUTPUT not in outs:
            raise ModelError(self.path, f"segmenter inputs {list(ins)} / outputs {list(outs)}, expected input image and output lesion")
        self.size = self.info.input.size
        check_graph_shape(self.path, "input image", ins[SEGMENTER_INPUT], (None, self.size, self.size, 3), "busi.input.size")

    def use(self, session) -> None:
        """Run through another session of the same model from now on (busi-serve's batched one),
        as `ModelRunner.use` does for the classifier."""
        self.session = session

    def probabilities(self, rgb: np.ndarray) -> np.ndarray:
        """Lesion probability (S, S) of an RGB uint8 image of any size."""
        x = resize_rgb(rgb, self.size).astype(np.float32)[None]
        prob = self.session.run([SEGMENTER_OUTPUT], {SEGMENTER_INPUT: x})[0][0, :, :, 0]
        if not np.isfinite(prob).all():  # a NaN would make an empty lesion map, not an error
            raise ModelError(self.path, NOT_FINITE)
        return prob

    def find(self, rgb: np.ndarray) -> np.ndarray | None:
        """The lesion as a bool mask at the image's size, or None when none is found."""
        return largest_component(self.probabilities(rgb), rgb.shape[:2], self.info.threshold, self.info.min_area_frac)

    def assess(self, rgb: np.ndarray) -> Finding:
        """`assess` of this image's lesion probabilities, at the image's size."""
        return assess(self.probabilities(rgb), rgb.shape[:2], self.info)


def assess(prob: np.ndarray, shape: tuple[int, int], info: SegmenterInfo) -> Finding:
    """Lesion, presence score and, when the segmenter is unsure or what it found is not a
    plausible lesion, the reason to abstain (contract.Presence). One function for the runtime
    and the training side's evaluation. A segmenter without a presence operating point
    (written before contract 5) never abstains."""
    lesion, presence = find_lesion(prob, shape, info.threshold, info.min_area_frac)
    pr = info.presence
    if pr is None:
        return Finding(lesion, presence, None, lesion)
    if presence <= pr.low:
        return Finding(None, presence, None, lesion)
    if presence < pr.high:
        return Finding(None, presence, f"lesion presence {presence:.3g} lies between {pr.low:.3g} (up to there: no "
                                      f"lesion) and {pr.high:.3g} (from there: a lesion); the segmenter is unsure", lesion)
    if lesion is None:
        return Finding(None, presence, "lesion presence is high but no region is large enough to outline", None)
    why = implausible(lesion, pr.frame_margin, pr.max_area, pr.near_field)
    return Finding(None if why else lesion, presence, why, lesion)
