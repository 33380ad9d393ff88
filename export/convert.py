"""Keras -> ONNX with a parity gate, the metadata contract and an integrity hash.

The exporter checks its own output (as Ultralytics and Optimum do) but fails instead of
warning: a converted model that differs from the evaluated one never reaches the final path.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from busi.runtime.atomic import atomic_path, atomic_write_text
from busi.runtime.contract import (
    CAM_WEIGHTS_NAME,
    FEATURES_NAME,
    INPUT_NAMES,
    OUTPUT_NAME,
    SEGMENTER_INPUT,
    SEGMENTER_OUTPUT,
    metadata_props,
    segmenter_metadata_props,
)
from busi.runtime.verify import sha256_file

PARITY_MIN_IMAGES = 32
GRADCAM_REL_TOLERANCE = 1e-4  # features and Grad-CAM weights, relative to their largest value


class ExportError(Exception):
    """Export failed (exit 1) with a one-line reason."""

    exit_code = 1


class ExportUsageError(ExportError):
    """Bad MODEL_DIR or model (exit 2)."""

    exit_code = 2


class Int8GateRefused(ExportError):
    """Every INT8 calibration failed its gate: model.onnx is written, model.int8.onnx is not.
    `figures` holds what each calibration measured."""

    def __init__(self, message: str, figures: list[dict]):
        super().__init__(message)
        self.figures = figures


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def classifier_function(model):
    """The function export converts: the classifier's probabilities, plus, for Grad-CAM
    without TensorFlow, the last conv block's feature map A and the closed-form Grad-CAM
    weights alpha[n, k, c] = d logit_c / d A[n, :, :, k] averaged over space.

    The head is GAP -> Dense 256 (ReLU) -> Dropout (identity at inference) -> Dense 3, so
    d logit_c / d GAP_k = sum_j W1[k, j] * 1[h_j > 0] * W2[j, c], and every spatial position
    gets 1 / (h * w) of it."""
    from busi.train._tf import keras, tf
    from busi.train.model import LAST_CONV

    feats = keras.Model(model.input, [model.get_layer(LAST_CONV).output, model.output])
    fc, head = model.get_layer("fc256"), model.get_layer("probabilities")

    def serving(image, mask):
        A, p = feats({"image": image, "mask": mask}, training=False)
        W1, b1, W2 = (tf.convert_to_tensor(v) for v in (fc.kernel, fc.bias, head.kernel))
        gap = tf.reduce_mean(A, axis=[1, 2])
        gate = tf.cast(tf.matmul(gap, W1) + b1 > 0, A.dtype)  # ReLU'
        alpha = tf.einsum("kj,njc->nkc", W1, gate[:, :, None] * W2[None]) / float(A.shape[1] * A.shape[2])
        return {OUTPUT_NAME: p, FEATURES_NAME: A, CAM_WEIGHTS_NAME: alpha}

    return serving


def _to_onnx(fn, spec, opset: int, outputs: set[str]):
    import tf2onnx

    from busi.train._tf import quiet, tf

    with quiet():  # grappler's "Starting new session" lines
        onnx_model, _ = tf2onnx.convert.from_function(tf.function(fn, input_signature=spec), input_signature=spec, opset=opset)
    got = {o.name for o in onnx_model.graph.output}
    if got != outputs:
        raise ExportError(f"converted graph has outputs {sorted(got)}, expected {sorted(outputs)}")
    return onnx_model


def convert(md: ModelDir, opset: int):
    """tf2onnx conversion with an explicit signature and named outputs (the Keras 3 +
    tf2onnx traps, tf2onnx issues 2329/2348, avoided): inputs image, mask; outputs
    probabilities, features, cam_weights; dynamic batch axis."""
    from busi.train._tf import tf

    S = md.size
    spec = [
        tf.TensorSpec((None, S, S, 3), tf.float32, name="image"),
        tf.TensorSpec((None, S, S, 1), tf.float32, name="mask"),
    ]
    return _to_onnx(classifier_function(md.model), spec, opset, {OUTPUT_NAME, FEATURES_NAME, CAM_WEIGHTS_NAME})


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
    """Keras vs ONNX Runtime on every input set: max abs diff and argmax agreement of the
    probabilities (the gate), and the relative difference of the Grad-CAM outputs."""
    from busi.train._tf import tf

    reference = tf.function(classifier_function(md.model))
    worst_name, worst, worst_cam = None, -1.0, 0.0
    per = {}
    n_total = agree_total = 0
    for name, x in sets.items():
        k = md.model.predict(x, batch_size=32, verbose=0)
        outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": x["image"], "mask": x["mask"]})))
        o = outs[OUTPUT_NAME]
        d = float(np.abs(k - o).max())
        agree = int((k.argmax(1) == o.argmax(1)).sum())
        ref = reference(tf.constant(x["image"]), tf.constant(x["mask"]))
        cam = max(_rel_diff(ref[n].numpy(), outs[n]) for n in (FEATURES_NAME, CAM_WEIGHTS_NAME))
        per[name] = {"n": int(len(k)), "max_abs_diff": d, "argmax_agree": agree, "gradcam_rel_diff": cam}
        n_total += len(k)
        agree_total += agree
        worst_cam = max(worst_cam, cam)
        if d > worst:
            worst, worst_name = d, name
    return {
        "tolerance": tolerance,
        "max_abs_diff": worst,
        "worst_input": worst_name,
        "argmax_agreement": agree_total / n_total,
        "inputs": n_total,
        "gradcam_rel_diff": worst_cam,
        "sets": per,
        "passed": bool(worst <= tolerance and agree_total == n_total and worst_cam <= GRADCAM_REL_TOLERANCE),
    }


def _rel_diff(ref: np.ndarray, got: np.ndarray) -> float:
    """max |ref - got| / max |ref|: for outputs whose scale is not 0..1."""
    return float(np.abs(ref - got).max() / max(float(np.abs(ref).max()), 1e-12))


def git_commit() -> str | None:
    from busi.train.fit import git_commit as gc

    return gc()


def export(model_dir: str | Path, opset: int = 17, tolerance: float = 1e-4, int8: bool = False, calibration_images: int = 256) -> dict:
    """Convert, gate, annotate and write MODEL_DIR/model.onnx (+ .sha256); optional INT8."""
    import onnx

    from busi.train._tf import tf  # TensorFlow first, quietly, before tf2onnx imports it
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
        f"(tolerance {tolerance:.0e}, worst: {par['worst_input']}), argmax agreement {par['argmax_agreement']:.4f}; "
        f"Grad-CAM outputs relative diff {par['gradcam_rel_diff']:.1e}"
    )
    if not par["passed"]:
        raise ExportError(
            f"parity gate failed: max abs diff {par['max_abs_diff']:.3e} on '{par['worst_input']}' "
            f"(tolerance {tolerance:.0e}), argmax agreement {par['argmax_agreement']:.4f}, Grad-CAM relative diff "
            f"{par['gradcam_rel_diff']:.1e} (tolerance {GRADCAM_REL_TOLERANCE:.0e}); no model.onnx written"
        )
    card = md.card
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
        placeholder=arch["mask"].get("placeholder", (0.25, 0.25)),
        parity={k: par[k] for k in ("tolerance", "max_abs_diff", "worst_input", "argmax_agreement", "inputs", "gradcam_rel_diff")},
    )
    set_metadata(onnx_model, props)
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
    seg_keras = md.path / "segmenter.keras"
    if seg_keras.is_file():
        card["export"]["segmenter"] = export_segmenter(md.path, opset, tolerance, provenance)
    else:
        for stale in (md.path / "segmenter.onnx", md.path / "segmenter.onnx.sha256"):
            stale.unlink(missing_ok=True)
    refusal = None
    if int8:
        from .quantize import quantize_gated

        try:
            card["export"]["int8"] = quantize_gated(md, final, props, calibration_images)
        except Int8GateRefused as e:
            refusal = e
            card["export"]["int8"] = {"refused": str(e), "tried": e.figures}
    atomic_write_text(md.path / "card.json", json.dumps(card, indent=2) + "\n")
    if refusal is not None:
        raise refusal
    return card["export"]


def export_segmenter(model_dir: Path, opset: int, tolerance: float, provenance: dict) -> dict:
    """segmenter.keras -> segmenter.onnx with the same kind of parity gate: max abs
    difference of lesion probabilities within the tolerance, and every pixel that is more
    than the tolerance away from the threshold on the same side of it."""
    import onnx

    from busi.train import segmenter as seg
    from busi.train._tf import keras, tf
    from busi.train.dataset import read_manifest
    from busi.train.inputs import load_rows

    src = model_dir / seg.MODEL_FILE
    try:
        sc = json.loads((model_dir / seg.CARD_FILE).read_text())
        model = keras.models.load_model(src, compile=False)
    except Exception as e:
        raise ExportUsageError(f"{src}: cannot load the segmenter ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    S, thr = int(sc["input"]["size"]), float(sc["threshold"])
    log(f"converting {src} (opset {opset}) ...")
    spec = [tf.TensorSpec((None, S, S, 3), tf.float32, name=SEGMENTER_INPUT)]
    try:
        onnx_model = _to_onnx(lambda image: {SEGMENTER_OUTPUT: model(image, training=False)}, spec, opset, {SEGMENTER_OUTPUT})
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"{src}: tf2onnx conversion failed ({type(e).__name__}: {str(e)[:200]})") from None
    manifest = read_manifest(model_dir / "manifest.csv")
    rows = [r for r in manifest if r["split"] == "test"]
    for extra in ("val", "train"):
        if len(rows) < PARITY_MIN_IMAGES:
            rows += [r for r in manifest if r["split"] == extra][: PARITY_MIN_IMAGES - len(rows)]
    img = load_rows(sc["data"]["root"], rows, S).images.astype(np.float32)
    sets = {"heldout": img, "zero_image": np.zeros((2, S, S, 3), np.float32), "batch_1": img[:1], "batch_7": img[:7]}
    session = ort_session(onnx_model.SerializeToString())
    worst, worst_name, flips, n = -1.0, None, 0, 0
    for name, x in sets.items():
        k = model.predict(x, batch_size=16, verbose=0)
        o = session.run([SEGMENTER_OUTPUT], {SEGMENTER_INPUT: x})[0]
        d = float(np.abs(k - o).max())
        if d > worst:
            worst, worst_name = d, name
        clear = np.abs(k - thr) > tolerance
        flips += int(((k >= thr) != (o >= thr))[clear].sum())
        n += len(x)
    par = {"tolerance": tolerance, "max_abs_diff": worst, "worst_input": worst_name, "inputs": n, "pixel_flips": flips,
           "passed": bool(worst <= tolerance and flips == 0)}
    log(f"segmenter parity vs Keras on {n} inputs: max abs diff {worst:.2e} (worst: {worst_name}), {flips} thresholded pixels differ")
    if not par["passed"]:
        raise ExportError(
            f"segmenter parity gate failed: max abs diff {worst:.3e} on '{worst_name}' (tolerance {tolerance:.0e}), "
            f"{flips} pixels flipped; no segmenter.onnx written"
        )
    props = segmenter_metadata_props(
        size=S, threshold=thr, min_area_frac=float(sc["min_area_frac"]),
        provenance={**provenance, "data_fingerprint": sc["data"]["fingerprint"], "trained": sc["provenance"]["created"]},
        metrics=sc["metrics"], parity=par,
    )
    set_metadata(onnx_model, props, doc=(
        "busi lesion segmenter (U-Net) for --mask auto. Input image (N,S,S,3 float32 RGB 0..255); output lesion "
        "(N,S,S,1 probability). Research software, not a medical device."))
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except Exception as e:
        raise ExportError(f"onnx.checker rejected the converted segmenter: {str(e)[:200]}") from None
    final = model_dir / "segmenter.onnx"
    with atomic_path(final, suffix=".onnx") as tmp:
        onnx.save(onnx_model, tmp)
    digest = write_sha256(final)
    log(f"wrote {final} ({final.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]})")
    return {"onnx": final.name, "sha256": digest, "bytes": final.stat().st_size, "parity": par}


CLASSIFIER_DOC = (
    "busi masked ResNet50: breast ultrasound normal/benign/malignant. Inputs image "
    "(N,S,S,3 float32 RGB 0..255) and mask (N,S,S,1 float32 0/1); output probabilities (N,3), "
    "plus features and cam_weights for Grad-CAM. Research software, not a medical device."
)


def set_metadata(onnx_model, props: dict[str, str], doc: str = CLASSIFIER_DOC) -> None:
    """The busi contract (`props`) as the file's metadata_props, plus producer, version and doc."""
    del onnx_model.metadata_props[:]
    for k, v in sorted(props.items()):
        e = onnx_model.metadata_props.add()
        e.key, e.value = k, v
    onnx_model.producer_name = "busi"
    from busi import __version__

    onnx_model.producer_version = __version__
    onnx_model.model_version = int(datetime.now(timezone.utc).strftime("%Y%m%d"))
    onnx_model.doc_string = doc
