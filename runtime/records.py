"""busi-infer's output formats: JSON lines, CSV and a table; per-study summaries (`--by study`).

A record is `Prediction.to_dict()`, `NeedsRoi.to_dict()` (`"needs_roi": true`: auto abstained,
no class) or `Failure.to_dict()`; a study summary has `"record": "study"`. A classified image whose DICOM
output (--dicom-out) could not be written keeps its class and gains `dicom_output_error`.
"""

from __future__ import annotations

import csv
import io
import json
from enum import Enum

from .results import FAILURE, NEEDS_ROI, PREDICTION, STUDY, flag_probability, record_kind
from .study import summarise_study

# the columns busi-infer always had first, in their order; what DICOM, cine and --by study add after them
CSV_FIELDS = ("path", "class", "confidence", "p_normal", "p_benign", "p_malignant", "malignant", "threshold",
              "mask_source", "lesion_found", "lesion_box", "provider", "error", "study_uid", "series_uid", "sop_uid",
              "frame", "cine_frames", "cine_max_malignant", "cine_max_frame", "record", "images", "band", "prediction_set",
              "coverage", "p_malignant_adjusted", "out_of_distribution", "ood_score", "lesion_presence", "needs_roi",
              "needs_roi_reason", "output_error", "dicom_output_error")
#: JSON `dicom` keys -> CSV columns
DICOM_COLUMNS = {"StudyInstanceUID": "study_uid", "SeriesInstanceUID": "series_uid", "SOPInstanceUID": "sop_uid",
                 "frame": "frame"}
CINE_COLUMNS = {"frames": "cine_frames", "max_malignant": "cine_max_malignant", "max_malignant_frame": "cine_max_frame"}


class Format(str, Enum):
    jsonl = "jsonl"
    csv = "csv"
    table = "table"


def study_summaries(records: list[dict]) -> list[dict]:
    """One record per DICOM study among the results: how many images were classified (and
    failed), the highest P(malignant) with its image, and whether any image carries the flag."""
    studies: dict[str, list[dict]] = {}
    for r in records:
        uid = (r.get("dicom") or {}).get("StudyInstanceUID")
        if uid and record_kind(r) != FAILURE:
            studies.setdefault(uid, []).append(r)
    out = []
    for uid, all_rs in studies.items():
        rs = [r for r in all_rs if record_kind(r) == PREDICTION]
        abstained = len(all_rs) - len(rs)
        if not rs:
            out.append({"record": "study", "study_uid": uid, "images": 0, "needs_roi": abstained,
                        "max_malignant": None, "max_malignant_path": None, "malignant": None, "threshold": None})
            continue
        s = summarise_study({i: _p_malignant(r) for i, r in enumerate(rs)}, rs[0]["threshold"])
        out.append({
            "record": "study", "study_uid": uid, "images": s.images, "needs_roi": abstained,
            "max_malignant": s.max_malignant, "max_malignant_path": rs[s.top]["path"],
            "malignant": s.malignant, "threshold": rs[s.top]["threshold"],
        })
    return out


def _p_malignant(r: dict) -> float:
    return flag_probability(r.get("cine"), r["probabilities"])


def json_line(record: dict) -> str:
    """One record as a line of strict JSON: a NaN or infinity (which `json.dumps` would write as
    a bare `NaN`, not JSON) raises ValueError; non-finite model outputs are failures before this."""
    return json.dumps(record, allow_nan=False) + "\n"


def render(records: list[dict], fmt: Format) -> str:
    if fmt is Format.jsonl:
        return "".join(json_line(r) for r in records)
    if fmt is Format.csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in records:
            w.writerow(_flat(r))
        return buf.getvalue()
    return _table(records)


def _table(records: list[dict]) -> str:
    lines = [f"{'class':<10} {'conf':>6} {'P(mal)':>7} {'flag':<9} {'band':<4} {'set':<5} {'ood':<3} {'mask':<5} path"]
    thresholds = sorted({r["threshold"] for r in records if record_kind(r) != FAILURE and r.get("threshold") is not None})
    if thresholds:
        # The flag is set by the operating point, not by the top class: a 'benign' row can carry it.
        lines.insert(0, "(flag MALIGNANT: P(mal) >= " + ", ".join(f"{t:.3g}" for t in thresholds)
                     + "; set by this threshold, not by the top class)")
    if any(r.get("lesion_found") is False for r in records):
        lines.insert(0, "(mask 'auto-': the segmenter found no lesion)")
    if any(r.get("prediction_set") is not None for r in records):
        cov = sorted({r["coverage"] for r in records if r.get("coverage")})
        lines.insert(0, "(band: likelihood band aligned with BI-RADS, a probability range, not an assessment; set: the "
                     + "/".join(f"{c:.0%}" for c in cov) + " conformal prediction set, N/B/M)")
    if any(record_kind(r) == NEEDS_ROI for r in records):
        lines.insert(0, "(NEEDS ROI: --mask auto abstained, the image is not classified; give --roi x,y,w,h or a mask)")
    if any(r.get("out_of_distribution") for r in records):
        lines.insert(0, "(ood 'OOD': the image is unlike the training images; do not trust its class)")
    if any(r.get("cine") for r in records):
        lines.insert(0, "(cine: class from the mean over the frames; P(mal) and flag from the frame with the highest P(mal))")
    for r in records:
        kind = record_kind(r)
        if kind == STUDY:
            roi = f", {r['needs_roi']} need an ROI" if r["needs_roi"] else ""
            if r["max_malignant"] is None:
                lines.append(f"{'STUDY':<10} {'':>6} {'':>7} {'':<9} {'':<4} {'':<5} {'':<3} {'':<5} {r['study_uid']}: "
                             f"no image classified{roi}")
                continue
            flag = "MALIGNANT" if r["malignant"] else "-"
            lines.append(f"{'STUDY':<10} {'':>6} {r['max_malignant']:7.3f} {flag:<9} {'':<4} {'':<5} {'':<3} {'':<5} {r['study_uid']}: "
                         f"{r['images']} image(s){roi}, highest P(mal) in {r['max_malignant_path']}")
        elif kind == NEEDS_ROI:
            lines.append(f"{'NEEDS ROI':<10} {'':>6} {'':>7} {'':<9} {'':<4} {'':<5} {'':<3} {'auto':<5} {r['reason']}")
        elif kind == FAILURE:
            lines.append(f"{'FAILED':<10} {'':>6} {'':>7} {'':<9} {'':<4} {'':<5} {'':<3} {'':<5} {r['error']}")
        else:
            flag = "MALIGNANT" if r["malignant"] else "-"
            src = r["mask_source"] + ("-" if r.get("lesion_found") is False else "")
            where = r["path"]
            if r.get("cine"):
                c = r["cine"]
                where += f" [cine: {c['frames']} frames, highest P(mal) in frame {c['max_malignant_frame']}]"
            if r.get("dicom_output_error"):
                where += " [DICOM output failed]"
            band = (r.get("likelihood") or {}).get("band", "")
            cset = "".join(c[0].upper() for c in r["prediction_set"]) if r.get("prediction_set") is not None else ""
            ood = {True: "OOD", False: "-", None: ""}[r.get("out_of_distribution")]
            lines.append(f"{r['class']:<10} {r['confidence']:6.3f} {_p_malignant(r):7.3f} {flag:<9} {band:<4} {cset or '-':<5} "
                         f"{ood:<3} {src:<5} {where}")
    return "\n".join(lines) + "\n"


def _flat(r: dict) -> dict:
    kind = record_kind(r)
    if kind == STUDY:
        if r["max_malignant"] is None:
            return {"record": "study", "study_uid": r["study_uid"], "images": 0, "needs_roi": r.get("needs_roi", 0)}
        return {"record": "study", "path": r["max_malignant_path"], "p_malignant": f"{r['max_malignant']:.6f}",
                "malignant": int(r["malignant"]), "threshold": f"{r['threshold']:.6f}", "study_uid": r["study_uid"],
                "images": r["images"], "needs_roi": r.get("needs_roi", 0)}
    if kind == FAILURE:
        return {"record": "image", "path": r["path"], "error": r["error"]}
    if kind == NEEDS_ROI:
        return {"record": "image", "path": r["path"], "mask_source": r["mask_source"], "needs_roi": 1,
                "needs_roi_reason": r["reason"], "lesion_presence": f"{r['lesion_presence']:.6g}",
                "lesion_box": " ".join(map(str, r["lesion_box"])) if r.get("lesion_box") else "", "provider": r["provider"],
                **{col: (r.get("dicom") or {}).get(key, "") for key, col in DICOM_COLUMNS.items()},
                "output_error": r.get("output_error", ""), "dicom_output_error": r.get("dicom_output_error", "")}
    return {
        "record": "image", "path": r["path"], "class": r["class"], "confidence": f"{r['confidence']:.6f}",
        **{f"p_{k}": f"{v:.6f}" for k, v in r["probabilities"].items()},
        "malignant": int(r["malignant"]), "threshold": f"{r['threshold']:.6f}", "mask_source": r["mask_source"],
        "lesion_found": "" if r.get("lesion_found") is None else int(r["lesion_found"]),
        "lesion_box": " ".join(map(str, r["lesion_box"])) if r["lesion_box"] else "", "provider": r["provider"], "error": "",
        **{col: (r.get("dicom") or {}).get(key, "") for key, col in DICOM_COLUMNS.items()},
        **{col: (r.get("cine") or {}).get(key, "") for key, col in CINE_COLUMNS.items()},
        "band": (r.get("likelihood") or {}).get("band", ""),
        "prediction_set": ";".join(r["prediction_set"]) if r.get("prediction_set") is not None else "",
        "coverage": r.get("coverage") or "",
        "p_malignant_adjusted": f"{r['adjusted_probabilities']['malignant']:.6f}" if r.get("adjusted_probabilities") else "",
        "out_of_distribution": "" if r.get("out_of_distribution") is None else int(r["out_of_distribution"]),
        "ood_score": f"{r['ood_score']:.6g}" if r.get("ood_score") is not None else "",
        "lesion_presence": f"{r['lesion_presence']:.6g}" if r.get("lesion_presence") is not None else "",
        "needs_roi": 0, "output_error": r.get("output_error", ""), "dicom_output_error": r.get("dicom_output_error", ""),
    }
