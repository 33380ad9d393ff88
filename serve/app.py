"""busi-serve: the exported models on kserve's v2 REST application (open inference protocol v2 over HTTP).

What busi adds to the framework, because Triton clients rely on it or a hospital needs it:
- `GET /v2/models/{name}/config`: the model configuration as Triton gives it, with every
  `busi.*` metadata key and `busi.sha256` in `parameters` (tritonclient's get_model_config);
- dynamic batching with a bounded queue inside each model (`batcher.Batcher`): 503 with
  Retry-After when it is full; more rows in one request than `--max-batch`: 413;
- a bearer token (`--token` or $BUSI_TOKEN) on everything but the health endpoints and
  /metrics; it binds 127.0.0.1 unless told otherwise (kserve's REST server binds 0.0.0.0), and
  refuses to listen beyond loopback without a token unless `--insecure-no-token`;
- only the v2 endpoints a client needs (`ROUTES`): kserve's model repository (load, unload),
  v1, OpenAI and docs routes answer 404, and no model can be unloaded (no repository extension);
- request bodies bounded before they are read (JSON far below binary tensors) and decoded in a
  worker thread, so health and small requests keep answering during a large one;
- header (and body) and keep-alive timeouts and a connection limit (`connections`);
- one-line JSON errors ({"error": ...}) for every 4xx, never echoing the request body;
- Prometheus metrics beside kserve's own on /metrics: requests by model and status, latency,
  batch sizes, queue depth.

Only kserve's public API is used: its FastAPI application, `RESTServer.create_application`,
`ModelRepository`, `DataPlane`, `V2Endpoints` and the `InferRequest` types; uvicorn runs with
busi's own configuration.
"""

from __future__ import annotations

import hmac
import json
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from busi.runtime.contract import SERVED_NAMES, served_parameters
from busi.runtime.errors import ModelError, UsageError
from busi.runtime.log import get as get_logger

_LOG = get_logger(__name__)
#: paths that need no token: probes of the orchestrator and the metrics scraper
OPEN_PATHS = re.compile(r"^/(v2/health/(live|ready)|metrics|)$")
_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)")
#: the endpoints busi-serve answers (method, path); every other path is 404 before it reaches
#: kserve (its model repository load/unload, v1, OpenAI, time-series, docs and openapi routes)
ROUTES = (("GET", re.compile(r"^/(|metrics|v2|v2/health/(live|ready)|v2/models|v2/models/[^/]+(/(ready|config))?)$")),
          ("POST", re.compile(r"^/v2/models/[^/]+/infer$")))


def one_line(message: str, limit: int = 300) -> str:
    """An error message as one short line (what every 4xx body carries)."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
    """ASGI middleware: known endpoints and models, token, body limits, metrics, one-line JSON errors."""

    def __init__(self, app, token: str | None, max_bytes: int, metrics: dict, models: frozenset = frozenset(),
                 max_json_bytes: int | None = None):
        self.app, self.token, self.max_bytes, self.m = app, token, int(max_bytes), metrics
        self.max_json = int(max_json_bytes or max_bytes)
        self.models = models  # metric labels: these names, "other" for any other (no label per made-up name)

    async def _reply(self, send, status: int, message: str, headers: dict | None = None):
        body = json.dumps({"error": one_line(message)}).encode()
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
            method = scope.get("method", "")
            allowed = [want for want, rx in ROUTES if rx.match(path)]
            if not allowed:
                return await self._reply(send_, 404, f"no endpoint {path[:80]!r}")
            if method not in allowed and not (method == "HEAD" and "GET" in allowed):
                return await self._reply(send_, 405, f"{method[:10]} is not allowed on {path[:80]!r}", {"Allow": allowed[0]})
            if m and model == "other":
                return await self._reply(send_, 404, f"model {m.group(1)[:64]!r} not found")
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
                head = headers.get(b"inference-header-content-length")
                if head is None and n > self.max_json:  # a JSON body: parsed whole, so held far smaller
                    return await self._reply(send_, 413, f"JSON request of {n:,} bytes, above the limit of "
                                                         f"{self.max_json:,} (send tensors in binary form)")
                if n > self.max_bytes:
                    return await self._reply(send_, 413, f"request of {n:,} bytes, above the limit of {self.max_bytes:,}")
                if head is not None and (not head.isdigit() or int(head) > self.max_json):
                    return await self._reply(send_, 413 if head.isdigit() else 400,
                                             f"Inference-Header-Content-Length {head[:20].decode('latin-1')!r}: not a length up to "
                                             f"{self.max_json:,}")
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
        params = served_parameters(session.get_modelmeta().custom_metadata_map, sha)
        name = SERVED_NAMES[role]
        return TensorModel(name, session, params, max_batch, max_delay, max_queue, observe(name))

    models = [served("classifier", predictor.session, predictor.sha256)]
    predictor.runner.use(BatchedSession(predictor.session, models[0].batcher))
    seg_path = ModelDir(onnx_path.parent).segmenter_onnx
    if seg_path.is_file():
        seg = predictor.segmenter
        models.append(served("segmenter", seg.session, seg.sha256))
        seg.use(BatchedSession(seg.session, models[-1].batcher))
    models.append(RecordModel(predictor, [m.batcher for m in models], max_inflight=max_queue + max_batch,
                              workers=max(2, max_batch)))
    return predictor, models


def _is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address (127.0.0.0/8, ::1)."""
    import ipaddress
    import socket

    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def check_exposure(host: str, token: str | None, insecure_no_token: bool = False) -> None:
    """Listening beyond this machine without a token is refused, unless asked for by name."""
    if not token and not insecure_no_token and not _is_loopback(host):
        raise UsageError(f"--host {host} listens beyond this machine and no token is set: set --token or $BUSI_TOKEN "
                         "(or --insecure-no-token, when something in front of it checks every request)")


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, max_batch: int = 8,
          max_delay: float = 0.002, max_queue: int = 64, max_request_bytes: int = 128 << 20, threads: int | None = None,
          device: str = "auto", *, max_json_bytes: int = 4 << 20, header_timeout: float = 10.0,
          keep_alive_timeout: float = 15.0, max_connections: int = 512, insecure_no_token: bool = False) -> None:
    """Load the models and serve them until SIGINT/SIGTERM."""
    check_exposure(host, token, insecure_no_token)
    with _own_argv():
        import uvicorn
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
        from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
        from kserve.model_repository import ModelRepository
        from kserve.model_server import app
        from kserve.protocol.rest.server import RESTServer
        from starlette.exceptions import HTTPException
        from starlette.requests import ClientDisconnect

    from .batcher import QueueFull
    from .binary import BinaryDataPlane, first_error, infer_endpoint
    from .connections import ensure_open_files, protocol
    from .models import Rejected

    _check_port(host, port)  # before the models load: a clear error, not uvicorn's after start-up
    ensure_open_files(max_connections)
    metrics = _metrics()
    from busi.runtime.session import few_malloc_arenas, low_peak_loading

    few_malloc_arenas()  # before uvicorn, the batchers and ORT start their threads
    with low_peak_loading():  # as busi-infer loads: what ORT frees while loading goes back
        predictor, models = load_models(model, device, threads, max_batch, max_delay, max_queue, metrics)
    repository = ModelRepository()
    for m in models:
        repository.update(m)
    dataplane = BinaryDataPlane(model_registry=repository)

    def error(status: int, message, headers: dict | None = None):
        return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)

    def handler(status, message=str, headers=lambda e: None):
        async def handle(_request, exc):
            return error(status(exc) if callable(status) else status, message(exc), headers(exc))
        return handle

    async def model_config(model_name: str):
        m = repository.get_model(model_name)
        if m is None:
            return error(404, f"model {model_name[:64]!r} not found")
        return JSONResponse(m.config)

    # busi's routes first (the first route that matches answers), then kserve's application
    app.add_api_route("/v2/models/{model_name}/infer", infer_endpoint(dataplane), methods=["POST"], response_model=None)
    app.add_api_route("/v2/models/{model_name}/config", model_config, methods=["GET"])
    app.add_middleware(Guard, token=token, max_bytes=max_request_bytes, metrics=metrics,
                       models=frozenset(m.name for m in models), max_json_bytes=max_json_bytes)
    # no model repository extension: nothing can load or unload a model, even past the Guard
    RESTServer("kserve.model_server:app", dataplane, None, port, workers=1).create_application()
    # one-line errors that never echo the body, in place of kserve's (each logged with a
    # traceback) and FastAPI's (422, with the input)
    app.add_exception_handler(Rejected, handler(lambda e: e.status, headers=lambda e: e.headers))
    app.add_exception_handler(QueueFull, handler(503, headers=lambda e: {"Retry-After": str(max(1, round(e.retry_after)))}))
    app.add_exception_handler(InvalidInput, handler(400))
    app.add_exception_handler(ModelNotFound, handler(404))
    app.add_exception_handler(ModelNotReady, handler(503))
    app.add_exception_handler(RequestValidationError, handler(400, lambda e: f"bad request: {first_error(e)}"))
    app.add_exception_handler(HTTPException, handler(lambda e: e.status_code, lambda e: e.detail, lambda e: e.headers))
    # a body that stopped coming (closed at the header timeout): nobody is left to answer
    app.add_exception_handler(ClientDisconnect, handler(400, lambda e: "the client went away before its request was whole"))

    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=5,
                            timeout_keep_alive=keep_alive_timeout, http=protocol(max_connections, header_timeout))
    names = ", ".join(m.name for m in models)
    print(f"busi-serve: http://{host}:{port} serves {names} (model sha256 {predictor.sha256}; "
          f"batches of up to {max_batch}, {max_delay * 1e3:g} ms delay, queue {max_queue}"
          f"{'; token required' if token else ''}; {predictor.provider})", file=sys.stderr, flush=True)
    uvicorn.Server(config).run()
