"""Keras -> ONNX with a parity gate, the metadata contract and an integrity hash.

The exporter checks its own output (as Ultralytics and Optimum do) but fails instead of
warning: a converted model that differs from the evaluated one never reaches the final path.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from busi.runtime.card import ModelCard
from busi.runtime.contract import (
    CAM_WEIGHTS_NAME,
    FEATURES_NAME,
    INPUT_NAMES,
    OUTPUT_NAME,
    SEGMENTER_INPUT,
    SEGMENTER_OUTPUT,
    Parity,
    Provenance,
)
from busi.runtime.errors import ExportError, ExportUsageError, Int8GateRefused, describe
from busi.runtime.log import get as get_logger
from busi.runtime.model_dir import ModelDir

from .onnx_io import SEGMENTER_DOC, ort_session, remove_with_sidecar, write_model

PARITY_MIN_IMAGES = 32
#: held-out images go through ONNX Runtime and TensorFlow this many at a time (as Keras'
#: predict does): the whole test split in one run made each hold ResNet50's activations for
#: 110 images at once (2.6 GB peak for each on the real model; 2.0 and 1.7 GB in slices)
PARITY_BATCH = 32
GRADCAM_REL_TOLERANCE = 1e-4  # features and Grad-CAM weights, relative to their largest value

_LOG = get_logger(__name__)


@dataclass
class Loaded:
    """A model folder opened for export: its files, its card and the Keras classifier."""

    dir: ModelDir
    card: ModelCard
    model: object  # keras.Model

    @property
    def size(self) -> int:
        return self.card.info.input.size


def load_model_dir(model_dir: str | Path) -> Loaded:
    """Open MODEL_DIR: card.json + model.keras with inputs image/mask and 3 outputs."""
    md = ModelDir(model_dir)
    if not md.path.is_dir():
        raise ExportUsageError(f"{md.path}: model folder not found")
    kp = md.keras
    if not kp.is_file():
        raise ExportUsageError(f"{kp}: not found (train first: busi-train fit / make train)")
    card = md.read_card()
    from busi.train import model as _model  # noqa: F401  (registers the custom layer)
    from busi.train.backend import keras

    try:
        model = keras.models.load_model(kp, compile=False)
    except Exception as e:  # corrupt zip, wrong format, unknown layers
        raise ExportUsageError(f"{kp}: cannot load Keras model ({describe(e, 200)})") from None
    names = sorted(t.name.split(":")[0] for t in model.inputs)
    if names != sorted(INPUT_NAMES):
        raise ExportUsageError(f"{kp}: model inputs are {names}, expected {list(INPUT_NAMES)}")
    if len(model.outputs) != 1 or model.outputs[0].shape[-1] != len(card.info.classes):
        raise ExportUsageError(f"{kp}: expected one output of {len(card.info.classes)} class probabilities")
    if int(model.inputs[0].shape[1]) != card.info.input.size:
        raise ExportUsageError(f"{kp}: input is {model.inputs[0].shape[1]} px, the card says {card.info.input.size}")
    return Loaded(md, card, model)


def classifier_function(model):
    """The function export converts: the classifier's probabilities, plus, for Grad-CAM
    without TensorFlow, the last conv block's feature map A and the closed-form Grad-CAM
    weights alpha[n, k, c] = d logit_c / d A[n, :, :, k] averaged over space.

    The head is GAP -> Dense 256 (ReLU) -> Dropout (identity at inference) -> Dense 3, so
    d logit_c / d GAP_k = sum_j W1[k, j] * 1[h_j > 0] * W2[j, c], and every spatial position
    gets 1 / (h * w) of it."""
    from busi.train.backend import keras, tf
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


#: tf2onnx's switch (tf2onnx.constants.ENV_TF2ONNX_CATCH_ERRORS) for its optimizers' fallback
_CATCH_ERRORS = "TF2ONNX_CATCH_ERRORS"

#: the name of the dynamic first axis of every input and output
BATCH_AXIS = "batch"


def _to_onnx(fn, spec, opset: int, outputs: set[str]):
    from busi.train.backend import quiet, tf

    # isort: split
    import tf2onnx

    # tf2onnx deep-copies the graph (with its 100 MB of weights) before each of its ONNX
    # optimizers, to fall back if one fails: 36 copies for this model, and the conversion grew
    # to 12.7 GB on the 224 px model (6.9 GB without the fallback, 3x faster). Without it a
    # failing optimizer is a conversion error (export fails; none ever has).
    saved = os.environ.get(_CATCH_ERRORS)
    os.environ[_CATCH_ERRORS] = "FALSE"
    try:
        with quiet():  # grappler's "Starting new session" lines
            onnx_model, _ = tf2onnx.convert.from_function(tf.function(fn, input_signature=spec), input_signature=spec, opset=opset)
    finally:
        if saved is None:
            os.environ.pop(_CATCH_ERRORS, None)
        else:
            os.environ[_CATCH_ERRORS] = saved
    got = {o.name for o in onnx_model.graph.output}
    if got != outputs:
        raise ExportError(f"converted graph has outputs {sorted(got)}, expected {sorted(outputs)}")
    name_batch_axis(onnx_model)
    return onnx_model


def name_batch_axis(onnx_model, name: str = BATCH_AXIS) -> None:
    """tf2onnx names the dynamic first axis of each input and output `unk__1524` and the like:
    call it `batch` wherever that symbol appears (inputs, outputs, inner shapes), so that a
    reader of the graph (Netron, Triton, onnx tools) sees what it is."""
    g = onnx_model.graph
    symbols = {t.type.tensor_type.shape.dim[0].dim_param for t in [*g.input, *g.output]
               if t.type.tensor_type.shape.dim and t.type.tensor_type.shape.dim[0].dim_param}
    for t in [*g.input, *g.output, *g.value_info]:
        for d in t.type.tensor_type.shape.dim:
            if d.dim_param in symbols:
                d.dim_param = name


def convert(md: Loaded, opset: int):
    """tf2onnx conversion with an explicit signature and named outputs (the Keras 3 +
    tf2onnx traps, tf2onnx issues 2329/2348, avoided): inputs image, mask; outputs
    probabilities, features, cam_weights; dynamic batch axis."""
    from busi.train.backend import tf

    S = md.size
    spec = [
        tf.TensorSpec((None, S, S, 3), tf.float32, name="image"),
        tf.TensorSpec((None, S, S, 1), tf.float32, name="mask"),
    ]
    return _to_onnx(classifier_function(md.model), spec, opset, {OUTPUT_NAME, FEATURES_NAME, CAM_WEIGHTS_NAME})


def heldout_rows(md: ModelDir, n_min: int = PARITY_MIN_IMAGES) -> tuple[list[dict], list[dict]]:
    """(the test split's manifest rows, filled up from val and train to n_min on a tiny data
    set, which the figures say; the whole manifest)."""
    from busi.train.dataset import read_manifest

    manifest = read_manifest(md.manifest)
    rows = [r for r in manifest if r["split"] == "test"]
    for extra in ("val", "train"):
        if len(rows) < n_min:
            rows += [r for r in manifest if r["split"] == extra][: n_min - len(rows)]
    return rows, manifest


def parity_inputs(md: Loaded, n_min: int = PARITY_MIN_IMAGES, seed: int = 0) -> dict[str, dict]:
    """Held-out images with box and gt masks, plus edge inputs. name -> {"image","mask"}."""
    from busi.train.inputs import eval_masks, lesion_sizes, load_rows

    root = md.card.data.root
    rows, manifest = heldout_rows(md.dir, n_min)
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


def _batched(run, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`run(part)` -> {name: array} over `inputs` (arrays of equal length) in slices of
    PARITY_BATCH rows, the outputs concatenated."""
    n, batch = len(next(iter(inputs.values()))), PARITY_BATCH
    parts = [run({k: v[i : i + batch] for k, v in inputs.items()}) for i in range(0, n, batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def parity(md: Loaded, session, sets: dict, tolerance: float) -> dict:
    """Keras vs ONNX Runtime on every input set: max abs diff and argmax agreement of the
    probabilities (the gate), and the relative difference of the Grad-CAM outputs."""
    from busi.train.backend import tf

    reference = tf.function(classifier_function(md.model))
    names = [o.name for o in session.get_outputs()]

    def ort_outputs(feed):
        return dict(zip(names, session.run(None, feed)))

    def tf_outputs(feed):
        return {out: t.numpy() for out, t in reference(tf.constant(feed["image"]), tf.constant(feed["mask"])).items()}

    worst_name, worst, worst_cam = None, -1.0, 0.0
    per = {}
    n_total = agree_total = 0
    for name, x in sets.items():
        k = md.model.predict(x, batch_size=PARITY_BATCH, verbose=0)
        feed = {"image": x["image"], "mask": x["mask"]}
        outs = _batched(ort_outputs, feed)
        o = outs[OUTPUT_NAME]
        d = float(np.abs(k - o).max())
        agree = int((k.argmax(1) == o.argmax(1)).sum())
        ref = _batched(tf_outputs, feed)
        cam = max(_rel_diff(ref[out], outs[out]) for out in (FEATURES_NAME, CAM_WEIGHTS_NAME))
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


def export(model_dir: str | Path, opset: int = 17, tolerance: float = 1e-4, int8: bool = False,
           calibration_images: int = 0, int8_optional: bool = False) -> dict:
    """Convert, gate, annotate and write MODEL_DIR/model.onnx (+ .sha256); optional INT8.
    With `int8_optional`, an INT8 gate that refuses is a logged note, not an error."""
    from busi.train.backend import tf  # TensorFlow first, quietly, before tf2onnx imports it

    # isort: split
    import onnx
    import tf2onnx

    from busi.train.provenance import now

    md = load_model_dir(model_dir)
    files = md.dir
    t0 = time.time()
    _LOG.info("converting %s (opset %d) ...", files.keras, opset)
    try:
        onnx_model = convert(md, opset)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"{files.keras}: tf2onnx conversion failed ({describe(e, 200)})") from None
    _LOG.info("converted in %.1fs", time.time() - t0)
    sets, n_rows, splits = parity_inputs(md)
    session = ort_session(onnx_model.SerializeToString())
    par = parity(md, session, sets, tolerance)
    par["heldout_images"] = n_rows
    par["heldout_from"] = {s: splits.count(s) for s in sorted(set(splits))}
    _LOG.info(
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
    tools = {"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__}
    provenance = replace(md.card.info.provenance, exported=now(), versions={**md.card.info.provenance.versions, **tools})
    info = replace(md.card.info, provenance=provenance, parity=Parity(
        **{k: par[k] for k in ("tolerance", "max_abs_diff", "worst_input", "argmax_agreement", "inputs", "gradcam_rel_diff")}))
    facts = write_model(onnx_model, files.onnx, info.to_metadata())
    facts.update({"opset": opset, "parity": par, "versions": tools, "exported": provenance.exported})
    if files.segmenter_keras.is_file():
        facts["segmenter"] = export_segmenter(files, opset, tolerance, provenance)
    else:
        remove_with_sidecar(files.segmenter_onnx)
    refusal = None
    if int8:
        from .quantize import quantize_gated

        try:
            facts["int8"] = quantize_gated(md, files.onnx, info, calibration_images)
        except Int8GateRefused as e:
            refusal = e
            facts["int8"] = {"refused": str(e), "tried": e.figures}
    replace(md.card, info=info, export=facts).write(files.card)
    if refusal is not None:
        if not int8_optional:
            raise refusal
        _LOG.warning("note: %s", refusal)
    return facts


def export_segmenter(md: ModelDir, opset: int, tolerance: float, provenance: Provenance) -> dict:
    """segmenter.keras -> segmenter.onnx with the same kind of parity gate: max abs
    difference of lesion probabilities within the tolerance, and every pixel that is more
    than the tolerance away from the threshold on the same side of it."""
    from busi.train.backend import keras, tf
    from busi.train.inputs import load_rows

    src = md.segmenter_keras
    sc = md.read_segmenter_card()
    try:
        model = keras.models.load_model(src, compile=False)
    except Exception as e:
        raise ExportUsageError(f"{src}: cannot load the segmenter ({describe(e, 200)})") from None
    S, thr = sc.info.input.size, sc.info.threshold
    _LOG.info("converting %s (opset %d) ...", src, opset)
    spec = [tf.TensorSpec((None, S, S, 3), tf.float32, name=SEGMENTER_INPUT)]
    try:
        onnx_model = _to_onnx(lambda image: {SEGMENTER_OUTPUT: model(image, training=False)}, spec, opset, {SEGMENTER_OUTPUT})
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"{src}: tf2onnx conversion failed ({describe(e, 200)})") from None
    rows, _ = heldout_rows(md)
    img = load_rows(sc.data.root, rows, S).images.astype(np.float32)
    sets = {"heldout": img, "zero_image": np.zeros((2, S, S, 3), np.float32), "batch_1": img[:1], "batch_7": img[:7]}
    session = ort_session(onnx_model.SerializeToString())

    def ort_mask(feed):
        return {SEGMENTER_OUTPUT: session.run([SEGMENTER_OUTPUT], feed)[0]}

    worst, worst_name, flips, n = -1.0, None, 0, 0
    for name, x in sets.items():
        k = model.predict(x, batch_size=PARITY_BATCH, verbose=0)
        o = _batched(ort_mask, {SEGMENTER_INPUT: x})[SEGMENTER_OUTPUT]
        d = float(np.abs(k - o).max())
        if d > worst:
            worst, worst_name = d, name
        clear = np.abs(k - thr) > tolerance
        flips += int(((k >= thr) != (o >= thr))[clear].sum())
        n += len(x)
    par = Parity(tolerance=tolerance, max_abs_diff=worst, worst_input=worst_name, inputs=n, pixel_flips=flips,
                 passed=bool(worst <= tolerance and flips == 0))
    _LOG.info(f"segmenter parity vs Keras on {n} inputs: max abs diff {worst:.2e} (worst: {worst_name}), {flips} thresholded pixels differ")
    if not par.passed:
        raise ExportError(
            f"segmenter parity gate failed: max abs diff {worst:.3e} on '{worst_name}' (tolerance {tolerance:.0e}), "
            f"{flips} pixels flipped; no segmenter.onnx written"
        )
    own = sc.info.provenance
    info = replace(sc.info, parity=par, provenance=replace(
        provenance, data_fingerprint=own.data_fingerprint or sc.data.fingerprint, trained=own.trained,
        git_commit=own.git_commit or provenance.git_commit, weights=None))
    facts = write_model(onnx_model, md.segmenter_onnx, info.to_metadata(), SEGMENTER_DOC)
    replace(sc, info=info).write(md.segmenter_card)
    return facts | {"parity": par.to_json()}
