"""busi-serve as a child process on a free loopback port: for tests, the benchmark and tools
that need a server for a while (`with running(model_dir) as server: ...server.url...`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Server:
    url: str
    proc: subprocess.Popen

    def peak_rss_mb(self) -> float:
        """The server's peak resident memory so far (Linux: VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc (not Linux?)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@contextmanager
def running(model: str | Path, *args, token: str | None = None, log: Path | None = None, timeout: float = 120):
    """Start busi-serve MODEL on a free loopback port; yield a `Server` once it is ready; stop it."""
    port = free_port()
    env = dict(os.environ)
    env.pop("BUSI_TOKEN", None)
    if token:
        env["BUSI_TOKEN"] = token
    exe = Path(sys.executable).parent / "busi-serve"
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([str(exe), str(model), "--host", "127.0.0.1", "--port", str(port), *map(str, args)],
                            stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.time() + timeout
        while not _ready(url):
            if proc.poll() is not None:
                tail = Path(log).read_text()[-2000:] if log else ""
                raise RuntimeError(f"busi-serve exited with {proc.returncode} before it was ready\n{tail}")
            if time.time() > end:
                raise RuntimeError(f"busi-serve was not ready after {timeout:.0f}s")
            time.sleep(0.3)
        yield Server(url, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a caller may have stopped it
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log:
            out.close()
