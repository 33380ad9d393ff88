"""`busi-train evaluate MODEL_DIR --data DIR`: the trained model on an external BUSI-layout set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import dataset as ds
from . import segmenter
from .fit import evaluate_model, log


def evaluate_folder(model_dir: str | Path, data: str | Path, out: str | Path | None = None, seed: int = 0) -> Path:
    model_dir = Path(model_dir)
    for f in ("model.keras", "card.json"):
        if not (model_dir / f).is_file():
            raise ds.DataError(f"{model_dir / f}: not found (train first: busi-train fit)")
    card = json.loads((model_dir / "card.json").read_text())
    scan = ds.scan_folder(data)
    ds.inspect(scan)
    ds.group_duplicates(scan)
    conflicting = {i for g in scan.conflicting_groups() for i in g}
    rows = []
    skipped = []
    for i, s in enumerate(scan.samples):
        if i in conflicting or ds._blocking(s) or not (s.masks or s.label == "normal"):
            skipped.append(s.path.relative_to(scan.root).as_posix())
            continue
        rows.append(
            {
                "path": s.path.relative_to(scan.root).as_posix(),
                "mask_paths": ";".join(m.relative_to(scan.root).as_posix() for m in s.masks),
                "label": s.label,
            }
        )
    if not rows:
        raise ds.DataError(f"{data}: no usable images to evaluate")
    if skipped:
        log(f"skipped {len(skipped)} images (label conflicts or problems): {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
    from ._tf import keras
    from . import model as _m  # noqa: F401  (registers the custom layer)
    from .inputs import load_rows
    from .report import plots, write_report

    size = card["architecture"]["input"]["size"]
    arr = load_rows(data, rows, size)
    sizes = np.array(card["training"].get("lesion_box_sizes") or [], np.int64).reshape(-1, 2)
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    op = card["operating_point"]
    extra, seg_metrics = {}, None
    if (model_dir / segmenter.CARD_FILE).is_file():
        seg_arr, probs, seg_card = segmenter.segment_split(model_dir, data, rows)
        extra["auto"] = segmenter.auto_masks(arr, probs, card["architecture"]["mask"], seg_card)
        seg_rows = segmenter.segmentation_rows(seg_arr, probs, "external", seg_card["threshold"], seg_card["min_area_frac"])
        seg_metrics = segmenter.segmentation_metrics(seg_rows, seed) | {"file": segmenter.MODEL_FILE}
    results, pred_rows = evaluate_model(model, arr, sizes, op["malignant_threshold"], seed, "external", extra_masks=extra)
    sha = {s.path.relative_to(scan.root).as_posix(): s.sha256 for s in scan.samples}
    out = Path(out) if out else model_dir / f"eval-{Path(data).resolve().name}"
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "model": model_dir.name,
        "data": str(data),
        "data_fingerprint": ds.fingerprint([{**r, "split": "external", "sha256": sha[r["path"]]} for r in rows]),
        "split": "external",
        "weights": card["provenance"]["weights"],
        "trained_mask_source": card["architecture"]["mask"]["source"],
        "operating_point": op,
        "mask_sources": results,
        "skipped": skipped,
    }
    if seg_metrics:
        report["segmenter"] = seg_metrics
    write_report(out, report, pred_rows)
    plots(out, report, pred_rows, [])
    return out
