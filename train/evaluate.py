"""`busi-train evaluate MODEL_DIR --data DIR`: the trained model on an external BUSI-layout set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from busi.runtime.errors import DataError
from busi.runtime.model_dir import ModelDir
from busi.runtime.trust import model_qhat

from . import dataset as ds
from . import segmenter
from .evaluation import evaluate_model
from .ood import OodSet, far_set


def evaluate_folder(model_dir: str | Path, data: str | Path, out: str | Path | None = None, seed: int = 0) -> Path:
    md = ModelDir(model_dir)
    for f in (md.keras, md.card):
        if not f.is_file():
            raise DataError(f"{f}: not found (train first: busi-train fit)")
    card = md.read_card()
    info = card.info
    rows, skipped, scan = ds.usable_rows(data)
    from . import model as _model  # noqa: F401  (registers the custom layer)
    from .backend import keras
    from .inputs import load_rows
    from .report import plots, write_report

    arr = load_rows(data, rows, info.input.size)
    sizes = np.array(card.lesion_box_sizes, np.int64).reshape(-1, 2)
    model = keras.models.load_model(md.keras, compile=False)
    extra, abstained, seg_metrics = {}, {}, None
    if md.has_segmenter():
        seg_arr, probs, seg_card = segmenter.segment_split(md, data, rows)
        found = segmenter.findings(seg_arr, probs, seg_card.info)  # once, for the classifier's masks and the rows
        extra["auto"], abstained["auto"] = segmenter.auto_masks(arr, probs, info.mask, seg_card.info, found)
        seg_rows = segmenter.segmentation_rows(seg_arr, probs, "external", seg_card.info, found)
        seg_metrics = segmenter.segmentation_metrics(seg_rows, seed) | {"file": md.segmenter_keras.name}
    T = info.calibration.temperature if info.calibration is not None else None
    qhat = model_qhat(info.conformal)
    far = {"far": OodSet(far_set(info.input.size), False)} if info.ood is not None else None
    results, pred_rows = evaluate_model(model, arr, sizes, info.malignant_threshold, seed, "external", extra_masks=extra,
                                        temperature=T, qhat=qhat, guard=info.ood, trained=info.mask.source, ood_sets=far,
                                        abstained=abstained)
    sha = {s.path.relative_to(scan.root).as_posix(): s.sha256 for s in scan.samples}
    out = Path(out) if out else md.eval_dir(data)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "model": md.path.name,
        "data": str(data),
        "data_fingerprint": ds.fingerprint([{**r, "split": "external", "sha256": sha[r["path"]]} for r in rows]),
        "split": "external",
        "weights": info.provenance.weights,
        "trained_mask_source": info.mask.source,
        "operating_point": info.operating_point.to_json(),
        **({"calibration": info.calibration.to_json()} if info.calibration is not None else {}),
        "mask_sources": results,
        "skipped": skipped,
    }
    if seg_metrics:
        report["segmenter"] = seg_metrics
        from busi.runtime.atomic import atomic_write_text

        atomic_write_text(ModelDir(out).segmentation, segmenter.rows_csv(seg_rows))
    write_report(out, report, pred_rows)
    plots(out, report, pred_rows, [])
    return out
