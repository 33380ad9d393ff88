"""`PredictorOptions`: how a `Predictor` loads and runs its model, in one frozen value.

busi-infer, busi-node and busi-serve each build one from their command line; an embedding tool
may build one too, or pass the same names as keywords (`Predictor(path, device="cpu")` is
`Predictor(path, PredictorOptions(device="cpu"))`). Checks that need no model run here; those
that need the model's contract (a prevalence's classes) run when the Predictor loads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Mapping, Union

from .arrays import check_threshold
from .errors import UsageError
from .files import DEFAULT_MAX_BYTES
from .pixels import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from .segmenter import Segmenter


@dataclass(frozen=True)
class PredictorOptions:
    #: auto (CUDA where it really runs, else CPU) | cuda | cpu | openvino
    device: str = "auto"
    #: check the model's .sha256 sidecar when there is one
    verify: bool = True
    #: refuse a model (or segmenter) without a .sha256 sidecar
    require_sha256: bool = False
    #: refuse a model (local or served) whose sha256 is another
    expect_sha256: str | None = None
    #: ONNX Runtime intra-op threads (None or 0: all cores)
    threads: int | None = None
    #: refuse images with more pixels, before decoding (0: no limit)
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: refuse input files larger than this many bytes (0: no limit)
    max_bytes: int = DEFAULT_MAX_BYTES
    #: P(malignant) flag threshold in [0, 1] (None: the model's operating point)
    threshold: float | None = None
    #: the site's case mix, 'malignant=0.02' or {class: fraction}: adds prior-shift-adjusted
    #: probabilities and the likelihood band; the flag keeps the calibrated, unadjusted P(malignant)
    prevalence: Union[str, Mapping[str, float], None] = None
    #: coverage of the conformal prediction sets, strictly between 0 and 1 (None: the model's, 0.9)
    coverage: float | None = None
    #: the lesion segmenter for mask "auto": a path, a loaded Segmenter, or None (segmenter.onnx
    #: beside the model; the server's for a served model)
    segmenter: "str | os.PathLike | Segmenter | None" = None
    #: run the classifier (and the segmenter) on this v2 inference server ("http://host:port":
    #: busi-serve, or Triton serving busi-export --triton); decoding and the rest run here
    server: str | None = None
    #: bearer token for `server`
    token: str | None = None
    #: who receives the notices (None: the "busi" logger's warnings)
    notice: Callable[[str], None] | None = None

    def __post_init__(self):
        for what in ("threads", "max_pixels", "max_bytes"):
            value = getattr(self, what)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) and not _is_integer(value)
                                      or value < 0):
                raise UsageError(f"{what} must be a whole number, 0 or more (0: {'the default' if what == 'threads' else 'no limit'}), "
                                 f"got {value!r}")
        if self.threshold is not None:
            check_threshold(self.threshold)
        if self.coverage is not None and not (isinstance(self.coverage, (int, float)) and 0 < self.coverage < 1):
            raise UsageError(f"coverage must lie strictly between 0 and 1, got {self.coverage}")

    def replace(self, **changes) -> "PredictorOptions":
        """A copy with `changes` (the field names; another name is a TypeError that names it)."""
        return replace(self, **changes)


def _is_integer(value) -> bool:
    import numpy as np

    return isinstance(value, np.integer)
