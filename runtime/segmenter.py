"""The lesion segmenter behind `--mask auto`, on ONNX Runtime (no TensorFlow).

image -> segmenter -> lesion probability -> (resize to the image, threshold, largest
connected component: `masks.largest_component`, the same function the training side
evaluates with) -> the lesion mask, or None when there is no lesion to find.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from .contract import SEGMENTER_INPUT, SEGMENTER_OUTPUT, SegmenterInfo, check_graph_shape
from .errors import ModelError
from .imageio import resize_rgb
from .masks import largest_component
from .session import create_session
from .verify import verified_sha256



class Segmenter:
    """A loaded busi segmenter ONNX file. Safe to share between threads."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", verify: bool = True, threads: int | None = None,
                 notice: Callable[[str], None] | None = None, require_sha256: bool = False):
        self.path = Path(path)
        self.sha256 = verified_sha256(self.path, verify, require_sha256, notice)
        self.session, self.provider = create_session(str(self.path), device, threads, notice)
        self.info = SegmenterInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        ins = {i.name: i.shape for i in self.session.get_inputs()}
        outs = {o.name: o.shape for o in self.session.get_outputs()}
        if list(ins) != [SEGMENTER_INPUT] or SEGMENTER_OUTPUT not in outs:
            raise ModelError(self.path, f"segmenter inputs {list(ins)} / outputs {list(outs)}, expected input image and output lesion")
        self.size = self.info.input.size
        check_graph_shape(self.path, "input image", ins[SEGMENTER_INPUT], (None, self.size, self.size, 3), "busi.input.size")

    def probabilities(self, rgb: np.ndarray) -> np.ndarray:
        """Lesion probability (S, S) of an RGB uint8 image of any size."""
        x = resize_rgb(rgb, self.size).astype(np.float32)[None]
        return self.session.run([SEGMENTER_OUTPUT], {SEGMENTER_INPUT: x})[0][0, :, :, 0]

    def find(self, rgb: np.ndarray) -> np.ndarray | None:
        """The lesion as a bool mask at the image's size, or None when none is found."""
        return largest_component(self.probabilities(rgb), rgb.shape[:2], self.info.threshold, self.info.min_area_frac)
