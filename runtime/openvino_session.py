"""The OpenVINO backend (`--device openvino`, `pip install 'busi[openvino]'`): the same ONNX
file, FP32 or INT8 QDQ, run by Intel's OpenVINO runtime (oneDNN: AVX-512 VNNI, AMX) instead of
ONNX Runtime.

`OpenVINOSession` offers the part of ONNX Runtime's InferenceSession that the Predictor and the
Segmenter use (get_inputs, get_outputs, get_modelmeta, get_providers, run), as the remote
backend's session does, so the rest of busi does not know the difference: same inputs, same
outputs (probabilities, features, Grad-CAM weights), same metadata contract. OpenVINO's ONNX
reader keeps the file's metadata_props (under the model's rt_info "framework").

Precision: OpenVINO's CPU plugin runs float layers in bf16 by default on CPUs that have
bf16 instructions (AVX-512 BF16, AMX), which moves probabilities by about 1e-2. busi asks for
f32 (`INFERENCE_PRECISION_HINT`), so FP32 stays within the export's parity tolerance of ONNX
Runtime and an INT8 file's float parts run as ONNX Runtime runs them.
"""

from __future__ import annotations

import threading

import numpy as np

from .contract import CAM_WEIGHTS_NAME, FEATURES_NAME, INPUT_NAMES, OUTPUT_NAME, SEGMENTER_INPUT, SEGMENTER_OUTPUT
from .errors import ModelError, UsageError, describe
from .served import ModelMeta, NodeArg

#: what to install for --device openvino
INSTALL = "pip install 'busi[openvino]'"
PROVIDER = "OpenVINO CPU"
_CONTRACT_NAMES = {OUTPUT_NAME, FEATURES_NAME, CAM_WEIGHTS_NAME, SEGMENTER_INPUT, SEGMENTER_OUTPUT, *INPUT_NAMES}


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def _import():
    try:
        import openvino
    except ImportError as e:
        raise UsageError(f"--device openvino needs OpenVINO, which is not installed ({describe(e)}): {INSTALL}") from None
    return openvino


class OpenVINOSession:
    """One ONNX model compiled for OpenVINO's CPU plugin, with the calls of an ORT InferenceSession.
    Safe to share between threads: each thread runs its own infer request."""

    def __init__(self, path: str, threads: int | None = None):
        ov = _import()
        self.path = str(path)
        core = ov.Core()
        try:
            model = core.read_model(self.path)
        except Exception as e:
            raise ModelError(self.path, f"OpenVINO cannot read the ONNX model ({describe(e)})") from None
        self._meta = _metadata(model)
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise ModelError(self.path, f"OpenVINO cannot compile the model for CPU ({describe(e)})") from None
        self._inputs = [_arg(p) for p in self._compiled.inputs]
        self._outputs = [_arg(p) for p in self._compiled.outputs]
        self._local = threading.local()

    # ---- what the Predictor and the Segmenter call -----------------------------------------
    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    def get_providers(self):
        return [PROVIDER]

    def get_modelmeta(self):
        return ModelMeta(dict(self._meta))

    def run(self, names, feed: dict[str, np.ndarray]):
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self._compiled.create_infer_request()
        res = req.infer({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed.items()})
        by_name = {}
        for port, value in res.items():
            for n in port.get_names():
                by_name[n] = value
        names = list(names or [o.name for o in self._outputs])
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ModelError(self.path, f"the model has no output(s) {missing}")
        # copies: the request's output buffers are reused by the next run on this thread
        return [np.array(by_name[n], copy=True) for n in names]


def _metadata(model) -> dict[str, str]:
    """The ONNX file's metadata_props, as OpenVINO's ONNX reader keeps them."""
    try:
        fw = model.get_rt_info()["framework"]
    except Exception:
        return {}
    out = {}
    for k, v in fw.items():
        out[str(k)] = v.astype(str) if hasattr(v, "astype") else str(v)
    return out


def _arg(port) -> NodeArg:
    """An input or output as ONNX Runtime lists it. OpenVINO gives a port every name its tensor
    had in the graph (an output can also carry the name of the node that made it, such as
    'Transpose__1499:0'): the contract's name where it is one of them."""
    names = port.get_names()
    known = sorted(names & _CONTRACT_NAMES)
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    return NodeArg(known[0] if known else port.get_any_name(), shape, str(port.get_element_type()))
