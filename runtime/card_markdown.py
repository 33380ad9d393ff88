"""MODEL_CARD.md: the model card for people, rendered from the same `ModelCard` as card.json
(written beside it by `ModelCard.write`: by `busi-train fit`, updated by `busi-export`).
Sections as Hugging Face and MONAI model cards have them: intended use, not for, data and its
licence, evaluation per mask source with confidence intervals, calibration, the
out-of-distribution guard, limits and ethical considerations."""

from __future__ import annotations

from typing import Any

BUSI_CITATION = ("W. Al-Dhabyani, M. Gomaa, H. Khaled, A. Fahmy, \"Dataset of breast ultrasound images\", "
                 "Data in Brief 28 (2020) 104863, doi:10.1016/j.dib.2019.104863")
#: what can be sourced about the images' own terms (the README's "Data and licences" says the same)
BUSI_IMAGES_TERMS = ("No licence for the images is stated in the copy busi was measured on "
                     "(github:yirutsai/Breast-ultrasound-dataset, commit 6c0fac85: no licence file; it points to a "
                     "Kaggle page): check the terms of the copy you use.")

#: (key, label) of the evaluation table, in its order
ROWS = (
    ("n", "test images"),
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("macro_auc", "macro AUC (one-vs-rest)"),
    ("malignant_sensitivity", "malignant sensitivity at the operating point"),
    ("malignant_specificity", "malignant specificity at the operating point"),
    ("ece", "expected calibration error (calibrated)"),
    ("coverage", "coverage of the prediction sets"),
    ("set_size", "mean prediction-set size"),
    ("ood_flagged", "flagged out-of-distribution"),
    ("ood_auroc_far", "OOD AUROC, far (CT, MR, non-images)"),
    ("abstained", "auto: abstained (needs an ROI)"),
    ("balanced_accuracy_kept", "auto: balanced accuracy where it classified"),
)


def _num(v: Any, ci: Any = None) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    v = float(v)
    s = f"{v:.2e}" if v and abs(v) < 1e-3 else f"{v:.3f}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        s += f" ({float(ci[0]):.2f}–{float(ci[1]):.2f})"
    return s


def _metrics_table(metrics: dict, trained: str) -> list[str]:
    srcs = [s for s in ("box", "gt", "auto", "none") if s in metrics] + \
           [s for s in metrics if s not in ("box", "gt", "auto", "none", "segmenter")]
    if not srcs:
        return ["No held-out figures in this card."]
    out = ["| metric | " + " | ".join(f"{s} (trained)" if s == trained else s for s in srcs) + " |",
           "|---|" + "---|" * len(srcs)]
    for key, label in ROWS:
        if not any(key in metrics[s] for s in srcs):
            continue
        out.append(f"| {label} | " + " | ".join(_num(metrics[s].get(key), (metrics[s].get("ci95") or {}).get(key))
                                               for s in srcs) + " |")
    return out


def _data_lines(card) -> list[str]:
    d = card.data
    lines = [f"- Folder: `{d.root}` (fingerprint `{d.fingerprint[:16]}…` of the split manifest)"]
    if d.split_counts:
        lines.append("- Split (duplicate-aware, seed {}): ".format(card.seed) + "; ".join(
            f"{part} " + ", ".join(f"{c} {n}" for c, n in counts.items()) for part, counts in d.split_counts.items()))
    if d.duplicate_groups is not None:
        lines.append(f"- Near-duplicate groups kept within one split: {d.duplicate_groups}; label-conflicting groups "
                     f"excluded: {d.conflicting_groups_excluded}")
    if d.kind is None:
        lines.append(f"- Source and licence: not recorded in this card (written before busi recorded them). For the "
                     f"public BUSI dataset: {BUSI_CITATION}. {BUSI_IMAGES_TERMS}")
    elif d.kind == "phantoms":
        lines.append("- Source and licence: synthetic B-mode phantoms written by `busi-train phantoms` (part of busi, "
                     "MIT). They test the plumbing; no figure here says anything about real patients.")
    else:
        lines.append(f"- Source and licence: a BUSI-layout folder. The public BUSI dataset: {BUSI_CITATION}; 780 "
                     "images of 600 women aged 25–75, one hospital in Cairo, 2018. Cite the article (open access, CC BY). "
                     f"{BUSI_IMAGES_TERMS}")
    return lines


def render(card) -> str:
    """The model card as Markdown."""
    i = card.info
    op = i.operating_point
    trained = i.mask.source
    L = [f"# Model card: {card.name or 'busi model'}", "",
         "> Research software, **not a medical device**: its results are not a diagnosis.", "",
         f"{card.task[:1].upper()}{card.task[1:]}. Classes: {', '.join(i.classes)}. Contract version {i.version}; "
         "the ONNX file carries this card's facts in its metadata (`busi.*`), card.json holds them as JSON.", "",
         "## Intended use", "", card.intended_use or "Not stated.", "",
         "## Not for", "", *([f"- {x}" for x in card.not_for] or ["Not stated."]), "",
         "## Model", "",
         f"- Architecture: {card.architecture.get('backbone', '?')}; head {card.architecture.get('head', '?')}; "
         f"{card.architecture.get('parameters', '?'):,} parameters" if isinstance(card.architecture.get("parameters"), int)
         else f"- Architecture: {card.architecture.get('backbone', '?')}",
         f"- Input: {i.input.size}×{i.input.size} RGB; the lesion mask multiplies the image. Trained with mask "
         f"source **{trained}**" + (f" (the lesion's box plus {i.mask.box_margin:.0%} margin)" if trained == "box" else ""),
         f"- Backbone weights: {i.provenance.weights}; trained {i.provenance.trained or '?'}"
         + (f"; exported {i.provenance.exported}" if i.provenance.exported else ""),
         f"- Operating point: P(malignant) ≥ {op.malignant_threshold:.4f}, chosen for {op.target_sensitivity:.0%} "
         f"malignant sensitivity on {op.validation_n} validation images"
         + (" (an estimate from few images)" if op.estimated else ""), "",
         "## Training data", "", *_data_lines(card), "",
         "## Evaluation (held-out test split)", "",
         "Each column is one way of telling the model where the lesion is (`--roi` box, a mask, the segmenter, the "
         "whole image); 95 % bootstrap intervals in brackets. A model scores well only under the mask source it was "
         "trained with.", "",
         *_metrics_table(i.metrics, trained), ""]
    if "segmenter" in i.metrics:
        seg = i.metrics["segmenter"]
        L += [f"Lesion segmenter (for `--mask auto`): Dice {_num(seg.get('dice'))}, lesion found on "
              f"{_num(seg.get('lesion_found_rate'))} of lesion images, presence AUROC {_num(seg.get('presence_auroc'))}.",
              ""]
    L += ["## Calibration", ""]
    if i.calibration is not None:
        c = i.calibration
        L.append(f"- Temperature scaling: T = {c.temperature:.3f}, fitted on {c.n} validation images "
                 f"(NLL {c.nll_before:.3f} → {c.nll_after:.3f}).")
    else:
        L.append("- None: the probabilities are the network's own.")
    if i.conformal is not None:
        L.append(f"- Conformal prediction sets ({i.conformal.method}) at {i.conformal.coverage:.0%} coverage, from "
                 f"{len(i.conformal.scores)} held-back validation scores.")
    if i.prevalence is not None:
        L.append("- Training prevalence: " + ", ".join(f"{k} {v:.0%}" for k, v in i.prevalence.items())
                 + " (`--prevalence` adjusts to a site's case mix).")
    L += ["", "## Out-of-distribution guard", ""]
    if i.ood is not None:
        g = i.ood
        L.append(f"- {g.method} distance of the pooled features to the nearest class mean of the training images, "
                 f"per mask source; flagged above the {g.quantile:.0%} quantile of validation images ("
                 + ", ".join(f"{k} {v:.4g}" for k, v in g.thresholds.items()) + "). The flag never changes the class.")
        L.append("- Its statistics live in the ONNX metadata (`busi.ood`) and in `ood.json` beside card.json.")
    else:
        L.append("- None in this model.")
    L += ["", "## Limits", "",
          f"- Classify under the trained mask source ({trained}): a box from `--roi`, a lesion mask, or `--mask auto` "
          "(the segmenter; it abstains when unsure). The whole image (`none`) is outside the training conditions.",
          "- Held-out figures come from one split of one data set; intervals are wide on small test splits.",
          "- Normal images have no lesion: training and inference give them a lesion-sized placeholder box.",
          "- Unlike images (other organs, other modalities, other scanners) may still get a confident class: "
          "read `out_of_distribution`.", "",
          "## Ethical considerations", "",
          "- **False negatives**: the operating point aims at high malignant sensitivity, yet a malignant lesion can "
          "be missed. A negative result must never stop a work-up that is otherwise indicated.",
          "- **Dataset bias**: BUSI comes from one hospital, one population and a few scanners in one year; "
          "other populations, breast densities, scanners and operators can change every figure above.",
          "- **Clinical validation**: none has been done. Any clinical use needs prospective validation at the site, "
          "regulatory clearance and a clinician responsible for every decision.", ""]
    if card.export:
        e = card.export
        L += ["## Export", "",
              f"- {e.get('file', 'model.onnx')}: opset {e.get('opset', '?')}, parity with Keras: max abs difference "
              f"{_num((e.get('parity') or {}).get('max_abs_diff'))}"
              + (f"; INT8: {e['int8'].get('file')}" if isinstance(e.get("int8"), dict) and e["int8"].get("file") else ""),
              ""]
    return "\n".join(L)
