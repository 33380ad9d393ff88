"""What the tests share besides fixtures: where things are and how to run the console scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from busi.serve.process import free_port  # noqa: F401  (the tests' one free-port helper)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(__file__).resolve().parent / "data" / "busi-sample"
BIN = Path(sys.executable).parent
PER_CLASS = 16


def cli(name: str, *args, check: bool = True, timeout: int = 900, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run one of the project's console scripts as a user would."""
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{name} {' '.join(map(str, args))} -> {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}")
    return r


def on_a_terminal(name: str, *args, timeout: int = 900) -> tuple[subprocess.CompletedProcess, str]:
    """Run a console script with stderr on a pseudo-terminal (stdout piped), as a user at a
    terminal sees it: (the result with its stdout, what the terminal showed)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([str(BIN / name), *map(str, args)], stdout=subprocess.PIPE, stderr=slave,
                            env={**os.environ, "COLUMNS": "120"})
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=timeout)
    os.close(master)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), ""), seen.decode("utf-8", "replace")


#: what a progress bar leaves in a stream (rate, ETA, carriage returns); none of it off a terminal
PROGRESS_MARKS = ("images/s", "ETA", "\r")


def bench(*args, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """`make bench`'s command: the bench script beside the project, not a console script."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"bench {' '.join(map(str, args))} -> {r.returncode}\nstderr:\n{r.stderr[-3000:]}")
    return r


def bench_module():
    """bench/run.py as a module (it is a script beside the package, not part of it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("busi_bench_run", ROOT / "bench" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def wait_for(check, timeout: float = 60.0, what: str = "condition"):
    end = time.time() + timeout
    while time.time() < end:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
