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


class _Reader:
    """CalibrationDataReader over training-split images with their (trained-source) masks.

    Supports ORT's strided calibration (`__len__`, `set_range`): activations are collected a
    few batches at a time and their ranges merged, so memory does not grow with the number
    of calibration images (ResNet50 at 224 px keeps about 100 MB of activations per image)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, batch: int = 8):
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


def _split_arrays(md, split: str, limit: int | None = None):
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


def _spatial_kernels(path: Path) -> list[str]:
    """Weights of the convolutions with a kernel larger than 1x1 (ResNet50: the 7x7 stem and
    the 16 3x3 convolutions). They are quantized per tensor, asymmetric; the 1x1 convolutions
    per channel, symmetric. ONNX Runtime picks its QLinearConv kernel by the weights' zero
    point: symmetric weights run the direct "ConvSym" kernels (AVX2 / AVX-512 VNNI), others
    im2col + its integer GEMM, which uses AMX where the CPU has it. Measured per layer on an
    Intel Xeon with AMX (bench/peak.py's conv GEMM shapes, ORT's profiler, batch 8): the 3x3
    and 7x7 layers took 32.5 ms as ConvSym and 22.5 ms as GEMM; 1x1 layers 30 ms as ConvSym and
    up to 2x that as GEMM. Together: 3.39x over FP32 at batch 8, was 3.09x."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    dims = {i.name: tuple(i.dims) for i in m.graph.initializer}
    return [n.input[1] for n in m.graph.node
            if n.op_type == "Conv" and len(dims.get(n.input[1], ())) == 4 and dims[n.input[1]][2] * dims[n.input[1]][3] > 1]


def quantize_gated(md, fp32_path: Path, info: ModelInfo, calibration_images: int, method: str | None = None) -> dict:
    """Quantize, then gate on the held-out split. Writes model.int8.onnx only when it passes."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.time()
    cal_arr, cal_masks = _split_arrays(md, "train", calibration_images)
    test_arr, test_masks = _split_arrays(md, "test")
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
        # the faster weight layout first; the all per-channel one when its gate fails (per-tensor
        # weights on the 3x3 kernels cost accuracy on some models)
        layouts = {"hybrid": {name: [{"symmetric": False}] for name in _spatial_kernels(pre)}, "per-channel": {}}
        for (layout, overrides), name in ((lo, m) for lo in layouts.items() for m in methods):
            q = Path(td) / f"q_{layout}_{name}.onnx"
            reader = _Reader(cal_arr.images.astype(np.float32), cal_masks)
            # strided: a few batches' activations at a time, ranges merged (bounded memory).
            # (CalibMaxIntermediateOutputs looks like the same thing but, in onnxruntime
            # 1.31, drops the batches it folds away instead of merging their ranges.)
            extra = {"CalibStridedMinMax": reader.stride(), "TensorQuantOverrides": overrides}
            if name == "Percentile":
                extra["CalibPercentile"] = 99.99
            try:
                with captured_output():  # its histogram progress prints go nowhere
                    quantize_static(
                        str(pre),
                        str(q),
                        reader,
                        quant_format=QuantFormat.QDQ,
                        per_channel=True,  # but the spatial kernels: TensorQuantOverrides
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
                        extra_options=extra,
                    )
                s8 = ort_session(str(q))
                p8, ood8 = _outputs(s8, q, info, test_arr.images, test_masks)
            except Exception as e:  # a calibration method that breaks is a failed try, not a crash
                msg = describe(e)
                tried.append({"calibration": name, "weights": layout, "error": msg, "argmax_agreement": 0.0, "passed": False,
                              "malignant_sensitivity_fp32": sens32, "malignant_sensitivity_int8": None})
                _LOG.info(f"int8 ({name}, {layout} weights): quantization failed ({msg}) -> fail")
                continue
            agree = float((p8.argmax(1) == p32.argmax(1)).mean())
            sens8 = _sensitivity(y, p8[:, MALIGNANT], t)
            drop = (sens32 - sens8) if (sens32 is not None and sens8 is not None) else 0.0
            fig = {
                "calibration": name,
                "weights": layout,
                "argmax_agreement": agree,
                "max_abs_diff": float(np.abs(p8 - p32).max()),
                "malignant_sensitivity_fp32": sens32,
                "malignant_sensitivity_int8": sens8,
                "heldout_images": int(len(y)),
                "calibration_images": int(len(cal_arr)),
                # reported, not gated: the guard's thresholds were set on FP32 features
                "ood_flag_agreement": None if ood32 is None else float((ood8 == ood32).mean()),
            }
            fig["passed"] = bool(agree >= MIN_AGREEMENT and drop <= MAX_SENSITIVITY_DROP + 1e-12)
            tried.append(fig)
            _LOG.info(
                f"int8 ({name}, {layout} weights): argmax agreement {agree:.4f} (gate >= {MIN_AGREEMENT}), malignant sensitivity "
                f"{_fmt(sens8)} vs fp32 {_fmt(sens32)} (max drop {MAX_SENSITIVITY_DROP}) -> {'pass' if fig['passed'] else 'fail'}"
                + ("" if ood32 is None else f"; out-of-distribution flags agree on {fig['ood_flag_agreement']:.4f}")
            )
            if fig["passed"]:
                quant = {**fig, "format": "QDQ", "type": "int8", "activations": "uint8", "quantized_ops": BACKBONE_OPS,
                         "weights": "int8, " + ("1x1 kernels per-channel symmetric, larger kernels per-tensor asymmetric"
                                                if layout == "hybrid" else "per-channel symmetric")}
                facts = write_model(onnx.load(str(q)), md.dir.int8, replace(info, quantization=quant).to_metadata())
                _LOG.info("int8 model done in %.0fs", time.time() - t0)
                return {**fig, **facts, "tried": tried}
    remove_with_sidecar(md.dir.int8)
    best = max(tried, key=lambda f: f["argmax_agreement"])
    raise Int8GateRefused(
        f"INT8 gate failed for every calibration ({', '.join(m for m in methods)}) and weight layout (hybrid, "
        f"per-channel): best argmax agreement "
        f"{best['argmax_agreement']:.4f} (gate >= {MIN_AGREEMENT}), malignant sensitivity {_fmt(best['malignant_sensitivity_int8'])} "
        f"vs fp32 {_fmt(best['malignant_sensitivity_fp32'])} (max drop {MAX_SENSITIVITY_DROP}); kept only model.onnx",
        tried,
    )
