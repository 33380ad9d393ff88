"""Keras -> ONNX with a parity gate, the metadata contract and an integrity hash.

The exporter checks its own output (as Ultralytics and Optimum do) but fails instead of
warning: a converted model that differs from the evaluated one never reaches the final path.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from busi.runtime.atomic import atomic_path, atomic_write_text
from busi.runtime.contract import INPUT_NAMES, OUTPUT_NAME, metadata_props

PARITY_MIN_IMAGES = 32


class ExportError(Exception):
    """Export failed (exit 1) with a one-line reason."""

    exit_code = 1


class ExportUsageError(ExportError):
    """Bad MODEL_DIR or model (exit 2)."""

    exit_code = 2


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_sha256(path: Path) -> str:
    digest = sha256_file(path)
    atomic_write_text(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")
    return digest


@dataclass
class ModelDir:
    path: Path
    card: dict
    model: object  # keras.Model
    size: int


def load_model_dir(model_dir: str | Path) -> ModelDir:
    """Open MODEL_DIR: card.json + model.keras with inputs image/mask and 3 outputs."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ExportUsageError(f"{d}: model folder not found")
    kp, cp = d / "model.keras", d / "card.json"
    if not kp.is_file():
        raise ExportUsageError(f"{kp}: not found (train first: busi-train fit / make train)")
    if not cp.is_file():
        raise ExportUsageError(f"{cp}: not found (the model folder is incomplete)")
    try:
        card = json.loads(cp.read_text())
    except ValueError as e:
        raise ExportUsageError(f"{cp}: not valid JSON ({e})") from None
    from busi.train import model as _m  # registers the custom layer  # noqa: F401
    from busi.train._tf import keras

    try:
        model = keras.models.load_model(kp, compile=False)
    except Exception as e:  # corrupt zip, wrong format, unknown layers
        raise ExportUsageError(f"{kp}: cannot load Keras model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    names = sorted(t.name.split(":")[0] for t in model.inputs)
    if names != sorted(INPUT_NAMES):
        raise ExportUsageError(f"{kp}: model inputs are {names}, expected {list(INPUT_NAMES)}")
    shape = model.inputs[0].shape
    if len(model.outputs) != 1 or model.outputs[0].shape[-1] != 3:
        raise ExportUsageError(f"{kp}: expected one output of 3 class probabilities")
    return ModelDir(d, card, model, int(shape[1]))


def _onnx_rename_output(onnx_model, new: str) -> None:
    old = onnx_model.graph.output[0].name
    if old == new:
        return
    for node in onnx_model.graph.node:
        for i, o in enumerate(node.output):
            if o == old:
                node.output[i] = new
        for i, o in enumerate(node.input):
            if o == old:
                node.input[i] = new
    onnx_model.graph.output[0].name = new


def convert(md: ModelDir, opset: int):
    """tf2onnx conversion with an explicit signature (Keras 3 + tf2onnx traps avoided)."""
    import tf2onnx

    from busi.train._tf import tf

    S = md.size
    spec = [
        tf.TensorSpec((None, S, S, 3), tf.float32, name="image"),
        tf.TensorSpec((None, S, S, 1), tf.float32, name="mask"),
    ]
    model = md.model

    @tf.function(input_signature=spec)
    def serving(image, mask):
        return {OUTPUT_NAME: model({"image": image, "mask": mask}, training=False)}

    onnx_model, _ = tf2onnx.convert.from_function(serving, input_signature=spec, opset=opset, output_path=None)
    _onnx_rename_output(onnx_model, OUTPUT_NAME)
    return onnx_model


def ort_session(model_bytes_or_path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes_or_path, so, providers=["CPUExecutionProvider"])


def parity_inputs(md: ModelDir, n_min: int = PARITY_MIN_IMAGES, seed: int = 0) -> dict[str, dict]:
    """Held-out images with box and gt masks, plus edge inputs. name -> {"image","mask"}."""
    from busi.train.dataset import read_manifest
    from busi.train.inputs import eval_masks, lesion_sizes, load_rows

    card = md.card
    root = card["data"]["root"]
    manifest = read_manifest(md.path / "manifest.csv")
    rows = [r for r in manifest if r["split"] == "test"]
    for extra in ("val", "train"):  # a tiny data set: fill up to n_min, said in the figures
        if len(rows) < n_min:
            rows += [r for r in manifest if r["split"] == extra][: n_min - len(rows)]
    try:
        arr = load_rows(root, rows, md.size)
        train = load_rows(root, [r for r in manifest if r["split"] == "train"][:64], md.size)
    except Exception as e:
        raise ExportError(f"{root}: cannot read the training data for the parity check ({e})") from None
    sizes = lesion_sizes(train.gt)
    img = arr.images.astype(np.float32)
    sets = {
        "heldout_box": {"image": img, "mask": eval_masks(arr, "box", sizes, seed)},
        "heldout_gt": {"image": img, "mask": eval_masks(arr, "gt", sizes, seed)},
    }
    S = md.size
    sets["zero_image"] = {"image": np.zeros((2, S, S, 3), np.float32), "mask": np.ones((2, S, S, 1), np.float32)}
    sets["zero_mask"] = {"image": img[:2], "mask": np.zeros((2, S, S, 1), np.float32)}
    sets["batch_1"] = {"image": img[:1], "mask": sets["heldout_box"]["mask"][:1]}
    sets["batch_7"] = {"image": img[:7], "mask": sets["heldout_box"]["mask"][:7]}
    return sets, len(rows), [r["split"] for r in rows]


def parity(md: ModelDir, session, sets: dict, tolerance: float) -> dict:
    """Keras vs ONNX Runtime on every input set: max abs diff and argmax agreement."""
    worst_name, worst = None, -1.0
    per = {}
    n_total = agree_total = 0
    for name, x in sets.items():
        k = md.model.predict(x, batch_size=32, verbose=0)
        o = session.run([OUTPUT_NAME], {"image": x["image"], "mask": x["mask"]})[0]
        d = float(np.abs(k - o).max())
        agree = int((k.argmax(1) == o.argmax(1)).sum())
        per[name] = {"n": int(len(k)), "max_abs_diff": d, "argmax_agree": agree}
        n_total += len(k)
        agree_total += agree
        if d > worst:
            worst, worst_name = d, name
    return {
        "tolerance": tolerance,
        "max_abs_diff": worst,
        "worst_input": worst_name,
        "argmax_agreement": agree_total / n_total,
        "inputs": n_total,
        "sets": per,
        "passed": bool(worst <= tolerance and agree_total == n_total),
    }


def git_commit() -> str | None:
    from busi.train.fit import git_commit as gc

    return gc()


def export(model_dir: str | Path, opset: int = 17, tolerance: float = 1e-4, int8: bool = False, calibration_images: int = 64) -> dict:
    """Convert, gate, annotate and write MODEL_DIR/model.onnx (+ .sha256); optional INT8."""
    import onnx
    import tf2onnx

    md = load_model_dir(model_dir)
    t0 = time.time()
    log(f"converting {md.path / 'model.keras'} (opset {opset}) ...")
    try:
        onnx_model = convert(md, opset)
    except Exception as e:
        raise ExportError(f"{md.path / 'model.keras'}: tf2onnx conversion failed ({type(e).__name__}: {str(e)[:200]})") from None
    log(f"converted in {time.time() - t0:.1f}s")
    sets, n_rows, splits = parity_inputs(md)
    session = ort_session(onnx_model.SerializeToString())
    par = parity(md, session, sets, tolerance)
    par["heldout_images"] = n_rows
    par["heldout_from"] = {s: splits.count(s) for s in sorted(set(splits))}
    log(
        f"parity vs Keras on {par['inputs']} inputs: max abs diff {par['max_abs_diff']:.2e} "
        f"(tolerance {tolerance:.0e}, worst: {par['worst_input']}), argmax agreement {par['argmax_agreement']:.4f}"
    )
    if not par["passed"]:
        raise ExportError(
            f"parity gate failed: max abs diff {par['max_abs_diff']:.3e} on '{par['worst_input']}' "
            f"(tolerance {tolerance:.0e}), argmax agreement {par['argmax_agreement']:.4f}; no model.onnx written"
        )
    card = md.card
    import tensorflow as tf

    provenance = {
        "weights": card["provenance"]["weights"],
        "data_fingerprint": card["data"]["fingerprint"],
        "split_seed": card["training"]["seed"],
        "git_commit": git_commit(),
        "trained": card["provenance"]["created"],
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__},
    }
    arch = card["architecture"]
    props = metadata_props(
        classes=card["classes"],
        size=md.size,
        mask_source=arch["mask"]["source"],
        box_margin=arch["mask"].get("box_margin_eval", 0.10),
        operating_point=card["operating_point"],
        provenance=provenance,
        metrics=card["metrics"],
        parity={k: par[k] for k in ("tolerance", "max_abs_diff", "worst_input", "argmax_agreement", "inputs")},
    )
    set_metadata(onnx_model, props, card)
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except Exception as e:
        raise ExportError(f"onnx.checker rejected the converted model: {str(e)[:200]}") from None
    final = md.path / "model.onnx"
    with atomic_path(final, suffix=".onnx") as tmp:
        onnx.save(onnx_model, tmp)
    digest = write_sha256(final)
    log(f"wrote {final} ({final.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]})")
    export_facts = {
        "onnx": final.name,
        "sha256": digest,
        "bytes": final.stat().st_size,
        "opset": opset,
        "parity": par,
        "versions": provenance["versions"],
        "exported": provenance["exported"],
    }
    card["export"] = export_facts
    if int8:
        from .quantize import quantize_gated

        card["export"]["int8"] = quantize_gated(md, final, props, calibration_images)
    atomic_write_text(md.path / "card.json", json.dumps(card, indent=2) + "\n")
    return card["export"]


def set_metadata(onnx_model, props: dict[str, str], card: dict) -> None:
    del onnx_model.metadata_props[:]
    for k, v in sorted(props.items()):
        e = onnx_model.metadata_props.add()
        e.key, e.value = k, v
    onnx_model.producer_name = "busi"
    from busi import __version__

    onnx_model.producer_version = __version__
    onnx_model.model_version = int(datetime.now(timezone.utc).strftime("%Y%m%d"))
    onnx_model.doc_string = (
        "busi masked ResNet50: breast ultrasound normal/benign/malignant. Inputs image "
        "(N,S,S,3 float32 RGB 0..255) and mask (N,S,S,1 float32 0/1); output probabilities (N,3). "
        "Research software, not a medical device."
    )
