"""Atomic file writes: write a temp file in the same folder, fsync, then rename."""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from .errors import OutputError
from .files import kind_of


@contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None):
    """Yield a temp path next to `final`; on success rename it over `final`, else remove it.

    `suffix` keeps a file extension that a writer insists on (e.g. ".keras", ".onnx").
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # the temp name stays under NAME_MAX even when `final`'s own name is near it
    head = os.fsdecode(os.fsencode(final.name)[:150])
    fd, tmp = tempfile.mkstemp(prefix=f".{head}.", suffix=suffix or ".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    """UTF-8; file names that are not valid UTF-8 (surrogate-escaped by Python) are written
    back as the bytes they were."""
    atomic_write_bytes(final, text.encode("utf-8", "surrogateescape"))


def output_target(target: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """The path an atomic write to `target` should rename onto, or OutputError.

    A symlink is written through: the file it points to is replaced and the link stays, as
    editors do. Refused: a directory, anything that exists and is not a regular file (a
    device such as /dev/full, a FIFO, a socket; replacing it with a file would destroy it),
    and any of `inputs` (an image, mask or model being read)."""
    p = Path(target)
    final = p.resolve() if p.is_symlink() else p
    try:
        st = os.stat(final)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(p, f"cannot write ({e.strerror or e})") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(p, "is a directory; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(p, f"is {kind_of(st.st_mode)}; refusing to replace it with a file")
        for src in inputs:
            try:
                same = os.path.samefile(src, final)
            except (OSError, ValueError):
                continue
            if same:
                raise OutputError(p, f"is one of the inputs ({src}); refusing to overwrite it")
    return final
