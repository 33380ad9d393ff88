"""busi-serve: the exported models on kserve's ModelServer (open inference protocol v2 over HTTP).

What busi adds to the framework, because Triton clients rely on it or a hospital needs it:
- `GET /v2/models/{name}/config`: the model configuration as Triton gives it, with every
  `busi.*` metadata key and `busi.sha256` in `parameters` (tritonclient's get_model_config);
- dynamic batching with a bounded queue inside each model (`batcher.Batcher`): 503 with
  Retry-After when it is full;
- a bearer token (`--token` or $BUSI_TOKEN) on everything but the health endpoints and
  /metrics; a request body limit (413); one-line JSON errors ({"error": ...});
- Prometheus metrics beside kserve's own on /metrics: requests by model and status, latency,
  batch sizes, queue depth;
- it binds 127.0.0.1 unless told otherwise (kserve's REST server binds 0.0.0.0).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from busi.runtime.contract import SERVED_NAMES
from busi.runtime.errors import ModelError, UsageError
from busi.runtime.log import get as get_logger

_LOG = get_logger(__name__)
#: paths that need no token: probes of the orchestrator and the metrics scraper
OPEN_PATHS = re.compile(r"^/(v2/health/(live|ready)|metrics|)$")
_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)")


@contextmanager
def _own_argv():
    """kserve parses sys.argv when it is imported: let it see none of busi-serve's options."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def _metrics():
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "requests": Counter("busi_requests", "HTTP requests by model and status", ["model", "code"]),
        "latency": Histogram("busi_request_seconds", "HTTP request latency", ["model"],
                             buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)),
        "batch": Histogram("busi_batch_size", "images per session run", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)),
        "queue": Gauge("busi_queue_depth", "requests waiting in the model's queue", ["model"]),
    }


class Guard:
    """ASGI middleware: token, body limit, metrics, one-line JSON errors."""

    def __init__(self, app, token: str | None, max_bytes: int, metrics: dict, models: frozenset = frozenset()):
        self.app, self.token, self.max_bytes, self.m = app, token, int(max_bytes), metrics
        self.models = models  # metric labels: these names, "other" for any other (no label per made-up name)

    async def _reply(self, send, status: int, message: str, headers: dict | None = None):
        body = json.dumps({"error": message}).encode()
        hs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        hs += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": hs})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        m = _MODEL_PATH.match(path)
        model = (m.group(1) if m.group(1) in self.models else "other") if m else "-"
        start, status = time.perf_counter(), [500]

        async def send_(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            headers = dict(scope.get("headers") or [])
            if self.token and not OPEN_PATHS.match(path):
                got = headers.get(b"authorization", b"")
                if not hmac.compare_digest(got, b"Bearer " + self.token.encode()):
                    return await self._reply(send_, 401, "a valid bearer token is required (Authorization: Bearer ...)",
                                             {"WWW-Authenticate": "Bearer"})
            if scope.get("method") in ("POST", "PUT"):
                length = headers.get(b"content-length")
                if length is None:
                    return await self._reply(send_, 411, "requests need a Content-Length")
                try:
                    n = int(length)
                except ValueError:
                    return await self._reply(send_, 400, f"bad Content-Length {length[:40]!r}")
                if n > self.max_bytes:
                    return await self._reply(send_, 413, f"request of {n:,} bytes, above the limit of {self.max_bytes:,}")
            return await self.app(scope, receive, send_)
        finally:
            if model != "-" or path.startswith("/v2/models"):
                self.m["requests"].labels(model, str(status[0])).inc()
                self.m["latency"].labels(model).observe(time.perf_counter() - start)


def _check_port(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None


def load_models(model: str | Path, device: str, threads: int | None, max_batch: int, max_delay: float, max_queue: int,
                metrics: dict):
    """The kserve models of a model folder (or .onnx file): classifier, segmenter when there is
    one, and `busi` (records)."""
    from busi.runtime.model_dir import ModelDir
    from busi.runtime.predictor import Predictor

    from .models import BatchedSession, RecordModel, TensorModel

    path = Path(model)
    onnx_path = path / "model.onnx" if path.is_dir() else path
    if not onnx_path.is_file():
        raise ModelError(onnx_path, "not found (export the model folder first: busi-export MODEL_DIR)")
    predictor = Predictor(onnx_path, device=device, threads=threads)

    def observe(name):
        def f(rows, depth):
            metrics["batch"].labels(name).observe(rows)
            metrics["queue"].labels(name).set(depth)
        return f

    def served(role, session, sha):
        meta = session.get_modelmeta().custom_metadata_map
        params = {k: v for k, v in meta.items() if k.startswith("busi.")}
        params["busi.sha256"] = sha
        name = SERVED_NAMES[role]
        return TensorModel(name, session, params, max_batch, max_delay, max_queue, observe(name))

    models = [served("classifier", predictor.session, predictor.sha256)]
    predictor.session = BatchedSession(predictor.session, models[0].batcher)
    seg_path = ModelDir(onnx_path.parent).segmenter_onnx
    if seg_path.is_file():
        seg = predictor.segmenter
        models.append(served("segmenter", seg.session, seg.sha256))
        seg.session = BatchedSession(seg.session, models[-1].batcher)
    models.append(RecordModel(predictor, [m.batcher for m in models], max_inflight=max_queue + max_batch,
                              workers=max(2, max_batch)))
    return predictor, models


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, max_batch: int = 8,
          max_delay: float = 0.002, max_queue: int = 64, max_request_bytes: int = 128 << 20, threads: int | None = None,
          device: str = "auto") -> None:
    """Load the models and serve them until SIGINT/SIGTERM."""
    with _own_argv():
        from fastapi.responses import JSONResponse
        from kserve import ModelServer
        from kserve.model_server import app
        from kserve.protocol.rest.server import RESTServer

    from .batcher import QueueFull
    from .binary import BinaryDataPlane
    from .models import Rejected

    _check_port(host, port)  # before the models load: a clear error, not uvicorn's after start-up
    metrics = _metrics()
    predictor, models = load_models(model, device, threads, max_batch, max_delay, max_queue, metrics)

    async def rejected(_request, exc: Rejected):
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)

    async def queue_full(_request, exc: QueueFull):
        return JSONResponse({"error": str(exc)}, status_code=503,
                            headers={"Retry-After": str(max(1, round(exc.retry_after)))})

    async def model_config(model_name: str):
        m = server.registered_models.get_model(model_name)
        if m is None:
            return JSONResponse({"error": f"model {model_name} not found"}, status_code=404)
        return JSONResponse(m.config)

    app.add_exception_handler(Rejected, rejected)
    app.add_exception_handler(QueueFull, queue_full)
    app.add_api_route("/v2/models/{model_name}/config", model_config, methods=["GET"])
    app.add_middleware(Guard, token=token, max_bytes=max_request_bytes, metrics=metrics,
                       models=frozenset(m.name for m in models))

    server = ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False, grace_period=5)
    server.dataplane = BinaryDataPlane(model_registry=server.registered_models)  # binary tensors without lists
    # ModelServer.start() with one change: kserve's REST server binds 0.0.0.0; busi binds `host`
    server._register_and_check_atleast_one_model_is_ready(models)
    rest = RESTServer("kserve.model_server:app", server.dataplane, server.model_repository_extension, port,
                      workers=1, grace_period=5)
    rest.config.host = host
    server._rest_server = rest
    server.servers.append(rest.start())
    server.setup_event_loop()

    names = ", ".join(m.name for m in models)
    print(f"busi-serve: http://{host}:{port} serves {names} (model sha256 {predictor.sha256}; "
          f"batches of up to {max_batch}, {max_delay * 1e3:g} ms delay, queue {max_queue}"
          f"{'; token required' if token else ''}; {predictor.provider})", file=sys.stderr, flush=True)
    asyncio.run(server._serve())
