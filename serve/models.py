"""The models busi-serve offers on the open inference protocol (v2), as kserve models.

- `busi_classifier`, `busi_segmenter` (`TensorModel`): the exported ONNX graphs, with the
  names, tensors and metadata of the Triton repository (`busi-export --triton`), so that a
  client cannot tell busi-serve from Triton.
- `busi` (`RecordModel`): one encoded image (PNG, JPEG or DICOM: input `image`, the file's
  bytes as UINT8 [n], or base64 as one BYTES element)
  with an optional `mask` ("auto", "none" or a box "x,y,w,h"), answered with the prediction
  record that `busi-infer` writes (BYTES output `record`, JSON).

Every model's session runs behind a `Batcher`; the `busi` model's Predictor reaches the
classifier and segmenter through the same batchers, so its requests are batched with the
raw ones.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from kserve import InferRequest, InferResponse, Model
from kserve.protocol.infer_type import InferOutput

from busi.runtime.contract import SHA256_KEY
from busi.runtime.errors import BusiError, InputError, describe
from busi.runtime.served import FROM_ORT, NUMPY, triton_config

from .batcher import Batcher, QueueFull


class Rejected(Exception):
    """A request the server answers with a 4xx/5xx status and a one-line error."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        self.status, self.headers = status, headers or {}
        super().__init__(message)


def _tensors(args) -> list[dict]:
    return [{"name": a.name, "datatype": FROM_ORT.get(a.type, "FP32"),
             "shape": [d if isinstance(d, int) and d > 0 else -1 for d in a.shape]} for a in args]


class BatchedSession:
    """An ORT session whose `run` goes through a Batcher (called from worker threads)."""

    def __init__(self, session, batcher: Batcher):
        self._session, self._batcher = session, batcher

    def __getattr__(self, name):
        return getattr(self._session, name)

    def run(self, names, feed):
        outs = self._batcher.submit_threadsafe(feed)
        return [outs[n] for n in (names or list(outs))]


class TensorModel(Model):
    """An ONNX graph as a v2 model: the inputs and outputs of the file, batched."""

    def __init__(self, name: str, session, parameters: dict[str, str], max_batch: int, max_delay: float,
                 max_queue: int, observe=None):
        super().__init__(name)
        self.session = session
        #: the graph's tensors as the v2 protocol describes them (name, datatype, shape with -1)
        self.in_types, self.out_types = _tensors(session.get_inputs()), _tensors(session.get_outputs())
        self.inputs = {t["name"]: t for t in self.in_types}
        self.outputs = [t["name"] for t in self.out_types]
        self.config = triton_config(name, self.in_types, self.out_types, parameters, max_batch, int(max_delay * 1e6))
        self.batcher = Batcher(name, self._run, max_batch, max_delay, max_queue, observe)
        self.ready = True

    def _run(self, feed):
        return dict(zip(self.outputs, self.session.run(self.outputs, feed)))

    def get_input_types(self):
        return self.in_types

    def get_output_types(self):
        return self.out_types

    def feed(self, payload: InferRequest) -> dict[str, np.ndarray]:
        """The request's inputs as arrays, checked against the graph: 400 with one line otherwise."""
        got = {i.name: i for i in payload.inputs}
        if sorted(got) != sorted(self.inputs):
            raise Rejected(400, f"model {self.name}: inputs {sorted(got)}, expected {sorted(self.inputs)}")
        rows = {name: (i.shape or [0])[0] for name, i in got.items()}
        if max(rows.values()) > self.batcher.max_batch:  # before any conversion: a batch never grows past it
            raise Rejected(413, f"model {self.name}: {max(rows.values())} rows in one request, above the server's "
                                f"--max-batch {self.batcher.max_batch}; send them in several requests")
        feed = {}
        for name, t in self.inputs.items():
            want = t["datatype"]
            if got[name].datatype != want:
                raise Rejected(400, f"model {self.name}: input {name} is {got[name].datatype}, expected {want}")
            try:
                arr = np.asarray(got[name].as_numpy(), dtype=NUMPY[want])
            except Exception as e:
                raise Rejected(400, f"model {self.name}: input {name}: {type(e).__name__}: {e}") from None
            dims = t["shape"]
            if arr.ndim != len(dims) or any(d > 0 and d != s for d, s in zip(dims[1:], arr.shape[1:])):
                raise Rejected(400, f"model {self.name}: input {name} has shape {list(arr.shape)}, expected {dims}")
            if len(arr) < 1:
                raise Rejected(400, f"model {self.name}: input {name} has no rows")
            feed[name] = np.ascontiguousarray(arr)
        return feed

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        if any(i.data is not None for i in payload.inputs):  # JSON lists: numpy converts them off the event loop
            feed = await asyncio.to_thread(self.feed, payload)
        else:
            feed = self.feed(payload)
        outs = await self.batcher.submit(feed)
        names = [o.name for o in (payload.request_outputs or [])] or self.outputs
        unknown = [n for n in names if n not in outs]
        if unknown:
            raise Rejected(400, f"model {self.name}: no output(s) {unknown}; it has {self.outputs}")
        res = []
        for n in names:
            o = InferOutput(n, list(outs[n].shape), self.out_types[self.outputs.index(n)]["datatype"])
            o.set_data_from_numpy(outs[n], binary_data=_binary(payload, n))  # JSON lists only when asked for
            res.append(o)
        return InferResponse(payload.id or "", self.name, res, use_binary_outputs=payload.use_binary_outputs,
                             requested_outputs=payload.request_outputs)


def _binary(payload: InferRequest, name: str) -> bool:
    """Whether output `name` goes back as binary: its own binary_data parameter, else the
    request's binary_data_output."""
    for o in payload.request_outputs or []:
        if o.name == name and o.binary_data is not None:
            return bool(o.binary_data)
    return bool(payload.use_binary_outputs)


class RecordModel(Model):
    """`busi`: an encoded image in, busi-infer's prediction record out."""

    def __init__(self, predictor, batchers: list[Batcher], max_inflight: int, workers: int = 4):
        super().__init__("busi")
        self.predictor, self.batchers = predictor, batchers
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="busi")
        self._inflight, self._max_inflight = 0, max(1, int(max_inflight))
        self.config = {"name": "busi", "platform": "busi", "max_batch_size": 0,
                       "input": [{"name": "image", "data_type": "TYPE_UINT8", "dims": [-1]},
                                 {"name": "mask", "data_type": "TYPE_STRING", "dims": [1], "optional": True}],
                       "output": [{"name": "record", "data_type": "TYPE_STRING", "dims": [1]}],
                       "parameters": {SHA256_KEY: {"string_value": predictor.sha256 or ""}}}
        self.ready = True

    def get_input_types(self):
        return [{"name": "image", "datatype": "UINT8", "shape": [-1]}, {"name": "mask", "datatype": "BYTES", "shape": [1]}]

    def get_output_types(self):
        return [{"name": "record", "datatype": "BYTES", "shape": [1]}]

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        got = {i.name: i for i in payload.inputs}
        if "image" not in got or set(got) - {"image", "mask"}:
            raise Rejected(400, f"model busi: inputs {sorted(got)}; expected image (UINT8 [n] or base64 BYTES) and "
                                "optionally mask (BYTES: auto, none or x,y,w,h)")
        image = _one_bytes(got["image"], "image")
        mask = _one_bytes(got["mask"], "mask").decode("utf-8", "replace").strip() if "mask" in got else None
        if self._inflight >= self._max_inflight:
            raise QueueFull("busi", self._inflight, 0.1)
        for b in self.batchers:  # the Predictor's sessions reach them from worker threads
            b.start()
        self._inflight += 1
        try:
            res = await asyncio.get_running_loop().run_in_executor(self._pool, self._predict, image, mask or None)
        finally:
            self._inflight -= 1
        out = InferOutput("record", [1], "BYTES")
        out.set_data_from_numpy(np.array([json.dumps(res.to_dict(), sort_keys=True, allow_nan=False).encode()], dtype=object),
                                binary_data=_binary(payload, "record"))
        return InferResponse(payload.id or "", "busi", [out], use_binary_outputs=payload.use_binary_outputs)

    def _predict(self, image: bytes, mask: str | None):
        try:
            return self.predictor.predict(image, mask)
        except InputError as e:  # undecodable, damaged, too large, a box outside the image
            raise Rejected(400 if "above the limit" not in str(e) else 413, str(e)) from None
        except QueueFull:
            raise
        except BusiError as e:
            raise Rejected(400, str(e)) from None


def _one_bytes(inp, name: str) -> bytes:
    """The file's bytes: a UINT8 tensor [n] (binary, what busi's client sends), or one BYTES
    element holding base64 (JSON clients; kserve decodes BYTES as UTF-8 text, so raw image
    bytes cannot travel as BYTES) or, for the mask, plain text."""
    try:
        arr = inp.as_numpy()
    except Exception as e:
        raise Rejected(400, f"model busi: input {name}: {describe(e, 120)}") from None
    if inp.datatype == "UINT8" and arr.ndim == 1:
        return arr.tobytes()
    if inp.datatype != "BYTES" or arr.size != 1:
        raise Rejected(400, f"model busi: input {name} must be UINT8 [n] (the file's bytes) or one BYTES element (one "
                            f"image per request; the server batches concurrent requests), got {inp.datatype} "
                            f"of shape {list(arr.shape)}")
    v = arr.reshape(-1)[0]
    v = v if isinstance(v, bytes) else str(v).encode()
    if name == "mask":
        return v
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected(400, "model busi: input image as BYTES must be base64 (or send UINT8 [n])") from None
