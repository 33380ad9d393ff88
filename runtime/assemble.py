"""`ResultAssembler`: a prepared image and the model's outputs for it -> a typed `Prediction`.

The class and confidence, the malignant flag at the operating point, the out-of-distribution
verdict (`ModelRunner.ood`), and what `runtime.trust` adds: the likelihood band of the
P(malignant) behind the flag, probabilities adjusted to a site prevalence, the conformal
prediction set. A cine loop's frames become one result here too (`aggregate`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .errors import NOT_FINITE
from .ood import NOTE as OOD_NOTE
from .results import FAILURE, PREDICTION, Prediction, Prepared, aggregate
from .runner import ModelRunner
from .trust import BAND_LABEL, likelihood_band, model_qhat, prediction_set, prior_shift


class ResultAssembler:
    def __init__(self, runner: ModelRunner, threshold: float, provider: str, sha256: str | None,
                 site_prevalence: dict[str, float] | None, coverage: float | None):
        self.runner, self.info = runner, runner.info
        self.threshold, self.provider, self.sha256 = threshold, provider, sha256
        self.site_prevalence, self.coverage = site_prevalence, coverage
        self.qhat = model_qhat(self.info.conformal, coverage)

    def result(self, prep: Prepared, proba: np.ndarray, threshold: float | None, tta: bool, cam=None,
               feats: np.ndarray | None = None) -> Prediction:
        """One image's Prediction; ModelError when an output of it is not finite."""
        t = self.threshold if threshold is None else float(threshold)
        classes = self.info.classes
        k = int(np.argmax(proba))
        extras = dict(prep.view or {})
        if cam is not None:
            extras["cam"] = cam
        ood = {}
        notes = list(prep.notes)
        self.runner.check_finite(prep.path, proba=proba, features=feats, **{"Grad-CAM": cam})
        if feats is not None:  # each image against the statistics of its own mask source
            scores, limit = self.runner.ood(feats, prep.mask_source)
            score = float(scores[0])
            self.runner.check_finite(prep.path, **{"out-of-distribution score": score})
            ood = {"out_of_distribution": bool(score > limit), "ood_score": score, "ood_threshold": limit}
            if score > limit:
                notes.append(OOD_NOTE.format(score=score, threshold=limit))
        return self.trust(Prediction(
            path=prep.path,
            label=classes[k],
            confidence=float(proba[k]),
            probabilities={c: float(v) for c, v in zip(classes, proba)},
            malignant=bool(proba[classes.index("malignant")] >= t),
            threshold=t,
            mask_source=prep.mask_source,
            lesion_box=prep.lesion_box,
            provider=self.provider,
            model_sha256=self.sha256,
            calibrated=self.info.calibration is not None,
            tta=tta,
            lesion_found=prep.lesion_found,
            lesion_presence=prep.lesion_presence,
            notes=notes,
            dicom=prep.dicom,
            extras=extras,
            **ood,
        ))

    def aggregate(self, frames: list):
        """One result for a cine loop classified frame by frame (see `results.aggregate`). A
        frame with non-finite model output fails the loop: the model is damaged."""
        damaged = next((f for f in frames if f.kind == FAILURE and NOT_FINITE in f.error), None)
        if damaged is not None:
            return damaged
        out = aggregate(frames, self.info.classes)
        return self.trust(out) if out.kind == PREDICTION else out

    def trust(self, pred: Prediction) -> Prediction:
        """The likelihood band, the site-adjusted probabilities and the prediction set."""
        p_flag = pred.flag_probability
        adjusted = None
        if self.site_prevalence is not None:
            adjusted = prior_shift(pred.probabilities, self.info.prevalence, self.site_prevalence)
            if pred.cine:  # the band follows the frame behind the flag
                top = dict(pred.cine.get("max_frame_probabilities") or pred.probabilities)
                p_flag = prior_shift(top, self.info.prevalence, self.site_prevalence)["malignant"]
            else:
                p_flag = adjusted["malignant"]
        band, text = likelihood_band(p_flag)
        if self.site_prevalence is not None:
            basis = "the site prevalence given (" + ", ".join(f"{c} {v:.3g}" for c, v in self.site_prevalence.items()) + ")"
        elif self.info.prevalence is not None:
            basis = f"the training prevalence ({self.info.prevalence['malignant']:.0%} malignant; give --prevalence for a site)"
        else:
            basis = "the network's own probabilities"
        likelihood = {"band": band, "range": text, "p_malignant": float(p_flag), "prevalence": basis, "label": BAND_LABEL}
        return replace(pred, likelihood=likelihood, adjusted_probabilities=adjusted,
                       prediction_set=None if self.qhat is None else prediction_set(pred.probabilities, self.qhat),
                       coverage=self.coverage)
