"""Fitting the temperature on validation (the runtime applies it: busi.runtime.calibration).

The validation split is cut in two, stratified and seeded: the first half fits T, the second
is kept apart for anything that must not be fitted on the same scores (conformal prediction
sets need calibrated scores they have not seen)."""

from __future__ import annotations

import numpy as np

from busi.runtime.calibration import apply_temperature
from busi.runtime.contract import Calibration

from .metrics import nll

T_RANGE = (0.05, 20.0)


def split_validation(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration indices, held-back indices): half of each class in each, seeded."""
    rng = np.random.default_rng([seed, 17])
    first, second = [], []
    for c in np.unique(y):
        ix = rng.permutation(np.flatnonzero(y == c))
        half = (len(ix) + 1) // 2
        first += ix[:half].tolist()
        second += ix[half:].tolist()
    return np.array(sorted(first), int), np.array(sorted(second), int)


def fit_temperature(y: np.ndarray, p_raw: np.ndarray) -> Calibration:
    """T minimising the NLL of softmax(log p / T) (bounded search over log T)."""
    from scipy.optimize import minimize_scalar

    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    f = lambda lt: nll(y, apply_temperature(p_raw, np.exp(lt)))  # noqa: E731
    res = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    # bounded Brent never evaluates the bounds themselves: an optimum at a bound (a model far
    # from calibrated) would otherwise stop just short of it
    t = float(np.exp(min((res.x, lo, hi), key=f)))
    return Calibration(temperature=t, n=int(len(y)), nll_before=nll(y, p_raw), nll_after=nll(y, apply_temperature(p_raw, t)))
