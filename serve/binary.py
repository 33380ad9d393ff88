"""The v2 binary tensor extension, read without copying tensors into Python lists.

kserve 0.21's REST decoder turns each binary input into a Python list of numbers and back
(`InferRequest.from_bytes`: `set_data_from_numpy(..., binary_data=False)`), which cost more
than the model itself on a 96 px classifier (py-spy: 302 of 885 server samples in that list
comprehension, 394 in session.run), and it refuses binary BYTES that are not UTF-8 (an image
file). `BinaryDataPlane` keeps the raw bytes on each input, where kserve's own
`InferInput.as_numpy` reads them with `np.frombuffer`; everything else is kserve's.
"""

from __future__ import annotations

import orjson
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput


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
    view, start, inputs = memoryview(body), json_length, []
    for item in head["inputs"]:
        if not isinstance(item, dict) or "name" not in item or "datatype" not in item or "shape" not in item:
            raise InvalidInput("each input needs name, datatype and shape")
        params = item.get("parameters") or {}
        inp = InferInput(name=item["name"], shape=item["shape"], datatype=item["datatype"], parameters=params)
        if "data" in item:
            inp.data = item["data"]
        elif "binary_data_size" in params:
            size = params["binary_data_size"]
            if not isinstance(size, int) or size < 0 or start + size > len(body):
                raise InvalidInput(f"input {item['name']}: binary_data_size {size} runs past the body")
            inp._raw_data = bytes(view[start:start + size])
            start += size
        else:
            raise InvalidInput(f"input {item['name']} has neither data nor binary_data_size")
        inputs.append(inp)
    outputs = [RequestedOutput(name=o["name"], parameters=o.get("parameters")) for o in head.get("outputs") or []]
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=head.get("id"),
                        parameters=head.get("parameters"), request_outputs=outputs or None)


class BinaryDataPlane(DataPlane):
    def decode_inference_request(self, body, headers, model_name):
        if isinstance(body, bytes) and headers.get(INFERENCE_CONTENT_LENGTH_HEADER) is not None:
            try:
                n = int(headers[INFERENCE_CONTENT_LENGTH_HEADER])
            except ValueError:
                raise InvalidInput(f"bad {INFERENCE_CONTENT_LENGTH_HEADER}") from None
            return request_from_bytes(body, n, model_name)
        return super().decode_inference_request(body, headers, model_name)
