"""The remote backend: the model runs on an inference server, everything else stays here.

`Predictor(server="http://host:8000")` and `busi-infer --server URL` talk the open inference
protocol (v2, KServe/Triton) through tritonclient to `busi-serve` or to a Triton that serves
the repository of `busi-export --triton`. Decoding, masks, the segmenter's decision, TTA,
Grad-CAM, the out-of-distribution guard and the reports stay local: only `session.run` goes
over the network. `RemoteSession` offers the part of ONNX Runtime's InferenceSession that the
Predictor and the Segmenter use, so they do not know the difference.

The model's metadata contract comes from the server's model configuration (`parameters`,
where busi-serve and the Triton repository carry every `busi.*` key verbatim and
`busi.sha256`) and is validated like a local file's.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import numpy as np

from .contract import PREFIX, SHA256_KEY
from .errors import BusiError, ServerError, describe
from .served import NUMPY, ModelMeta, NodeArg

#: how often a request that the server turned away (503, queue full) is tried again
RETRIES_503 = 8



def split_url(url: str) -> tuple[str, bool]:
    """'http://host:port' -> ('host:port', ssl?). A bare 'host:port' means http."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerError(f"server {url!r}: expected http://host:port or https://host:port")
    if parts.path not in ("", "/") or parts.query:
        raise ServerError(f"server {url!r}: give the server's root (http://host:port), not a path")
    return parts.netloc, parts.scheme == "https"


class RemoteSession:
    """One model on a v2 inference server, with the calls of an ORT InferenceSession."""

    def __init__(self, url: str, model: str, token: str | None = None, timeout: float = 60.0):
        import importlib.util

        if importlib.util.find_spec("tritonclient") is None:
            raise ServerError(f"server {url}: the remote backend needs tritonclient: pip install 'busi[remote]'")
        self.url = url.rstrip("/")
        self.model = model
        self.label = f"server {self.url} model {model}"
        self._netloc, self._ssl = split_url(self.url)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = float(timeout)
        self._local = threading.local()  # tritonclient's HTTP client is not thread-safe: one per thread
        meta = self._call(lambda c: c.get_model_metadata(model, headers=self._headers))
        config = self._call(lambda c: c.get_model_config(model, headers=self._headers))
        params = config.get("parameters") or {}
        self.parameters = {k: (v.get("string_value") if isinstance(v, dict) else v) for k, v in params.items()}
        self._inputs = [_arg(t) for t in meta.get("inputs", [])]
        self._outputs = [_arg(t) for t in meta.get("outputs", [])]
        self._types = {t.name: t.type for t in self._inputs}

    # ---- what the Predictor and the Segmenter call -----------------------------------------
    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    def get_providers(self):
        return [f"remote {self.url}"]

    def get_modelmeta(self):
        return ModelMeta({k: v for k, v in self.parameters.items() if k.startswith(PREFIX) and k != SHA256_KEY})

    @property
    def sha256(self) -> str | None:
        return self.parameters.get(SHA256_KEY)

    def run(self, names, feed: dict[str, np.ndarray]):
        import tritonclient.http as th

        inputs = []
        for name, arr in feed.items():
            dt = self._types.get(name, "FP32")
            arr = np.ascontiguousarray(arr, dtype=NUMPY.get(dt, np.float32))
            x = th.InferInput(name, list(arr.shape), dt)
            x.set_data_from_numpy(arr, binary_data=True)
            inputs.append(x)
        names = list(names or [o.name for o in self._outputs])
        outputs = [th.InferRequestedOutput(n, binary_data=True) for n in names]
        res = self._call(lambda c: c.infer(self.model, inputs, outputs=outputs, headers=self._headers))
        out = [res.as_numpy(n) for n in names]
        if any(o is None for o in out):
            raise ServerError(f"{self.label}: the answer lacks output(s) {[n for n, o in zip(names, out) if o is None]}")
        return out

    # ---- transport ---------------------------------------------------------------------------
    def _client(self):
        import tritonclient.http as th

        c = getattr(self._local, "client", None)
        if c is None:
            c = th.InferenceServerClient(self._netloc, ssl=self._ssl, connection_timeout=self._timeout,
                                         network_timeout=self._timeout)
            self._local.client = c
        return c

    def _call(self, fn):
        """fn(client) with one-line errors naming the server; 503 (the server's queue is full)
        is tried again after a pause, RETRIES_503 times."""
        from tritonclient.utils import InferenceServerException

        delay = 0.05
        for attempt in range(RETRIES_503 + 1):
            try:
                return fn(self._client())
            except InferenceServerException as e:
                status = e.status()
                if status == "503" and attempt < RETRIES_503:
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                msg = (e.message() or "").strip().splitlines()
                raise ServerError(f"{self.label}: HTTP {status}: {msg[0][:200] if msg else 'error'}") from None
            except BusiError:
                raise
            except Exception as e:  # refused, reset, timed out, name not resolved
                self._local.client = None  # a broken connection is not reused
                raise ServerError(f"{self.label}: {describe(e)}") from None
        raise AssertionError("unreachable")


def _arg(t: dict) -> NodeArg:
    shape = [None if int(d) < 0 else int(d) for d in t.get("shape", [])]
    return NodeArg(str(t.get("name")), shape, str(t.get("datatype")))
