"""One log for busi: `logging.getLogger("busi")` and a child per module.

Library code never prints. The CLIs call `setup(verbosity)` once: one handler on stderr, the
message alone (the lines look as they always did), INFO by default, DEBUG with -v, errors
only with -q. Notices about an input or the device (a resized mask, a CPU fallback) are
warnings, progress is info. A program that embeds busi and sets up nothing sees the warnings
(Python's last-resort handler), or configures the "busi" logger as it likes.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from contextlib import contextmanager

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
def native_stderr_captured():
    """What native code writes to file descriptor 2 while the block runs (a decoder library's
    complaints about damaged data) is kept off the terminal and handed back in the yielded
    list, for the error message. busi's own stderr lines wait for the block (STDERR_LOCK)."""
    out: list[str] = []
    with STDERR_LOCK:
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no real descriptor (a closed stderr, an embedded interpreter)
            yield out
            return
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield out
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                out.append(tmp.read(1 << 16).decode("utf-8", "replace"))


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
