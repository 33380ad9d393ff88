"""The `mask` argument of the Predictor as one typed value, read once where it comes in.

The forms (`MaskArg.of`): None (the model's default: "auto" where it has a segmenter, else
"none"), "none" (the whole image), "auto" (the lesion segmenter), a box (x, y, w, h) as a
tuple, list, 1-D array or "x,y,w,h" text, a bool/0-1/0-255 mask array, or a mask file or a
folder of `<stem>_mask*.png`. What the image itself decides (a box outside it, a mask of
another size) is checked when the mask meets the image; a value that is no mask at all is
remembered and refused for each image it is given with, as it always was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .arrays import parse_box
from .errors import BusiError, InputError, UsageError
from .masks import Box

#: mask-source names that are not a mask the user can give by name (a box comes with --roi)
MASK_SOURCE_NAMES = ("box", "roi", "gt")
KINDS = ("default", "none", "auto", "box", "array", "path", "invalid")


def source_name_hint(name: str) -> str:
    return (f"--mask {name}: not a mask file or folder; give a lesion box with --roi x,y,w,h (image pixels), "
            "or --mask FILE|FOLDER (lesion masks), auto (the lesion segmenter) or none (the whole image)")


@dataclass(frozen=True, eq=False)
class MaskArg:
    kind: str  # one of KINDS
    box: Box | None = None
    array: np.ndarray | None = None
    path: Path | None = None
    #: kind "invalid": the error for an image path (None for arrays and bytes)
    problem: Callable[[str | None], BusiError] | None = None

    @classmethod
    def of(cls, mask: Any) -> "MaskArg":
        if isinstance(mask, MaskArg):
            return mask
        if mask is None:
            return cls("default")
        if isinstance(mask, str) and mask in MASK_SOURCE_NAMES:
            return cls("invalid", problem=lambda path: UsageError(source_name_hint(mask)))
        if isinstance(mask, str) and mask in ("none", "auto"):
            return cls(mask)
        if (isinstance(mask, (tuple, list)) or (isinstance(mask, np.ndarray) and mask.ndim == 1)
                or (isinstance(mask, str) and "," in mask and not Path(mask).exists())):
            try:
                return cls("box", box=parse_box(mask))
            except InputError as e:  # named without the image, as parse_box names it
                problem = e.problem
                return cls("invalid", problem=lambda path: InputError(None, problem))
        if not isinstance(mask, (np.ndarray, str, os.PathLike)):
            what = type(mask).__name__
            return cls("invalid", problem=lambda path: InputError(
                path, f"mask must be None, 'none', 'auto', a box (x, y, w, h), a mask array or a mask file or folder "
                      f"path, got {what}"))
        if isinstance(mask, str) and not mask.strip():
            return cls("invalid", problem=lambda path: InputError(path, "mask path is empty"))
        if isinstance(mask, np.ndarray):
            return cls("array", array=mask)
        return cls("path", path=Path(mask))

    def __repr__(self) -> str:
        value = {"box": self.box, "path": self.path}.get(self.kind)
        return f"MaskArg({self.kind}{'' if value is None else f', {value}'})"
