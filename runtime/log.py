"""One log for busi: `logging.getLogger("busi")` and a child per module.

Library code never prints. The CLIs call `setup(verbosity)` once: one handler on stderr, the
message alone (the lines look as they always did), INFO by default, DEBUG with -v, errors
only with -q. Notices about an input or the device (a resized mask, a CPU fallback) are
warnings, progress is info. A program that embeds busi and sets up nothing sees the warnings
(Python's last-resort handler), or configures the "busi" logger as it likes.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import threading
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout

ROOT = "busi"
#: held while a native library's stderr is captured (decoder threads) and while busi itself
#: writes to stderr, so that no line of ours lands in a capture and none of theirs in the terminal
STDERR_LOCK = threading.RLock()


def get(name: str) -> logging.Logger:
    """The logger of a busi module (`busi.train.fit` -> a child of "busi")."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


class _Stderr(logging.StreamHandler):
    """A handler on whatever sys.stderr is at the time of each record (test capture and the
    closed-stream guard replace it after start-up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass

    def emit(self, record):
        with STDERR_LOCK:
            super().emit(record)


def write_stderr(text: str) -> None:
    """busi's own stderr output (error lines, progress): never inside a native capture."""
    with STDERR_LOCK:
        sys.stderr.write(text)
        sys.stderr.flush()


@contextmanager
def captured_output(fds: tuple[int, ...] = (1, 2), python: bool = True):
    """What is written to the file descriptors `fds` while the block runs (native code: ORT's
    CUDA error spam, a decoder library's complaints about damaged data) and, with `python`,
    to Python's sys.stdout/sys.stderr (`preload_dlls` prints) is kept off the terminal and out
    of machine-readable stdout, and handed back in the yielded list when the block ends.
    busi's own stderr lines from other threads wait for the block (STDERR_LOCK)."""
    out: list[str] = []
    with STDERR_LOCK:
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:  # None: closed when Python started (2>&-)
                    stream.flush()
            saved = [os.dup(fd) for fd in fds]
        except (OSError, ValueError):  # no real descriptor (a closed one, an embedded interpreter): nothing to hide
            yield out
            return
        py = io.StringIO()
        with tempfile.TemporaryFile() as tmp, ExitStack() as redirected:
            if python:
                redirected.enter_context(redirect_stdout(py))
                redirected.enter_context(redirect_stderr(py))
            for fd in fds:
                os.dup2(tmp.fileno(), fd)
            try:
                yield out
            finally:
                for fd, old in zip(fds, saved):
                    os.dup2(old, fd)
                    os.close(old)
                tmp.seek(0)
                out.append(py.getvalue() + tmp.read().decode("utf-8", "replace"))


def native_stderr_captured():
    """What native code writes to file descriptor 2 while the block runs (`captured_output`)."""
    return captured_output((2,), python=False)


def setup(verbosity: int = 0) -> logging.Logger:
    """-q (verbosity < 0): errors only; default: info; -v (> 0): debug. Idempotent."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(logging.ERROR if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        h = _Stderr()
        h.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(h)
    logger.propagate = False
    return logger


def verbosity_callback(verbose: int, quiet: bool) -> None:
    """For the CLIs' `-v/--verbose` (count) and `-q/--quiet` options."""
    setup(-1 if quiet else verbose)
