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


def _toy_features(rng, n=300, d=6):
    """Three Gaussian classes sharing one (non-diagonal) covariance."""
    a = rng.normal(size=(d, d))
    cov = a @ a.T + 0.5 * np.eye(d)
    means = rng.normal(0, 3, (3, d))
    y = rng.integers(0, 3, n)
    x = means[y] + rng.multivariate_normal(np.zeros(d), cov, n)
    return x, y, means, cov


@pytest.mark.parametrize("n,d", [(300, 6), (24, 40)], ids=["more images than features", "fewer (as real BUSI: 543 x 2048)"])
def test_ood_score_is_the_mahalanobis_distance_to_the_nearest_class_mean(n, d):
    """With every direction but one kept exactly (the last one is then the pooled rest), the
    guard's score equals the squared Mahalanobis distance under the Ledoit-Wolf covariance,
    computed independently with scipy and minimised over the classes; also with fewer images
    than features, where the covariance's eigenvectors come from the features' SVD."""
    from scipy.spatial.distance import mahalanobis
    from sklearn.covariance import LedoitWolf

    from busi.runtime.ood import ood_scores
    from busi.train.ood import fit_statistics

    rng = np.random.default_rng(7)
    x, y, _, _ = _toy_features(rng, n=n, d=d)
    stats = fit_statistics(x, y, rank=x.shape[1] - 1)
    mu = np.stack([x[y == c].mean(0) for c in range(3)])
    inv = np.linalg.inv(LedoitWolf(assume_centered=True).fit(x - mu[y]).covariance_)
    probe = rng.normal(0, 6, (25, x.shape[1]))
    expect = [min(mahalanobis(p, m, inv) ** 2 for m in mu) for p in probe]
    np.testing.assert_allclose(ood_scores(stats, probe), expect, rtol=1e-4)
    assert stats.component_array.shape == (d, min(n, d - 1)) and stats.mean_array.shape == (3, d)


def test_ood_auroc_and_flag_rate_on_a_toy_feature_set():
    """AUROC by counting pairs (Mann-Whitney), the flag rate by hand, the threshold as the
    validation quantile; a shifted set scores far above the in-distribution one."""
    from busi.runtime.ood import ood_scores
    from busi.train.ood import fit_guard_from_features, guard_metrics

    rng = np.random.default_rng(3)
    x, y, means, cov = _toy_features(rng, n=600)
    train, val, test = x[:300], x[300:450], x[450:]
    guard = fit_guard_from_features({"box": train}, y[:300], {"box": val}, rank=3, quantile=0.95)
    stats = guard.sources["box"]
    assert guard.thresholds["box"] == pytest.approx(np.quantile(ood_scores(stats, val), 0.95))
    far = rng.normal(0, 1, (80, 6)) + 12.0
    near = means[rng.integers(0, 3, 80)] + rng.multivariate_normal(np.zeros(6), 2.5 * cov, 80)
    got = guard_metrics(guard, "box", "box", test, {"far": far, "near": near, "missing": None})
    s_in = ood_scores(stats, test)
    for name, s in (("far", far), ("near", near)):
        s_out = ood_scores(stats, s)
        pairs = (s_out[:, None] > s_in[None, :]).sum() + 0.5 * (s_out[:, None] == s_in[None, :]).sum()
        assert got[f"ood_auroc_{name}"] == pytest.approx(pairs / (len(s_in) * len(s_out)))
        assert got[f"ood_flagged_{name}"] == pytest.approx(np.mean(s_out > guard.thresholds["box"]))
    assert got["ood_flagged"] == pytest.approx(np.mean(s_in > guard.thresholds["box"]))
    assert got["ood_auroc_far"] == 1.0 and 0.6 < got["ood_auroc_near"] < 1.0
    assert got["ood_flagged"] < 0.15 and got["ood_auroc_missing"] is None
    # auto (or any source without its own threshold) uses the trained source's
    assert guard.stats("auto", "box") is stats


def test_ood_guard_round_trips_and_refuses_damaged_arrays():
    import base64

    from busi.runtime.contract import OodGuard
    from busi.runtime.errors import ModelError
    from busi.train.ood import fit_guard_from_features

    rng = np.random.default_rng(5)
    x, y, _, _ = _toy_features(rng)
    guard = fit_guard_from_features({"gt": x, "box": x + 1, "none": x * 2}, y,
                                    {"gt": x[:50], "box": x[50:100] + 1, "none": x[100:150] * 2}, rank=4)
    assert OodGuard.from_json(guard.to_json()) == guard and set(guard.thresholds) == {"gt", "box", "none"}
    box = guard.sources["box"]
    bad = np.frombuffer(base64.b64decode(box.variances), "<f4").copy()
    bad[0] = np.inf
    for key, value, says in (("components", box.variances, "float32 values, expected 24"),
                             ("variances", "not base64!", "not valid base64"),
                             ("variances", box.means, "expected 4"),
                             ("variances", base64.b64encode(bad.tobytes()).decode(), "not finite"),
                             ("residual_variance", float("nan"), "finite"),
                             ("threshold", -1.0, "below 0")):
        damaged = {**guard.to_json(), "sources": {**guard.to_json()["sources"], "box": {**box.to_json(), key: value}}}
        with pytest.raises(ModelError, match=says):
            OodGuard.from_json(damaged, "m.onnx")
    with pytest.raises(ModelError, match="expected mask sources"):
        OodGuard.from_json({**guard.to_json(), "sources": {"photo": box.to_json()}}, "m.onnx")
