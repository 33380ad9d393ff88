"""Request bodies, decoded off the event loop: the v2 binary tensor extension without copying
tensors into Python lists, and JSON with a one-line error that never echoes the body.

kserve 0.21's REST decoder turns each binary input into a Python list of numbers and back
(`InferRequest.from_bytes`: `set_data_from_numpy(..., binary_data=False)`), which cost more
than the model itself on a 96 px classifier (py-spy: 302 of 885 server samples in that list
comprehension, 394 in session.run), and it refuses binary BYTES that are not UTF-8 (an image
file). `request_from_bytes` hands the raw bytes to kserve's `InferRequest` (`raw_inputs`),
where kserve's own `InferInput.as_numpy` reads them with `np.frombuffer`.

JSON bodies are validated by kserve's own request model (`InferenceRequest`, pydantic) in
one pass; FastAPI did the same on the event loop, where a 100 MB body stopped every other
request (health included) for 19 s, and its 422 answer echoed the body. busi-serve's infer
route calls `BinaryDataPlane.decode_inference_request` in a worker thread instead, so the
event loop gets turns between parsing, validation and conversion; each of those holds the
interpreter lock while it runs, which is why busi-serve also keeps JSON bodies small
(`--max-json-bytes`, 4 MiB) and sends large tensors the binary way.
"""

from __future__ import annotations

import asyncio

import orjson
from fastapi import Request, Response
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from kserve.protocol.rest.v2_endpoints import V2Endpoints
from pydantic import ValidationError


def first_error(e) -> str:
    """A pydantic (or FastAPI) validation error in one short line, without the input it rejected."""
    try:
        errors = e.errors(include_url=False, include_input=False, include_context=False)
    except TypeError:  # FastAPI's RequestValidationError: no options (its "input" is not used here)
        errors = list(e.errors())
    if not errors:
        return "invalid request"
    loc = ".".join(str(p) for p in errors[0]["loc"])
    msg = " ".join(str(errors[0]["msg"]).split())[:160]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else msg + more


def request_from_json(body: bytes, model_name: str) -> InferRequest:
    """An InferRequest from a JSON body (kserve's request model and conversion)."""
    try:
        req = InferenceRequest.model_validate_json(body)
    except ValidationError as e:
        raise InvalidInput(f"not a v2 inference request: {first_error(e)}") from None
    return InferRequest.from_inference_request(req, model_name)


def request_from_bytes(body: bytes, json_length: int, model_name: str) -> InferRequest:
    """An InferRequest from a binary-extension body: JSON header, then the inputs' bytes."""
    if not 0 < json_length <= len(body):
        raise InvalidInput(f"{INFERENCE_CONTENT_LENGTH_HEADER} {json_length} does not fit a body of {len(body)} bytes")
    try:
        head = orjson.loads(body[:json_length])
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"unreadable request header: {e}") from None
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
        raise InvalidInput("request header without an inputs list")
    view, start, inputs, raw = memoryview(body), json_length, [], []
    for item in head["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("datatype"), str) \
                or not isinstance(item.get("shape"), list) or not all(type(d) is int for d in item["shape"]):
            raise InvalidInput("each input needs name, datatype (strings) and shape (a list of integers)")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"input {item['name'][:64]}: parameters must be an object")
        inp = InferInput(name=item["name"], shape=item["shape"], datatype=item["datatype"], parameters=params)
        if "data" in item:
            inp.data = item["data"]
            raw.append(None)
        elif "binary_data_size" in params:
            size = params["binary_data_size"]
            if type(size) is not int or size < 0 or start + size > len(body):
                raise InvalidInput(f"input {item['name'][:64]}: binary_data_size {size!r:.20} runs past the body")
            raw.append(bytes(view[start:start + size]))
            start += size
        else:
            raise InvalidInput(f"input {item['name'][:64]} has neither data nor binary_data_size")
        inputs.append(inp)
    outs = head.get("outputs") or []
    if not isinstance(outs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                             and isinstance(o.get("parameters") or {}, dict) for o in outs):
        raise InvalidInput("outputs must be a list of objects with a name (and parameters as an object)")
    if not isinstance(head.get("parameters") or {}, dict) or not isinstance(head.get("id") or "", str):
        raise InvalidInput("request parameters must be an object and id a string")
    outputs = [RequestedOutput(name=o["name"], parameters=o.get("parameters")) for o in outs]
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=head.get("id"), parameters=head.get("parameters"),
                        request_outputs=outputs or None, raw_inputs=raw if any(r is not None for r in raw) else None)


class BinaryDataPlane(DataPlane):
    def decode_inference_request(self, body, headers, model_name):
        """Called in a worker thread by busi-serve's infer route (`app.serve`)."""
        if isinstance(body, bytes):
            n = headers.get(INFERENCE_CONTENT_LENGTH_HEADER)
            if n is None:
                return request_from_json(body, model_name)
            try:
                n = int(n)
            except ValueError:
                raise InvalidInput(f"bad {INFERENCE_CONTENT_LENGTH_HEADER}") from None
            return request_from_bytes(body, n, model_name)
        return super().decode_inference_request(body, headers, model_name)


def infer_endpoint(dataplane: BinaryDataPlane):
    """`POST /v2/models/{model_name}/infer`: kserve's own endpoint (`V2Endpoints.infer`), handed
    a request decoded in a worker thread. kserve's route has FastAPI parse and validate the JSON
    body on the event loop first."""
    endpoints = V2Endpoints(dataplane)

    async def infer(request: Request, response: Response, model_name: str):
        body = await request.body()
        parsed = await asyncio.to_thread(dataplane.decode_inference_request, body, dict(request.headers), model_name)
        return await endpoints.infer(request, response, model_name, parsed)

    return infer
