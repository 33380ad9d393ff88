"""What makes a probability usable: likelihood bands aligned with BI-RADS, the site's case mix
(prior shift), and conformal prediction sets. numpy only: training stores the numbers (the
training prevalence, the held-back validation scores), the runtime applies them.
"""

from __future__ import annotations

import math
from typing import Sequence

from .contract import CLASSES
from .errors import UsageError

#: BI-RADS likelihood-of-malignancy ranges: (upper bound, category, range as printed)
BANDS = ((0.02, "3", "<= 2 %"), (0.10, "4A", "2-10 %"), (0.50, "4B", "10-50 %"), (0.95, "4C", "50-95 %"),
         (1.0, "5", ">= 95 %"))
BAND_LABEL = "likelihood band aligned with BI-RADS (a probability range, not a BI-RADS assessment)"


def likelihood_band(p_malignant: float) -> tuple[str, str]:
    """(category, range) of a P(malignant): <= 2 % '3', 2-10 % '4A', 10-50 % '4B',
    50-95 % '4C', >= 95 % '5'."""
    p = float(p_malignant)
    if p >= 0.95:
        return "5", BANDS[-1][2]
    for hi, cat, text in BANDS[:-1]:
        if p <= hi:
            return cat, text
    return "4C", BANDS[3][2]


def prior_shift(p: dict[str, float], trained: dict[str, float], site: dict[str, float]) -> dict[str, float]:
    """Bayes' prior shift: p_site(c | x) proportional to p(c | x) * site(c) / trained(c)."""
    w = {c: p[c] * site[c] / trained[c] for c in p}
    total = sum(w.values())
    return {c: v / total for c, v in w.items()}


def parse_prevalence(text: str, trained: dict[str, float] | None = None) -> dict[str, float]:
    """'malignant=0.02' or 'malignant=0.02,benign=0.1,normal=0.88' -> {class: fraction}. Classes
    left out share the rest in the proportions of the training prevalence (or equally)."""
    given: dict[str, float] = {}
    for part in filter(None, (x.strip() for x in str(text).split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in CLASSES or not value:
            raise UsageError(f"--prevalence: {part!r} is not class=fraction (classes: {', '.join(CLASSES)})")
        try:
            v = float(value)
        except ValueError:
            raise UsageError(f"--prevalence: {value!r} is not a number") from None
        if not 0 < v < 1 or not math.isfinite(v):
            raise UsageError(f"--prevalence: {name}={v} must lie strictly between 0 and 1")
        given[name] = v
    rest = [c for c in CLASSES if c not in given]
    left = 1.0 - sum(given.values())
    if not given or (rest and left <= 0) or (not rest and abs(left) > 1e-6):
        raise UsageError(f"--prevalence: {text!r} must give fractions that leave room for the other classes and sum to 1")
    base = {c: (trained or {}).get(c, 1.0) for c in rest}
    norm = sum(base.values()) or 1.0
    return {c: given.get(c, left * base.get(c, 0.0) / norm) for c in CLASSES}


def conformal_threshold(scores: Sequence[float], coverage: float) -> float:
    """Split conformal (LAC): the ceil((n + 1) * coverage)-th smallest held-out score; 1.0 (every
    class) when n is too small for that coverage."""
    n = len(scores)
    k = math.ceil((n + 1) * coverage)
    return 1.0 if k > n else float(sorted(scores)[k - 1])


def model_qhat(conformal, coverage: float | None = None) -> float | None:
    """The set threshold of a model's stored conformal scores, at `coverage` (default: the
    model's own); None for a model without them."""
    if conformal is None:
        return None
    return conformal_threshold(conformal.scores, conformal.coverage if coverage is None else coverage)


def prediction_set(p: dict[str, float], qhat: float) -> list[str]:
    """Every class whose nonconformity 1 - p(class) is at most qhat, most probable first."""
    return [c for c in sorted(p, key=p.get, reverse=True) if 1.0 - p[c] <= qhat + 1e-12]
