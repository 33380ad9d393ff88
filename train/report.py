"""Write predictions.csv, report.json, report.md and the plots; update a results table in a Markdown file (docs/results.md)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np

from busi.runtime.atomic import atomic_write_bytes, atomic_write_text
from busi.runtime.contract import CLASSES, MALIGNANT

from .dataset import csv_text

PRED_FIELDS = ("path", "label", "split", "mask_source", "p_normal", "p_benign", "p_malignant",
               "p_normal_raw", "p_benign_raw", "p_malignant_raw", "calibration", "needs_roi")
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


def predictions_csv(rows: list[dict]) -> str:
    """Probabilities at full precision (repr round-trips), so every figure of the report
    recomputes from this file exactly, ties included."""
    return csv_text(rows, PRED_FIELDS)


def prediction_rows(paths: list[str], y: np.ndarray, proba: np.ndarray, split: str, source: str,
                    raw: np.ndarray | None = None, roles: list[str] | None = None,
                    needs_roi: np.ndarray | None = None) -> list[dict]:
    """One row per image: the probabilities the figures use (calibrated), the network's own
    (`_raw`) they came from, for validation images whether the temperature was fitted on
    them (`calibration`: fit / held_back), and for mask source auto whether the runtime
    abstains on the image (`needs_roi` 1: its probabilities are those of the guessed box,
    which the runtime does not report)."""
    raw = proba if raw is None else raw
    roles = roles or [""] * len(paths)
    roi = [""] * len(paths) if needs_roi is None else [int(v) for v in needs_roi]
    return [
        {"path": p, "label": CLASSES[int(t)], "split": split, "mask_source": source,
         **{f"p_{c}": float(pr[i]) for i, c in enumerate(CLASSES)},
         **{f"p_{c}_raw": float(rr[i]) for i, c in enumerate(CLASSES)}, "calibration": role, "needs_roi": n}
        for p, t, pr, rr, role, n in zip(paths, y, proba, raw, roles, roi)
    ]


def fmt(v, ci=None) -> str:
    if v is None:
        return "n/a"
    s = f"{v:.3f}"
    if ci:
        s += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return s


def results_table(report: dict) -> str:
    """Markdown table of the mask sources side by side (from report.json only)."""
    srcs = report["mask_sources"]
    names = list(srcs)
    trained = report.get("trained_mask_source")
    head = "| metric | " + " | ".join(f"{n}{' (trained)' if n == trained else ''}" for n in names) + " |"
    lines = [head, "|---|" + "---|" * len(names)]
    for key, label in (
        ("n", "test images"),
        ("accuracy", "accuracy"),
        ("balanced_accuracy", "balanced accuracy"),
        ("macro_auc", "macro AUC (one-vs-rest)"),
        ("malignant_sensitivity", "malignant sensitivity @ op. point"),
        ("malignant_specificity", "malignant specificity @ op. point"),
        ("ece", "expected calibration error (calibrated)"),
        ("ece_raw", "ECE before calibration"),
        ("nll", "negative log-likelihood"),
        ("brier", "Brier score"),
        ("coverage", f"coverage of the {report.get('conformal', {}).get('coverage', 0.9):.0%} prediction sets"),
        ("set_size", "mean prediction-set size"),
        ("ood_flagged", "flagged out-of-distribution (these images)"),
        ("ood_auroc_far", "OOD AUROC, far (CT, MR, non-images)"),
        ("ood_auroc_near", f"OOD AUROC, near ({_near_name(report)})"),
        ("abstained", "auto: abstained (needs an ROI)"),
        ("n_kept", "auto: images classified"),
        ("accuracy_kept", "auto: accuracy on the images classified"),
        ("balanced_accuracy_kept", "auto: balanced accuracy on the images classified"),
        ("malignant_sensitivity_kept", "auto: malignant sensitivity on the images classified"),
    ):
        if key.endswith("_kept") or key == "abstained":
            if not any(key in srcs[n] for n in names):
                continue
        cells = []
        for n in names:
            m = srcs[n]
            v = m.get(key)
            cells.append(("" if v is None else str(v)) if key in ("n", "n_kept") else
                         "" if key not in m and (key.endswith("_kept") or key == "abstained") else fmt(v, m["ci95"].get(key)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _near_name(report: dict) -> str:
    what = (report.get("ood") or {}).get("sets", {}).get("near", "none")
    return "none given" if what.startswith("none") else what


def _cv_sentence(report: dict) -> str:
    cv = report.get("cross_validation")
    if not cv:
        return ""
    from .metrics import sensitivity_lower_bound

    op, val = report["operating_point"], cv["validation_operating_point"]["malignant_threshold"]
    n = cv["n_malignant"]
    found = round(op["validation_sensitivity"] * n)  # the out-of-fold sensitivity is found / n
    low = sensitivity_lower_bound(found, n)
    verdict = "certified" if low >= op["target_sensitivity"] else "**not certified**"
    return (f" The out-of-fold predictions cover {cv['n']} images, {n} of them malignant; the "
            f"{cv['folds']} extra fits took {cv['seconds']:.0f} s. The validation split alone would have chosen {val:.4f}. "
            f"Out of fold, the threshold finds {found} of the {n} malignant images (sensitivity {found / n:.3f}, "
            f"one-sided 95 % Clopper-Pearson lower bound {low:.3f}): the target {op['target_sensitivity']:.2f} is "
            f"{verdict} by the lower bound.")


def operating_point_line(report: dict) -> str:
    """The operating point of a report chosen by cross-validation, for a results block (empty
    for one chosen on the validation split: the report says it)."""
    if not report.get("cross_validation"):
        return ""
    op = report["operating_point"]
    return (f"\nOperating point: P(malignant) >= {op['malignant_threshold']:.4f}, chosen on {op['method']} for "
            f"sensitivity >= {op['target_sensitivity']:.2f}." + _cv_sentence(report) + "\n")


def _ood_lines(report: dict) -> list[str]:
    ood = report.get("ood")
    if not ood:
        return []
    th = ", ".join(f"{k} {v:.4g}" for k, v in ood["thresholds"].items())
    return [
        f"Out-of-distribution guard: {ood['method']}; fitted on {ood['n_fit']} training images. An image is flagged "
        f"when its score exceeds the {ood['quantile']:.0%} quantile of the {ood['n_validation']} validation images' "
        f"scores with the same mask source ({th}); the flag never changes the class. AUROC against far-OOD images "
        f"({ood['sets']['far']}) and near-OOD images ({ood['sets']['near']}); with gt masks far-OOD images are n/a (no "
        "lesion to outline), and with box masks the guard sees only the box.",
        "",
    ]


def segmenter_line(report: dict) -> str:
    """One sentence on the segmenter behind `auto` (empty without one)."""
    seg = report.get("segmenter")
    if not seg:
        return ""
    ci = seg.get("ci95", {})
    line = (
        f"\nLesion segmenter on the same images: Dice {fmt(seg['dice'], ci.get('dice'))}, IoU "
        f"{fmt(seg['iou'], ci.get('iou'))} over {seg['n_lesion']} lesion images; a lesion was found on "
        f"{fmt(seg['lesion_found_rate'])} of them and nothing on {fmt(seg['normal_empty_rate'])} of the "
        f"{seg['n_normal']} normal images."
    )
    if seg.get("presence_auroc") is not None or seg.get("needs_roi_rate") is not None:
        line += (f" Lesion presence AUROC (lesion vs normal images) {fmt(seg.get('presence_auroc'))}; Dice over the "
                 f"lesions auto classifies with {fmt(seg.get('dice_found'))}; auto abstains (needs an ROI) on "
                 f"{fmt(seg.get('needs_roi_rate'))} of the images ({fmt(seg.get('needs_roi_rate_lesion'))} of lesion, "
                 f"{fmt(seg.get('needs_roi_rate_normal'))} of normal images).")
    return line + "\n"


def _target_lines(report: dict) -> list[str]:
    """Whether the sensitivity the operating point was chosen for holds on this split: said
    plainly when it does not."""
    op, src = report["operating_point"], report.get("trained_mask_source")
    m = report["mask_sources"].get(src, {})
    sens, target = m.get("malignant_sensitivity"), op.get("target_sensitivity")
    if sens is None or target is None:
        return []
    ci = m.get("ci95", {}).get("malignant_sensitivity")
    verdict = "met" if sens >= target else "**NOT met**: do not rely on the stated sensitivity"
    return [f"Malignant sensitivity on this {report['split']} split ({src} masks): {fmt(sens, ci)} against the target "
            f"{target:.2f} chosen on validation: {verdict}.", ""]


def _calibration_lines(report: dict) -> list[str]:
    cal = report.get("calibration")
    if not cal:
        return []
    return [
        f"Probabilities calibrated by temperature scaling: T = {cal['temperature']:.3f}, fitted on {cal['n']} "
        f"validation images (NLL {cal['nll_before']:.3f} -> {cal['nll_after']:.3f}); "
        f"{cal.get('validation_held_back', 0)} validation images held back. The operating point and every figure "
        "use calibrated probabilities; the rows 'before calibration' use the network's own.",
        "",
    ]


def report_markdown(report: dict) -> str:
    op = report["operating_point"]
    lines = [
        f"# busi evaluation report: {report['model']}",
        "",
        f"Data: `{report['data']}` ({report['split']} split, {report['mask_sources'][next(iter(report['mask_sources']))]['n']} images, "
        f"fingerprint `{report['data_fingerprint'][:12]}`). Model trained with mask source "
        f"**{report['trained_mask_source']}**, backbone weights `{report['weights']}`.",
        "",
        f"Operating point: P(malignant) >= {op['malignant_threshold']:.4f}, chosen on "
        + (op["method"] if op.get("method") else "the validation split")
        + f" for sensitivity >= {op['target_sensitivity']:.2f}" + ("" if op.get("estimated") else f" ({op.get('note')})") + "."
        + _cv_sentence(report),
        "",
        *_target_lines(report),
        *_calibration_lines(report),
        *_ood_lines(report),
        "95 % bootstrap intervals in brackets (1000 resamples of the test cases, seeded).",
        "",
        results_table(report),
        "",
    ]
    for n, m in report["mask_sources"].items():
        lines += [f"## Mask source `{n}`", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for c, pc in m["per_class"].items():
            lines.append(f"| {c} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} | {pc['support']} |")
        lines += ["", "Confusion matrix (rows true, columns predicted: " + ", ".join(CLASSES) + "):", "", "```"]
        lines += ["  ".join(f"{v:4d}" for v in row) for row in m["confusion_matrix"]]
        lines += ["```", ""]
        if m.get("bands"):
            lines += ["Likelihood bands aligned with BI-RADS (calibrated P(malignant), training prevalence): images in "
                      "each band and the malignant fraction observed, exact 95 % interval:", "",
                      "| band | P(malignant) | images | malignant | observed rate |", "|---|---|---|---|---|"]
            for b in m["bands"]:
                rate = "n/a" if b["rate"] is None else f"{b['rate']:.2f} [{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}]"
                lines.append(f"| {b['band']} | {b['range']} | {b['n']} | {b['malignant']} | {rate} |")
            lines.append("")
        if m.get("coverage_per_class"):
            lines += ["Prediction-set coverage per class: " + ", ".join(
                f"{c} {'n/a' if v is None else f'{v:.2f}'}" for c, v in m["coverage_per_class"].items()) + ".", ""]
    seg = report.get("segmenter")
    if seg:
        ci = seg.get("ci95", {})
        lines += [
            "## Lesion segmenter (mask source `auto`)",
            "",
            f"`{seg.get('file', 'segmenter')}` on the same {report['split']} images, after the runtime's post-processing "
            "(threshold, largest connected component), at the segmenter's input size:",
            "",
            "| figure | value |",
            "|---|---|",
            f"| Dice, mean over {seg['n_lesion']} lesion images | {fmt(seg['dice'], ci.get('dice'))} |",
            f"| IoU, mean over lesion images | {fmt(seg['iou'], ci.get('iou'))} |",
            f"| lesion images where a lesion was found | {fmt(seg['lesion_found_rate'])} |",
            f"| normal images where nothing was found ({seg['n_normal']}) | {fmt(seg['normal_empty_rate'])} |",
        ]
        if "presence_auroc" in seg:
            lines += [
                f"| Lesion presence AUROC (lesion vs normal images) | {fmt(seg['presence_auroc'])} |",
                f"| Dice over the lesions auto classifies with | {fmt(seg.get('dice_found'))} |",
                f"| auto abstains (needs an ROI): all / lesion / normal images | {fmt(seg.get('needs_roi_rate'))} / "
                f"{fmt(seg.get('needs_roi_rate_lesion'))} / {fmt(seg.get('needs_roi_rate_normal'))} |",
            ]
        lines.append("")
    lines += [
        "Plots: `confusion_matrix.png`, `roc.png`, `reliability.png`, `training_curves.png`.",
        "",
        "Research software, not a medical device: these figures come from a small held-out split "
        "and do not establish clinical performance.",
        "",
    ]
    return "\n".join(lines)


def write_report(out: Path, report: dict, pred_rows: list[dict]) -> None:
    atomic_write_text(out / "predictions.csv", predictions_csv(pred_rows))
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.md", report_markdown(report))


def _validation_figures(model_dir: Path, source: str) -> dict:
    """Figures of the validation split (where recipes are chosen), from predictions.csv: the
    calibrated probabilities of the trained mask source; sensitivity and specificity at the
    operating point chosen on these same images, so they say what that choice cost, no more."""
    from .metrics import ece, nll, point_metrics

    rows = [r for r in csv.DictReader((model_dir / "predictions.csv").open()) if r["split"] == "val" and r["mask_source"] == source]
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    p = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    raw = np.array([[float(r[f"p_{c}_raw"]) for c in CLASSES] for r in rows])
    return {"n": len(rows), **point_metrics(y, p, -1.0), "nll_raw": nll(y, raw), "ece": ece(y, p)}


def _kept_epoch(model_dir: Path) -> str:
    """The epoch whose weights the run kept (the lowest validation loss, as early stopping and
    the fine-tuning phase restore), from its history.csv; '?' where there is none."""
    from .callbacks import kept_epoch

    try:
        with (model_dir / "history.csv").open() as f:
            return str(kept_epoch(list(csv.DictReader(f))))
    except (OSError, KeyError, ValueError):  # no history, or one without val_loss: min() of nothing is a ValueError
        return "?"


def compare_table(model_dirs: list[Path]) -> str:
    """Recipes side by side (from each folder's card.json, report.json and predictions.csv):
    what was trained, the validation figures a recipe is chosen on, and the test figures of
    the trained mask source with their 95 % intervals."""
    cols = []
    for d in model_dirs:
        rep = json.loads((d / "report.json").read_text())
        tr = json.loads((d / "card.json").read_text())["training"]
        src = rep["trained_mask_source"]
        cols.append((d, rep, tr, src, _validation_figures(d, src), rep["mask_sources"][src]))
    lines = ["| | " + " | ".join(f"`{d.name}`" for d, *_ in cols) + " |", "|---|" + "---|" * len(cols)]

    def row(label, cell):
        lines.append(f"| {label} | " + " | ".join(cell(*c) for c in cols) + " |")

    row("backbone", lambda d, rep, tr, *_: "frozen" if tr.get("fine_tune", "none") == "none" else
        f"fine-tuned {tr['fine_tune']} from epoch {tr.get('fine_tune_from_epoch')} (Adam {tr['fine_tune_lr']:g})")
    row("augmentation beyond the seed's", lambda d, rep, tr, *_: ", ".join(
        [*(["scanner"] if tr.get("scanner_augment") else []), *[e for e in tr.get("augment_extra", "none").split(",") if e != "none"]]
        ) or ("none" if tr.get("augment", True) else "switched off"))
    row("precision", lambda d, rep, tr, *_: tr.get("precision", "float32"))
    row("epochs run (best kept)", lambda d, rep, tr, *_: f"{tr['epochs_run']} ({_kept_epoch(d)})")
    row("training time", lambda d, rep, tr, *_: f"{tr['seconds'] / 60:.0f} min")
    row("mask source (trained)", lambda d, rep, tr, src, *_: src)
    for key, label in (("balanced_accuracy", "balanced accuracy"), ("macro_auc", "macro AUC"), ("nll_raw", "log loss (before calibration)"),
                       ("ece", "ECE (calibrated; fitted on half of it)")):
        row(f"validation: {label}", lambda d, rep, tr, src, val, test, k=key: fmt(val[k]))
    row("validation: P(malignant) threshold for sensitivity 0.95",
        lambda d, rep, tr, *_: f"{rep['operating_point']['malignant_threshold']:.4f}")
    for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_auc", "macro AUC"),
                       ("malignant_sensitivity", "malignant sensitivity @ op. point"),
                       ("malignant_specificity", "malignant specificity @ op. point"), ("ece", "ECE (calibrated)"),
                       ("ece_raw", "ECE before calibration"), ("coverage", "prediction-set coverage"),
                       ("set_size", "mean prediction-set size"), ("ood_auroc_far", "OOD AUROC, far")):
        row(f"test: {label}", lambda d, rep, tr, src, val, test, k=key: fmt(test.get(k), test["ci95"].get(k)))
    row("test images", lambda d, rep, tr, src, val, test: str(test["n"]))
    return "\n".join(lines)


def replace_block(readme: Path, block: str, body: str) -> bool:
    """Replace the Markdown file's `block` (between `<!-- results:start -->` and `<!-- results:end -->`
    for "results", `<!-- NAME:start -->` ... for another) with `body`. False if no markers."""
    text = readme.read_text()
    start, end = (README_START, README_END) if block == "results" else (f"<!-- {block}:start -->", f"<!-- {block}:end -->")
    pat = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pat.search(text):
        return False
    atomic_write_text(readme, pat.sub(lambda _: f"{start}\n{body}{end}", text))
    return True


def update_readme(readme: Path, report: dict, model_dir: str, block: str = "results") -> bool:
    """The block holds this report's table and the command that wrote it (naming `readme` as
    given, so that the command shown above a table writes that very file)."""
    again = "" if block == "results" else f" --block {block}"
    return replace_block(readme, block, (
        f"_Written by `busi-train report {model_dir} --readme {readme}{again}` from "
        f"`{model_dir}/report.json` (data `{report['data']}`, {report['split']} split)._\n\n"
        f"{results_table(report)}\n{segmenter_line(report)}{operating_point_line(report)}"
    ))


def plots(out: Path, report: dict, pred_rows: list[dict], history: list[dict]) -> None:
    """confusion_matrix.png, roc.png, reliability.png, training_curves.png (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    src = report["trained_mask_source"]
    rows = [r for r in pred_rows if r["split"] == report["split"] and r["mask_source"] == src]
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    P = np.array([[r["p_normal"], r["p_benign"], r["p_malignant"]] for r in rows])

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(out / name, buf.getvalue())

    # scikit-learn's displays: the confusion matrix of the report itself, one-vs-rest ROC
    # curves, and the top-label reliability diagram (whether the top class was right, against
    # its probability: a binary question, which CalibrationDisplay answers)
    cm = np.array(report["mask_sources"][src]["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ConfusionMatrixDisplay(cm, display_labels=list(CLASSES)).plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set_title(f"confusion matrix ({src} mask)")
    save(fig, "confusion_matrix.png")

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for c, name in enumerate(CLASSES):
        if 0 < (y == c).sum() < len(y):
            RocCurveDisplay.from_predictions(y == c, P[:, c], ax=ax, name=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC one-vs-rest ({src} mask)")
    ax.legend(loc="lower right")
    save(fig, "roc.png")

    # before (the network's own probabilities) and after calibration: the top label (right or
    # not, against its probability) and malignant one-vs-rest
    R = np.array([[r.get(f"p_{c}_raw", r[f"p_{c}"]) for c in CLASSES] for r in rows])
    m = report["mask_sources"][src]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for probs, name in ((R, "before calibration"), (P, "calibrated")):
        CalibrationDisplay.from_predictions(probs.argmax(axis=1) == y, probs.max(axis=1), n_bins=10, ax=axes[0], name=name)
        if 0 < (y == MALIGNANT).sum() < len(y):
            CalibrationDisplay.from_predictions(y == MALIGNANT, probs[:, MALIGNANT], n_bins=10, ax=axes[1], name=name)
    axes[0].set_xlabel("top-label probability")
    axes[0].set_ylabel("fraction correct")
    axes[0].set_title(f"top label (ECE {m.get('ece_raw', m['ece']):.3f} -> {m['ece']:.3f})")
    axes[1].set_xlabel("P(malignant)")
    axes[1].set_ylabel("fraction malignant")
    axes[1].set_title("malignant, one-vs-rest")
    save(fig, "reliability.png")

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    ep = [int(h["epoch"]) + 1 for h in history]
    for ax, key in zip(axes, ("loss", "accuracy")):
        for pre in ("", "val_"):
            k = pre + key
            if history and k in history[0]:
                ax.plot(ep, [float(h[k]) for h in history], label=k)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    save(fig, "training_curves.png")
