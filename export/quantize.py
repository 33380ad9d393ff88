"""Static INT8 (QDQ, per-channel) with onnxruntime.quantization, behind an accuracy gate."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from busi.runtime.contract import MALIGNANT, ModelInfo
from busi.runtime.errors import Int8GateRefused, describe
from busi.runtime.log import get as get_logger
from busi.runtime.runner import ModelRunner
from busi.runtime.session import captured_output

from .onnx_io import ort_session, remove_with_sidecar, write_model

_LOG = get_logger(__name__)

MIN_AGREEMENT = 0.99
#: Relu too: tf2onnx leaves each block's Relu as its own node; unquantized, every one of them
#: stood between a DequantizeLinear and a QuantizeLinear (49 such pairs, a quarter of the INT8
#: run time at 224 px). Quantized, ONNX Runtime fuses it into QLinearConv / drops it, and one Q
#: and two DQ remain: batch 8 went from 1.98x to 3.09x over FP32, batch 1 from 2.02x to 2.43x
#: (Intel Xeon with AMX, the same run, argmax agreement 1.000 both).
BACKBONE_OPS = ["Conv", "Add", "MaxPool", "Relu"]
MAX_SENSITIVITY_DROP = 0.01


def _has_calibration_cache() -> bool:
    """Whether this onnxruntime's quantize_static can save and reuse calibrated ranges."""
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


class _Reader:
    """CalibrationDataReader over training-split images with their (trained-source) masks.

    Supports ORT's strided calibration (`__len__`, `set_range`): activations are collected a
    few batches at a time and their ranges merged, so memory does not grow with the number
    of calibration images (ResNet50 at 224 px keeps about 100 MB of activations per image)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, batch: int = 8):
        # every batch the same size: the last one is filled up with the first images again.
        # Percentile and Entropy build histograms, and ORT stacks the batches it collects at once
        # into one array, so a shorter last batch (543 training images in 8s) failed them with
        # "inhomogeneous shape" (onnxruntime#18792); a repeated image moves no MinMax range and
        # weighs 1/544 in a histogram
        short = -len(images) % batch if len(images) > batch else 0
        if short:
            fill = np.resize(np.arange(len(images)), short)
            images, masks = np.concatenate([images, images[fill]]), np.concatenate([masks, masks[fill]])
        self.items = [
            {"image": images[i : i + batch], "mask": masks[i : i + batch]} for i in range(0, len(images), batch)
        ]
        self.it = iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.it = iter(self.items[start_index:end_index])

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.items)

    def stride(self, most: int = 4) -> int:
        """The largest number of batches <= `most` that divides the batches evenly (ORT's rule)."""
        return max(d for d in range(1, most + 1) if len(self.items) % d == 0)


def _fmt(v: float | None) -> str:
    """A sensitivity for the log; None when the held-out split has no malignant image."""
    return "n/a" if v is None else f"{v:.3f}"


def split_arrays(md, split: str, limit: int | None = None):
    """A split of the model folder's manifest, decoded, with the masks of the trained source."""
    from busi.train.dataset import read_manifest
    from busi.train.inputs import eval_masks, lesion_sizes, load_rows

    manifest = read_manifest(md.dir.manifest)
    root = md.card.data.root
    train = load_rows(root, [r for r in manifest if r["split"] == "train"][: limit or None], md.size)
    sizes = lesion_sizes(train.gt)
    if split == "train":
        arr = train
    else:
        arr = load_rows(root, [r for r in manifest if r["split"] == split], md.size)
    return arr, eval_masks(arr, md.card.info.mask.source, sizes, md.card.seed).astype(np.float32)


def _outputs(session, path, info: ModelInfo, images, masks, batch: int = 16) -> tuple[np.ndarray, np.ndarray | None]:
    """What the runtime reports on these images (`ModelRunner`: calibrated probabilities) and
    the out-of-distribution flags it would raise with the trained mask source (None without a guard)."""
    runner = ModelRunner(session, path, info)
    probs, flags = [], []
    for i in range(0, len(images), batch):
        p, _, feats = runner.run(images[i : i + batch].astype(np.float32), masks[i : i + batch])
        probs.append(p)
        if feats is not None:
            scores, limit = runner.ood(feats, info.mask.source)
            flags.append(scores > limit)
    return np.concatenate(probs), (np.concatenate(flags) if flags else None)


def _sensitivity(y, p_mal, t) -> float | None:
    pos = y == MALIGNANT
    return float((p_mal[pos] >= t).mean()) if pos.any() else None


#: the convolutions kept in float: the stem (conv1) and stage 2 (conv2_block1..3), the first 11 of
#: ResNet50's 53. Where the agreement is lost, measured on the real-BUSI model (seed recipe,
#: ImageNet weights, frozen, 224 px; MinMax ranges of the 543 training images; argmax agreement
#: with FP32 on the 110 held-out images, gate 0.99): all INT8 0.9636 (per-channel weights) and
#: 0.9545 (1x1 per-channel, larger kernels per-tensor); stage 5 in float 0.9636, stages 4-5 in
#: float 0.9727, the stem alone 0.9273; stem + stage 2 in float 0.9909 (pass, malignant
#: sensitivity unchanged), 2.1x FP32 at batch 1 and 2.0x at batch 8 (AMD EPYC, 2 cores, loaded).
#: Those layers run at the highest resolution, where one quantisation step is largest against
#: the ultrasound's low-contrast texture; later stages in INT8 cost little agreement.
#: That pass was one changed answer from failing, and on a second real-BUSI model (the same recipe
#: trained with --precision bf16; 5 of its 110 held-out images within 0.02 of a tie) no layout
#: passes: all INT8 0.9455, stem + stage 2 float 0.9727, stem to stage 4 float 0.9909 but 0.85x
#: FP32 at batch 1. What was measured on that model (validation / held-out mean |p_int8 - p_fp32|,
#: all INT8: 0.019 / 0.020), none of it a way through: any one of the 53 convolutions alone in
#: float 0.0165-0.0243 (the error is spread over the network, no layer dominates), the 8 / 16 / 26
#: convolutions that helped most alone kept float together 0.021 / 0.022 / 0.019, residual Adds
#: and their Relus in float 0.019, 16-bit activations 0.0086 (still 0.9727 agreement: the int8
#: weights alone move answers), 16-bit weights 0.0195, empirical bias correction (per-channel
#: output means matched to FP32 on training images) worse (0.033 with five convolutions
#: corrected). With 8-bit activations and weights the gate needs a model whose answers are not
#: that close to ties; the gate stays as it is and such a model ships FP32 only.
FLOAT_CONVS = 11

#: the layouts tried for each calibration method, fastest first: every convolution in INT8
#: (3.3x FP32 on the real-BUSI model, where its agreement was 0.9636), then the stem
#: and stage 2 in float (2.1x; what the real-BUSI model passes with). The first that passes the
#: gate is written: the fastest file that keeps the answers.
LAYOUTS = (("all-int8", 0), ("stem+stage2-float", FLOAT_CONVS))


def passes(fig: dict) -> bool:
    """The gate: argmax agreement with FP32 on the held-out split, and malignant sensitivity."""
    s32, s8 = fig["malignant_sensitivity_fp32"], fig["malignant_sensitivity_int8"]
    drop = (s32 - s8) if (s32 is not None and s8 is not None) else 0.0
    return bool(fig["argmax_agreement"] >= MIN_AGREEMENT and drop <= MAX_SENSITIVITY_DROP + 1e-12)


def _early_nodes(path: Path, n_convs: int = FLOAT_CONVS) -> list[str]:
    """The backbone nodes (BACKBONE_OPS) that come before the graph's (n_convs + 1)-th
    convolution, in graph order: the stem and stage 2 of ResNet50, kept in float."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    out, convs = [], 0
    for n in m.graph.node:
        if n.op_type == "Conv":
            convs += 1
            if convs > n_convs:
                break
        if n.op_type in BACKBONE_OPS:
            out.append(n.name)
    return out


def quantize_gated(md, fp32_path: Path, info: ModelInfo, calibration_images: int, method: str | None = None) -> dict:
    """Quantize, then gate on the held-out split. Writes model.int8.onnx only when it passes."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reuse_ranges = _has_calibration_cache()
    t0 = time.time()
    cal_arr, cal_masks = split_arrays(md, "train", calibration_images)
    test_arr, test_masks = split_arrays(md, "test")
    fp32 = ort_session(str(fp32_path))
    p32, ood32 = _outputs(fp32, fp32_path, info, test_arr.images, test_masks)
    y = test_arr.labels
    t = info.malignant_threshold
    sens32 = _sensitivity(y, p32[:, MALIGNANT], t)
    methods = [method] if method else ["MinMax", "Percentile", "Entropy"]
    tried = []
    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        # per-channel symmetric weights; LAYOUTS, fastest first, for each calibration method.
        # Read once for every attempt: the calibration images as float32, each layout's float nodes
        cal_images = cal_arr.images.astype(np.float32)
        floats = {layout: _early_nodes(pre, n_float) if n_float else [] for layout, n_float in LAYOUTS}
        for name, (layout, n_float) in ((m, lo) for m in methods for lo in LAYOUTS):
            keep_float = floats[layout]
            q = Path(td) / f"q_{layout}_{name}.onnx"
            reader = _Reader(cal_images, cal_masks)
            # strided: a few batches' activations at a time, ranges merged (bounded memory).
            # (CalibMaxIntermediateOutputs looks like the same thing but, in onnxruntime
            # 1.31, drops the batches it folds away instead of merging their ranges.)
            extra = {"CalibStridedMinMax": reader.stride()}
            if name == "Percentile":
                extra["CalibPercentile"] = 99.99
            # each calibration method's activation ranges are computed once and reused by any
            # other layout (ranges do not depend on how weights are quantized): the calibration
            # pass is most of an attempt's time (ResNet50 at 224 px on 2 cores)
            cache = {"calibration_cache_path": str(Path(td) / f"ranges_{name}.json")} if reuse_ranges else {}
            try:
                with captured_output():  # its histogram progress prints go nowhere
                    quantize_static(
                        str(pre),
                        str(q),
                        reader,
                        quant_format=QuantFormat.QDQ,
                        per_channel=True,  # one scale per output channel, every convolution
                        # U8S8: uint8 activations, int8 weights. With int8 activations (S8S8)
                        # ORT on x86 left the 20 convolutions that feed residual Adds in
                        # float (1.3x over FP32 at 224 px); U8S8 runs all 53 as QLinearConv (2.3x)
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, name),
                        # the backbone only: the head (Dense layers, softmax, Grad-CAM outputs)
                        # stays float. Quantized logits made two classes tie exactly on a
                        # demo model (0.459 / 0.459); the head is 0.5 M of 24 M weights.
                        op_types_to_quantize=BACKBONE_OPS,
                        nodes_to_exclude=keep_float,
                        extra_options=extra,
                        **cache,
                    )
                s8 = ort_session(str(q))
                p8, ood8 = _outputs(s8, q, info, test_arr.images, test_masks)
            except Exception as e:  # a calibration method that breaks is a failed try, not a crash
                msg = describe(e)
                tried.append({"calibration": name, "layout": layout, "error": msg, "argmax_agreement": 0.0, "passed": False,
                              "malignant_sensitivity_fp32": sens32, "malignant_sensitivity_int8": None})
                _LOG.info(f"int8 ({name}, {layout}): quantization failed ({msg}) -> fail")
                continue
            agree = float((p8.argmax(1) == p32.argmax(1)).mean())
            sens8 = _sensitivity(y, p8[:, MALIGNANT], t)
            fig = {
                "calibration": name,
                "layout": layout,
                "argmax_agreement": agree,
                "max_abs_diff": float(np.abs(p8 - p32).max()),
                "malignant_sensitivity_fp32": sens32,
                "malignant_sensitivity_int8": sens8,
                "heldout_images": int(len(y)),
                "calibration_images": int(len(cal_arr)),
                # reported, not gated: the guard's thresholds were set on FP32 features
                "ood_flag_agreement": None if ood32 is None else float((ood8 == ood32).mean()),
            }
            fig["passed"] = passes(fig)
            tried.append(fig)
            _LOG.info(
                f"int8 ({name}, {layout}): argmax agreement {agree:.4f} (gate >= {MIN_AGREEMENT}), malignant sensitivity "
                f"{_fmt(sens8)} vs fp32 {_fmt(sens32)} (max drop {MAX_SENSITIVITY_DROP}) -> {'pass' if fig['passed'] else 'fail'}"
                + ("" if ood32 is None else f"; out-of-distribution flags agree on {fig['ood_flag_agreement']:.4f}")
            )
            if fig["passed"]:
                quant = {**fig, "format": "QDQ", "type": "int8", "activations": "uint8", "quantized_ops": BACKBONE_OPS,
                         "layout": layout, "weights": "int8, per-channel symmetric",
                         "float": (f"the stem and stage 2 (the first {n_float} convolutions, {len(keep_float)} nodes)"
                                   if n_float else "the head only")}
                facts = write_model(onnx.load(str(q)), md.dir.int8, replace(info, quantization=quant).to_metadata())
                _LOG.info("int8 model done in %.0fs", time.time() - t0)
                return {**fig, **facts, "tried": tried}
    remove_with_sidecar(md.dir.int8)
    best = max(tried, key=lambda f: f["argmax_agreement"])
    raise Int8GateRefused(
        f"INT8 gate failed for every calibration ({', '.join(m for m in methods)}) and layout "
        f"({', '.join(lo for lo, _ in LAYOUTS)}; per-channel weights): best argmax agreement "
        f"{best['argmax_agreement']:.4f} (gate >= {MIN_AGREEMENT}), malignant sensitivity {_fmt(best['malignant_sensitivity_int8'])} "
        f"vs fp32 {_fmt(best['malignant_sensitivity_fp32'])} (max drop {MAX_SENSITIVITY_DROP}); kept only model.onnx",
        tried,
    )
