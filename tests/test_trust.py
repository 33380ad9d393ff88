"""The numbers behind trustworthy outputs, each against an independent computation: the
prior shift by hand, conformal coverage on synthetic scores with a known answer, the BI-RADS
band edges, temperature scaling against a softmax of scaled logits."""

from __future__ import annotations

import numpy as np
import pytest

from busi.runtime.calibration import apply_temperature
from busi.runtime.errors import UsageError
from busi.runtime.trust import conformal_threshold, likelihood_band, parse_prevalence, prediction_set, prior_shift


def test_temperature_scaling_of_probabilities_is_softmax_of_scaled_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (50, 3))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for T in (0.5, 1.0, 2.7):
        z = logits / T
        expect = np.exp(z - z.max(1, keepdims=True))
        expect /= expect.sum(1, keepdims=True)
        np.testing.assert_allclose(apply_temperature(p, T), expect, atol=1e-12)
        assert (apply_temperature(p, T).argmax(1) == p.argmax(1)).all()


def test_prior_shift_by_hand():
    # trained on 1/3 each; a site with 2 % malignant, 18 % benign, 80 % normal
    p = {"normal": 0.2, "benign": 0.3, "malignant": 0.5}
    trained = {c: 1 / 3 for c in p}
    site = {"normal": 0.8, "benign": 0.18, "malignant": 0.02}
    w = {"normal": 0.2 * 0.8 * 3, "benign": 0.3 * 0.18 * 3, "malignant": 0.5 * 0.02 * 3}  # 0.48, 0.162, 0.03
    total = 0.48 + 0.162 + 0.03
    got = prior_shift(p, trained, site)
    assert got == pytest.approx({c: w[c] / total for c in w})
    assert got["malignant"] == pytest.approx(0.03 / 0.672)
    assert prior_shift(p, trained, trained) == pytest.approx(p)  # the training mix changes nothing


def test_parse_prevalence_shares_the_rest_as_in_training():
    got = parse_prevalence("malignant=0.02", {"normal": 0.2, "benign": 0.5, "malignant": 0.3})
    assert got == pytest.approx({"normal": 0.98 * 0.2 / 0.7, "benign": 0.98 * 0.5 / 0.7, "malignant": 0.02})
    assert parse_prevalence("malignant=0.1,benign=0.3,normal=0.6") == pytest.approx({"normal": 0.6, "benign": 0.3, "malignant": 0.1})
    for bad in ("malignant=2", "cancer=0.1", "malignant=0.6,benign=0.5", "malignant", "malignant=x"):
        with pytest.raises(UsageError):
            parse_prevalence(bad)


def test_band_edges_follow_birads_likelihood_ranges():
    cases = {0.0: "3", 0.02: "3", 0.0201: "4A", 0.10: "4A", 0.1001: "4B", 0.5: "4B", 0.5001: "4C", 0.9499: "4C",
             0.95: "5", 1.0: "5"}
    assert {p: likelihood_band(p)[0] for p in cases} == cases


def test_conformal_sets_cover_as_promised_on_synthetic_scores():
    """Scores exchangeable with the test's: split conformal covers at least 1 - a, and at most
    1 - a + 1/(n + 1), on average over many draws (the known answer)."""
    rng = np.random.default_rng(1)
    n, coverage, hits = 40, 0.9, []
    for _ in range(3000):
        cal = rng.uniform(0, 1, n)
        test = rng.uniform(0, 1)
        hits.append(test <= conformal_threshold(cal, coverage))
    rate = np.mean(hits)
    assert 0.9 - 0.015 <= rate <= 0.9 + 1 / (n + 1) + 0.015
    # the threshold is the ceil((n + 1)(1 - a))-th smallest score; too few scores: every class
    assert conformal_threshold([0.1, 0.2, 0.3, 0.4], 0.5) == 0.3
    assert conformal_threshold([0.1, 0.2], 0.9) == 1.0
    p = {"normal": 0.05, "benign": 0.55, "malignant": 0.40}
    assert prediction_set(p, 0.5) == ["benign"] and prediction_set(p, 0.61) == ["benign", "malignant"]
    assert prediction_set(p, 1.0) == ["benign", "malignant", "normal"]
