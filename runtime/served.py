"""A model as an inference server offers it: the tensor data types of every side (the v2
protocol, numpy, ONNX, ONNX Runtime) in one table, and the one Triton model configuration
that `busi-export --triton` writes as config.pbtxt and busi-serve answers as JSON."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NodeArg:
    """An input or output as ONNX Runtime's `session.get_inputs()` describes it: the shape the
    other session kinds (a v2 server, OpenVINO) offer in its place."""

    name: str
    shape: list
    type: str


@dataclass(frozen=True)
class ModelMeta:
    """`session.get_modelmeta()`'s one field busi reads: the model's metadata."""

    custom_metadata_map: dict

#: one row a data type: v2 protocol name (Triton's is "TYPE_" + it), numpy, ONNX TensorProto
#: element type, ONNX Runtime type name
TENSOR_TYPES = (
    ("FP32", np.float32, 1, "tensor(float)"),
    ("FP16", np.float16, 10, "tensor(float16)"),
    ("FP64", np.float64, 11, "tensor(double)"),
    ("UINT8", np.uint8, 2, "tensor(uint8)"),
    ("INT8", np.int8, 3, "tensor(int8)"),
    ("INT16", np.int16, 5, "tensor(int16)"),
    ("INT32", np.int32, 6, "tensor(int32)"),
    ("INT64", np.int64, 7, "tensor(int64)"),
    ("BOOL", np.bool_, 9, "tensor(bool)"),
)
#: v2 name -> numpy dtype
NUMPY = {v2: dt for v2, dt, _, _ in TENSOR_TYPES}
#: ONNX element type -> v2 name
FROM_ONNX = {elem: v2 for v2, _, elem, _ in TENSOR_TYPES}
#: ONNX Runtime type name -> v2 name
FROM_ORT = {name: v2 for v2, _, _, name in TENSOR_TYPES}


def triton_config(name: str, inputs: list[dict], outputs: list[dict], parameters: dict[str, str], max_batch: int,
                  max_delay_us: int, preferred: tuple[int, ...] = (), kind: str | None = None,
                  tensorrt: bool = False) -> dict:
    """The model configuration in Triton's JSON form (what `GET /v2/models/NAME/config` answers
    and tritonclient's get_model_config reads), from v2 tensor descriptions ({name, datatype,
    shape} with the batch axis; Triton's dims go without it). `preferred` batch sizes, an
    instance `kind` (KIND_GPU, KIND_CPU) and TensorRT (GPU only) are what a repository adds."""
    def entry(t):
        return {"name": t["name"], "data_type": "TYPE_" + t["datatype"], "dims": list(t["shape"][1:])}

    batching = {"preferred_batch_size": [b for b in preferred if b <= max_batch]} if preferred else {}
    config = {
        "name": name, "platform": "onnxruntime_onnx", "backend": "onnxruntime", "max_batch_size": max_batch,
        "input": [entry(t) for t in inputs], "output": [entry(t) for t in outputs],
        "dynamic_batching": {**batching, "max_queue_delay_microseconds": int(max_delay_us)},
    }
    if kind:
        config["instance_group"] = [{"count": 1, "kind": kind}]
    if tensorrt and kind == "KIND_GPU":
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": {"precision_mode": "FP16", "max_workspace_size_bytes": "1073741824"}}]}}
    config["parameters"] = {k: {"string_value": v} for k, v in sorted(parameters.items())}
    return config
