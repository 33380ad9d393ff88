"""`ModelRunner`: a classifier's session and the contract's post-processing, in one place.

Arrays in, the numbers the contract defines out: probabilities calibrated with the model's
temperature (after TTA's average), Grad-CAM maps, the pooled features and the
out-of-distribution score against the statistics of an image's mask source; a NaN or infinity
in any of them is refused. The Predictor runs its batches through it, the INT8 gate of
`busi-export` measures the quantized file with it, and busi-serve gives it its batched session.
"""

from __future__ import annotations

import numpy as np

from .calibration import apply_temperature
from .contract import CAM_WEIGHTS_NAME, FEATURES_NAME, INPUT_NAMES, OUTPUT_NAME, ModelInfo, check_graph_shape
from .errors import NOT_FINITE, BusiError, ModelError, describe
from .ood import ood_scores, pooled


class ModelRunner:
    """A busi classifier session (ONNX Runtime, or anything with its `run`, `get_inputs`,
    `get_outputs`, `get_modelmeta`) and its contract. `info`: the contract when the session's
    file carries none of its own (a freshly quantized graph); else read from the session."""

    def __init__(self, session, path, info: ModelInfo | None = None):
        self.session, self.path = session, path
        self.info = info or ModelInfo.from_metadata(session.get_modelmeta().custom_metadata_map, str(path))
        ins = {i.name: i.shape for i in session.get_inputs()}
        outs = {o.name: o.shape for o in session.get_outputs()}
        if sorted(ins) != sorted(INPUT_NAMES) or OUTPUT_NAME not in outs:
            raise ModelError(path, f"model inputs {sorted(ins)} / outputs {list(outs)}, expected inputs image, mask and output probabilities")
        S, n = self.info.input.size, len(self.info.classes)
        check_graph_shape(path, "input image", ins["image"], (None, S, S, 3), "busi.input.size")
        check_graph_shape(path, "input mask", ins["mask"], (None, S, S, 1), "busi.input.size")
        check_graph_shape(path, "output probabilities", outs[OUTPUT_NAME], (None, n), "busi.classes")
        self.explainable = FEATURES_NAME in outs and CAM_WEIGHTS_NAME in outs
        #: the out-of-distribution guard, where the model carries one and the pooled features it needs
        self.guard = self.info.ood if FEATURES_NAME in outs else None

    def use(self, session) -> None:
        """Run through another session of the same model from now on (busi-serve's batched one)."""
        self.session = session

    def probe(self) -> None:
        """One run on a fixed input (mid-grey, the whole image as mask): a model whose outputs
        are NaN or infinite for everything (a damaged weight) is refused at load, exit 2."""
        S = self.info.input.size
        try:
            p, _, feats = self.run(np.full((1, S, S, 3), 128, np.float32), np.ones((1, S, S, 1), np.float32))
        except BusiError:
            raise
        except Exception as e:
            raise ModelError(self.path, f"cannot run the model on a test input ({describe(e)})") from None
        if not np.isfinite(p).all() or (feats is not None and not np.isfinite(feats).all()):
            raise ModelError(self.path, f"{NOT_FINITE} (NaN or infinity on a fixed test input)")

    def run(self, images: np.ndarray, masks: np.ndarray, tta: bool = False, explain: bool = False):
        """(calibrated probabilities (N, classes), Grad-CAM maps (N, h, w) of each image's
        predicted class or None, pooled features (N, D) for the out-of-distribution guard or
        None) of a batch: (N,S,S,3) float32 images, (N,S,S,1) float32 masks. Maps and features
        come from the unflipped pass."""
        if explain and not self.explainable:
            raise ModelError(self.path, "model has no Grad-CAM outputs (features, cam_weights); re-export it with busi-export")
        names = [OUTPUT_NAME] + ([FEATURES_NAME] if explain or self.guard else []) + ([CAM_WEIGHTS_NAME] if explain else [])
        outs = dict(zip(names, self.session.run(names, {"image": images, "mask": masks})))
        p = outs[OUTPUT_NAME]
        if p.ndim != 2 or p.shape != (len(images), len(self.info.classes)):  # a symbolic width that lied
            raise ModelError(self.path, f"output probabilities has shape {p.shape}, expected ({len(images)}, {len(self.info.classes)})")
        if tta:
            p2 = self.session.run([OUTPUT_NAME], {"image": images[:, :, ::-1].copy(), "mask": masks[:, :, ::-1].copy()})[0]
            p = (p + p2) / 2
        if self.info.calibration is not None:
            p = apply_temperature(p, self.info.calibration.temperature).astype(np.float32)
        feats = pooled(outs[FEATURES_NAME]) if self.guard else None
        if not explain:
            return p, None, feats
        from .gradcam import grad_cam

        cams = np.stack([grad_cam(outs[FEATURES_NAME][i], outs[CAM_WEIGHTS_NAME][i], int(np.argmax(p[i])))
                         for i in range(len(p))])
        return p, cams, feats

    def ood(self, features: np.ndarray, mask_source: str) -> tuple[np.ndarray, float]:
        """(out-of-distribution scores (N,), the threshold) of pooled features (N, D) of images
        with `mask_source`, against that source's statistics (`OodGuard.stats`)."""
        stats = self.guard.stats(mask_source, self.info.mask.source)
        return ood_scores(stats, np.atleast_2d(features)), float(stats.threshold)

    def check_finite(self, label: str | None, **outputs) -> None:
        """ModelError naming the image and the model when an output holds NaN or infinity."""
        bad = [what.replace("proba", "probabilities") for what, v in outputs.items()
               if v is not None and not np.isfinite(v).all()]
        if bad:
            raise ModelError(label or "image", f"{NOT_FINITE} ({' and '.join(bad)} of {self.path})")
