"""`busi-serve MODEL_DIR`: one inference service for many scanners (see docs/serving.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from busi.runtime.cli_options import TYPER, early_version, quiet_option, verbose_option, version_option
from busi.runtime.log import verbosity_callback

app = typer.Typer(**TYPER)


@app.command()
def serve(
    model: Path = typer.Argument(..., help="Exported model folder (model.onnx, segmenter.onnx) or a busi .onnx file."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0: every interface; needs a token, and TLS in front)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="HTTP port (v2 protocol: /v2/models/...)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="BUSI_TOKEN", help="Require 'Authorization: Bearer TOKEN' (default: $BUSI_TOKEN); health and /metrics stay open."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, max=256, help="Most images per session run (1: no batching)."),
    max_delay_ms: float = typer.Option(2.0, "--max-delay-ms", min=0.0, max=1000.0, help="How long the first request of a batch waits for others."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Requests waiting per model; beyond it: 503 with Retry-After."),
    max_request_bytes: int = typer.Option(128 << 20, "--max-request-bytes", min=1024, help="Larger request bodies get 413 (binary tensors)."),
    max_json_bytes: int = typer.Option(4 << 20, "--max-json-bytes", min=1024, help="Larger JSON bodies (and binary requests' JSON headers) get 413."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", min=0.1, help="Seconds a connection may take to send a request's headers; then it is closed."),
    keep_alive_timeout: float = typer.Option(15.0, "--keep-alive-timeout", min=0.1, help="Seconds an idle connection stays open after a response (keep it above a proxy's idle timeout)."),
    max_connections: int = typer.Option(512, "--max-connections", min=1, help="Open connections at most; one more is answered 503 and closed."),
    insecure_no_token: bool = typer.Option(False, "--insecure-no-token", help="Listen beyond loopback without a token (only behind something that checks every request)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="ONNX Runtime intra-op threads (default: all cores)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if it really works, else CPU) | cuda | cpu."),
    verbose: int = verbose_option(),
    quiet: bool = quiet_option(),
    version: bool = version_option(),
):
    """Serve the classifier, the segmenter and a record endpoint (`busi`) on the v2 inference protocol.

    A Triton client (tritonclient) or busi-infer --server uses it as it would use Triton on the
    repository of busi-export --triton. Research software, not a medical device.
    """
    verbosity_callback(verbose, quiet)
    from .app import serve as run

    run(model, host, port, token, max_batch, max_delay_ms / 1e3, max_queue, max_request_bytes, threads, device,
        max_json_bytes=max_json_bytes, header_timeout=header_timeout, keep_alive_timeout=keep_alive_timeout,
        max_connections=max_connections, insecure_no_token=insecure_no_token)


def main() -> None:
    import importlib.util

    from busi.runtime.errors import run_cli

    early_version("busi-serve")  # answered without the extra
    if importlib.util.find_spec("kserve") is None:
        import sys

        sys.stderr.write("error: busi-serve needs kserve: pip install 'busi[serve]'\n")
        raise SystemExit(2)
    run_cli(app)
