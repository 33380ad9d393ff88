"""`busi-node`: run busi as a DICOM node beside the PACS (see docs/node.md)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import List, Optional

import typer

from busi.runtime.cli_options import (
    TYPER,
    early_version,
    expect_sha256_option,
    quiet_option,
    token_option,
    verbose_option,
    version_option,
)
from busi.runtime.errors import BusiError, UsageError
from busi.runtime.log import verbosity_callback

from .config import NodeConfig

app = typer.Typer(**TYPER)


@app.command()
def node(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file with the settings below (the command line wins)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="busi .onnx classifier."),
    spool: Optional[Path] = typer.Option(None, "--spool", help="Folder for received images and pending results (survives restarts)."),
    dest: Optional[str] = typer.Option(None, "--dest", help="Where results go: AE@host:port (the PACS)."),
    ae: Optional[str] = typer.Option(None, "--ae", help="This node's AE title (default BUSI)."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to listen on (default 0.0.0.0; 127.0.0.1 for this machine only)."),
    port: Optional[int] = typer.Option(None, "--port", help="DICOM port (default 11112)."),
    allow: Optional[List[str]] = typer.Option(None, "--allow", help="Calling AE title allowed to send (repeat); default: any."),
    allow_host: Optional[List[str]] = typer.Option(None, "--allow-host", help="Sender address allowed (repeat); default: any."),
    check_called_ae: Optional[bool] = typer.Option(None, "--check-called-ae/--any-called-ae", help="Refuse associations addressed to another AE title than --ae (default: check)."),
    send_tries: Optional[int] = typer.Option(None, "--send-tries", min=1, help="Set a result aside after the destination refused it this many times (5; 0xCxxx: at once)."),
    mask: Optional[str] = typer.Option(None, "--mask", help="auto (default when segmenter.onnx is beside the model) or none."),
    segmenter: Optional[Path] = typer.Option(None, "--segmenter", help="Segmenter .onnx for mask auto."),
    queue: Optional[int] = typer.Option(None, "--queue", min=1, help="Images waiting before C-STOREs are answered 'out of resources' (256)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help="Refuse instances with more pixels (rows x columns x frames)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="ONNX Runtime threads (default: one fewer than the cores, at least 1: the results are written on the other)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, max=256, help="Classify what waits in the spool in batches of up to this many images, one model run each (8)."),
    batch_delay: Optional[float] = typer.Option(None, "--batch-delay", min=0.0, max=10.0, help="Seconds the worker waits at most for more images to fill a batch when it has nothing else in hand (0.02)."),
    study_idle: Optional[float] = typer.Option(None, "--study-idle", min=0.0, help="Seconds without a new image after which a study gets its summary SR (30; 0: none)."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="PEM certificate: DICOM over TLS."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="PEM key of --tls-cert."),
    tls_ca: Optional[Path] = typer.Option(None, "--tls-ca", help="CA bundle: require client certificates signed by it."),
    server: Optional[str] = typer.Option(None, "--server", help="Run the models on this inference server (http://host:port: busi-serve or Triton) instead of --model."),
    token: Optional[str] = token_option(),
    expect_sha256: Optional[str] = expect_sha256_option(),
    verbose: int = verbose_option(),
    quiet: bool = quiet_option(),
    version: bool = version_option(),
):
    """Receive ultrasound images over DICOM (C-STORE), classify them, store SR + overlay (+ SEG) to --dest.

    One JSON line per instance event on stdout; a status line on stderr. SIGTERM or Ctrl-C stops
    it cleanly; what is in the spool is resumed at the next start. Research software, not a
    medical device.
    """
    verbosity_callback(verbose, quiet)
    from .service import Node

    cfg = NodeConfig.from_sources(
        config, model=model, spool=spool, dest=dest, ae=ae, host=host, port=port, allow=tuple(allow or ()),
        allow_hosts=tuple(allow_host or ()), check_called_ae=check_called_ae, send_tries=send_tries, mask=mask,
        segmenter=segmenter, queue=queue, max_pixels=max_pixels, threads=threads, batch_size=batch_size, batch_delay=batch_delay, study_idle=study_idle, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca, server=server,
        token=token, expect_sha256=expect_sha256)
    if cfg.server is None and not Path(cfg.model).is_file():
        raise UsageError(f"{cfg.model}: model not found")
    n = Node(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    n.start()
    while not stop.wait(0.5) and not n.died.is_set():
        pass
    n.shutdown()
    if n.died.is_set():  # exit non-zero: a service manager (systemd Restart=on-failure) starts it again
        raise BusiError(f"busi-node stopped: {n.death}; what it acknowledged waits in the spool for the next start")


def main() -> None:
    import importlib.util

    from busi.runtime.errors import run_cli

    early_version("busi-node")  # answered without the extra
    if importlib.util.find_spec("pynetdicom") is None or importlib.util.find_spec("highdicom") is None:
        import sys

        sys.stderr.write("error: busi-node needs pynetdicom and highdicom: pip install 'busi[node]'\n")
        raise SystemExit(2)
    run_cli(app)
