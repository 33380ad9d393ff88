"""`busi-train fit` end to end on phantoms: the files it writes, and that every figure in
report.json recomputes independently from predictions.csv; a killed run resumes."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from helpers import BIN, cli
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve

from busi.runtime.card import ModelCard
from busi.runtime.contract import BOX_MARGIN, CLASSES, CONTRACT_VERSION


def read_predictions(model_dir):
    with open(model_dir / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows


def arrays(rows):
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    P = np.array([[float(r["p_normal"]), float(r["p_benign"]), float(r["p_malignant"])] for r in rows])
    return y, P


def test_fit_writes_the_model_folder(trained):
    for name in ("model.keras", "card.json", "manifest.csv", "history.csv", "predictions.csv", "report.json",
                 "report.md", "confusion_matrix.png", "roc.png", "reliability.png", "training_curves.png",
                 "segmenter.keras", "segmenter.json", "segmentation.csv"):
        assert (trained / name).is_file() and (trained / name).stat().st_size > 0, name
    assert not (trained / ".backup").exists()
    assert not [p for p in trained.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    raw = json.loads((trained / "card.json").read_text())
    assert raw["contract_version"] == CONTRACT_VERSION and raw["mask"]["source"] == "box"
    card = ModelCard.load(trained / "card.json")
    assert card.to_json() == raw  # the typed card is the whole file
    assert card.info.mask.source == "box" and card.info.mask.box_margin == BOX_MARGIN
    assert card.training["weights"] == "none" and card.info.input.size == 64
    assert "not a medical device" in " ".join(card.not_for)
    history = list(csv.DictReader(open(trained / "history.csv")))
    assert [int(h["epoch"]) for h in history] == [0, 1]
    md = (trained / "report.md").read_text()
    assert "| metric | gt | box (trained) | none | auto |" in md


def test_every_report_figure_recomputes_from_predictions_csv(trained):
    report = json.loads((trained / "report.json").read_text())
    rows = read_predictions(trained)
    manifest = {r["path"]: r for r in csv.DictReader(open(trained / "manifest.csv"))}
    # the operating point: highest threshold reaching sensitivity 0.95 on validation
    val = [r for r in rows if r["split"] == "val"]
    assert val and all(manifest[r["path"]]["split"] == "val" for r in val)
    yv, Pv = arrays(val)
    # calibration: calibrated = softmax(log raw / T) on every row; T no worse than a grid search
    # over the validation images it was fitted on; the operating point on calibrated values
    T = report["calibration"]["temperature"]
    for r in rows:
        z = np.log(np.clip([float(r[f"p_{c}_raw"]) for c in CLASSES], 1e-30, 1)) / T
        expect = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        assert np.allclose([float(r[f"p_{c}"]) for c in CLASSES], expect, atol=1e-9)
    fit = [r for r in val if r["calibration"] == "fit"]
    assert len(fit) == report["calibration"]["n"] and len(val) - len(fit) == report["calibration"]["validation_held_back"]
    yf = np.array([CLASSES.index(r["label"]) for r in fit])
    Rf = np.array([[float(r[f"p_{c}_raw"]) for c in CLASSES] for r in fit])

    def nll_at(t):
        z = np.log(np.clip(Rf, 1e-30, 1)) / t
        z -= z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return -logp[np.arange(len(yf)), yf].mean()

    grid = min(nll_at(t) for t in np.exp(np.linspace(np.log(0.05), np.log(20), 4001)))
    assert nll_at(T) <= grid + 1e-6 and np.isclose(report["calibration"]["nll_after"], nll_at(T), atol=1e-9)
    op = report["operating_point"]
    if op["estimated"]:
        fpr, tpr, thr = roc_curve(yv == 2, Pv[:, 2], drop_intermediate=False)
        assert np.isclose(op["malignant_threshold"], min(1.0, thr[np.argmax(tpr >= 0.95)]))
    t = op["malignant_threshold"]
    assert set(report["mask_sources"]) == {"gt", "box", "none", "auto"}
    for src, m in report["mask_sources"].items():
        test = [r for r in rows if r["split"] == "test" and r["mask_source"] == src]
        assert all(manifest[r["path"]]["split"] == "test" for r in test)  # only unseen data
        y, P = arrays(test)
        pred = P.argmax(1)
        assert m["n"] == len(y) == sum(r["split"] == "test" for r in manifest.values())
        assert np.isclose(m["accuracy"], (pred == y).mean())
        assert np.isclose(m["balanced_accuracy"], balanced_accuracy_score(y, pred))
        cm = np.zeros((3, 3), int)
        for a, b in zip(y, pred):
            cm[a, b] += 1
        assert m["confusion_matrix"] == cm.tolist()
        if len(set(y)) == 3:
            assert np.isclose(m["macro_auc"], np.mean([roc_auc_score(y == c, P[:, c]) for c in range(3)]))
        flag = P[:, 2] >= t
        if (y == 2).any():
            assert np.isclose(m["malignant_sensitivity"], flag[y == 2].mean())
        assert np.isclose(m["malignant_specificity"], (~flag[y != 2]).mean())
        for c, name in enumerate(CLASSES):
            tp = ((pred == c) & (y == c)).sum()
            assert m["per_class"][name]["support"] == (y == c).sum()
            assert np.isclose(m["per_class"][name]["recall"], tp / max(1, (y == c).sum()))
            assert np.isclose(m["per_class"][name]["precision"], tp / max(1, (pred == c).sum()))
        # ECE: 15 equal-width bins of top-label confidence
        conf, correct = P.max(1), pred == y
        ece = 0.0
        for lo, hi in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:]):
            sel = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
            if sel.any():
                ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
        assert np.isclose(m["ece"], ece)
        onehot = np.eye(3)[y]
        assert np.isclose(m["brier"], np.mean(np.sum((P - onehot) ** 2, 1)))
        assert np.isclose(m["nll"], -np.mean(np.log(np.clip(P[np.arange(len(y)), y] / P.sum(1), 1e-15, 1))), atol=1e-6)
        R = np.array([[float(r[f"p_{c}_raw"]) for c in CLASSES] for r in test])
        assert np.isclose(m["brier_raw"], np.mean(np.sum((R - onehot) ** 2, 1)))
        assert (R.argmax(1) == pred).all()  # temperature scaling never changes the class
        # bootstrap: 1000 case resamples from default_rng(seed), percentile interval
        rng = np.random.default_rng(0)
        accs = []
        for _ in range(1000):
            ix = rng.integers(0, len(y), len(y))
            accs.append((pred[ix] == y[ix]).mean())
        assert np.allclose(m["ci95"]["accuracy"], np.percentile(accs, [2.5, 97.5]))
        assert m["ci95"]["accuracy"][0] <= m["accuracy"] <= m["ci95"]["accuracy"][1]


def test_bootstrap_resamples_use_figures_equal_to_scikit_learns():
    """The bootstrap's fast figures are scikit-learn's (balanced accuracy, macro one-vs-rest AUC
    with ties, sensitivity and specificity) on resamples that lose classes, as small ones do."""
    import warnings

    from busi.train.metrics import fast_point_metrics, point_metrics

    rng = np.random.default_rng(7)
    for trial in range(400):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, int(rng.integers(1, 4)), n)
        p = rng.dirichlet(np.ones(3), n)
        p = np.round(p, 1) / np.round(p, 1).sum(1, keepdims=True) if trial % 2 else p  # ties
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = point_metrics(y, p, 0.3)
        got = fast_point_metrics(y, p, 0.3)
        assert got.keys() == want.keys()
        for k, v in want.items():
            assert (got[k] is None) == (v is None) and (v is None or np.isclose(got[k], v, rtol=0, atol=1e-12)), (k, y, p)


def test_readme_table_comes_from_the_report(trained, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\nend\n")
    r = cli("busi-train", "report", trained, "--readme", readme)
    text = readme.read_text()
    assert "old" not in text and r.stdout.strip() in text and text.startswith("intro") and text.endswith("end\n")
    assert f"`busi-train report {trained} --readme {readme}`" in text  # the command shown writes this very file
    acc = json.loads((trained / "report.json").read_text())["mask_sources"]["box"]["accuracy"]
    assert f"{acc:.3f}" in text


def test_recipes_compare_on_validation_and_test_from_their_own_files(trained, tmp_path):
    """`busi-train compare`: the validation balanced accuracy recomputes (sklearn) from each
    folder's predictions.csv, the test figures are report.json's; folders of another split are
    refused."""
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- real:start -->\nstale table\n<!-- real:end -->\nb\n")
    r = cli("busi-train", "compare", trained, trained, "--readme", readme, "--block", "real")
    text = readme.read_text()
    assert "stale table" not in text and r.stdout.strip() in text and text.endswith("b\n")
    assert f"--readme {readme} --block real`" in text  # the command shown writes this very file
    rows = [x for x in read_predictions(trained) if x["split"] == "val" and x["mask_source"] == "box"]
    y, P = arrays(rows)
    val_row = next(ln for ln in text.splitlines() if ln.startswith("| validation: balanced accuracy"))
    assert val_row.count(f"{balanced_accuracy_score(y, P.argmax(1)):.3f}") == 2
    box = json.loads((trained / "report.json").read_text())["mask_sources"]["box"]
    test_row = next(ln for ln in text.splitlines() if ln.startswith("| test: balanced accuracy"))
    assert f"{box['balanced_accuracy']:.3f} [{box['ci95']['balanced_accuracy'][0]:.2f}" in test_row
    losses = [float(x["val_loss"]) for x in csv.DictReader((trained / "history.csv").open())]
    epochs_row = next(ln for ln in text.splitlines() if ln.startswith("| epochs run (best kept)"))
    assert epochs_row.count(f" {len(losses)} ({int(np.argmin(losses)) + 1}) |") == 2  # what early stopping kept
    other = tmp_path / "other"
    other.mkdir()
    for name in ("report.json", "card.json", "predictions.csv"):
        (other / name).write_bytes((trained / name).read_bytes())
    rep = json.loads((other / "report.json").read_text())
    (other / "report.json").write_text(json.dumps({**rep, "data_fingerprint": "another split"}))
    r = cli("busi-train", "compare", trained, other, check=False)
    assert r.returncode == 2 and "different data or splits" in r.stderr


@pytest.mark.slow
def test_a_killed_run_resumes_and_its_cross_validated_operating_point_recomputes(phantoms, tmp_path):
    """A run with `--cv 2` killed as hard as a power cut after its first epoch resumes where it
    was. Then the folds: every train + validation image gets one out-of-fold prediction (in
    predictions.csv, split cv), and the threshold is the one sklearn's ROC curve gives on them
    for the target sensitivity; the report says how it was chosen and what validation alone
    gave. (One test: each `busi-train fit` costs a minute of the suite.)"""
    out = tmp_path / "resume"
    cmd = [str(BIN / "busi-train"), "fit", "--data", str(phantoms), "--out", str(out), "--weights", "none",
           "--image-size", "32", "--epochs", "3", "--batch-size", "16", "--no-augment", "--cv", "2", "--near-ood", "none"]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    deadline = time.time() + 600
    for line in p.stderr:
        lines.append(line)
        if line.startswith("epoch 1/3"):
            os.killpg(p.pid, signal.SIGKILL)  # as hard as a power cut
            break
        assert time.time() < deadline
    p.wait()
    assert p.returncode == -signal.SIGKILL, "".join(lines)
    assert (out / ".backup" / "state").is_dir() and not (out / "model.keras").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming the interrupted run" in r.stderr
    epochs = [ln.split()[1] for ln in r.stderr.splitlines() if ln.startswith("epoch ")]
    assert epochs == ["2/3", "3/3"], r.stderr[-2000:]
    native = [ln for ln in r.stderr.splitlines() if re.match(r"[EWIF]\d{4} ", ln)]  # absl lines from TensorFlow's C++
    assert not native, native
    history = list(csv.DictReader(open(out / "history.csv")))
    assert [int(h["epoch"]) for h in history] == [0, 1, 2]
    assert (out / "model.keras").is_file() and not (out / ".backup").exists()

    rep = json.loads((out / "report.json").read_text())
    op, cv = rep["operating_point"], rep["cross_validation"]
    manifest = list(csv.DictReader((out / "manifest.csv").open()))
    pool = sorted(r["path"] for r in manifest if r["split"] in ("train", "val"))
    rows = [r for r in csv.DictReader((out / "predictions.csv").open()) if r["split"] == "cv"]
    assert sorted(r["path"] for r in rows) == pool and cv["n"] == len(pool) and cv["folds"] == 2
    y = np.array([r["label"] == "malignant" for r in rows])
    p_mal = np.array([float(r["p_malignant"]) for r in rows])
    fpr, tpr, thr = roc_curve(y, p_mal, drop_intermediate=False)
    assert op["malignant_threshold"] == pytest.approx(min(1.0, thr[np.flatnonzero(tpr >= 0.95)[0]]))
    assert cv["n_malignant"] == int(y.sum()) and op["method"].startswith("2-fold cross-validation")
    assert "validation_operating_point" in cv and "2-fold cross-validation" in (out / "report.md").read_text()
    # whether the target is certified: the exact one-sided lower bound of the out-of-fold
    # sensitivity, in the report and in a results block written from it
    from scipy.stats import beta

    found, n = int((p_mal[y] >= op["malignant_threshold"]).sum()), int(y.sum())
    low = beta.ppf(0.05, found, n - found + 1) if found else 0.0
    said = f"finds {found} of the {n} malignant images (sensitivity {found / n:.3f}, one-sided 95 % Clopper-Pearson lower bound {low:.3f})"
    assert said in (out / "report.md").read_text()
    block = tmp_path / "block.md"
    block.write_text("<!-- cv:start -->\n<!-- cv:end -->\n")
    cli("busi-train", "report", out, "--readme", block, "--block", "cv")
    text = block.read_text()
    assert said in text and f"P(malignant) >= {op['malignant_threshold']:.4f}" in text
    assert ("is certified" if low >= 0.95 else "is **not certified**") in text
    card = json.loads((out / "card.json").read_text())
    assert card["operating_point"]["malignant_threshold"] == op["malignant_threshold"]
    assert card["operating_point"]["method"] == op["method"]
    r = cli("busi-train", "fit", "--data", phantoms, "--out", tmp_path / "x", "--cv", 1, check=False)
    assert r.returncode == 2 and "--cv 1" in r.stderr
