"""Reading files that a hostile or careless caller names: regular files only, bounded reads.

A FIFO opened for reading blocks until a writer appears (forever, and Ctrl-C cannot stop
it inside `open`), `/dev/zero` never ends and a socket cannot be read at all. So a path is
`stat`ed first and refused unless it is a regular file, opened with O_NONBLOCK (a FIFO
swapped in after the check cannot hang us either), checked again with `fstat`, and read up
to the limit plus one byte.
"""

from __future__ import annotations

import glob
import os
import stat
from pathlib import Path
from typing import Callable

from .errors import BusiError, InputError

#: files larger than this are refused before they are read (option in the CLI and API)
DEFAULT_MAX_BYTES = 1 << 30

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)

ErrorType = Callable[[str | Path | None, str], BusiError]


def kind_of(mode: int) -> str:
    """'a FIFO (named pipe)', 'a directory', ... for a st_mode that is not a regular file."""
    if stat.S_ISDIR(mode):
        return "a directory"
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def regular_stat(path: str | os.PathLike, error: ErrorType = InputError, what: str = "an image file") -> os.stat_result:
    """`os.stat` of a path that must be a regular file (symlinks followed); else `error`."""
    p = Path(path)
    if isinstance(path, str) and "://" in path[:12]:  # Path() would fold the slashes: name it as given
        raise error(path, "is a URL; busi reads files: download it first")
    if str(path) == "-":
        raise error("-", "standard input is not read ('-'); give image files, folders or globs")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise error(p, f"broken symbolic link (to {os.readlink(p)}, which does not exist)") from None
        raise error(p, "no file matches this pattern" if glob.has_magic(str(p)) else "file not found") from None
    except PermissionError:
        raise error(p, "permission denied") from None
    except ValueError:  # embedded NUL byte
        raise error(repr(str(p)), "invalid file name (contains a NUL byte)") from None
    except OSError as e:
        raise error(p, f"cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(p, f"is a directory, expected {what}")
    if not stat.S_ISREG(st.st_mode):
        raise error(p, f"is {kind_of(st.st_mode)}, not a regular file; refused")
    return st


def read_regular(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES, error: ErrorType = InputError,
                 what: str = "an image file", head: int = 0) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; `error` (one line naming the file)
    for anything else: missing, a directory, a FIFO or device, unreadable, empty, too large.
    With `head`, only the first `head` bytes (to tell what a file is), whatever its size."""
    p = Path(path)
    st = regular_stat(path, error, what)
    if head:
        max_bytes = 0
    elif max_bytes and st.st_size > max_bytes:
        raise error(p, f"file is {st.st_size:,} bytes, above the limit of {max_bytes:,}")
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except PermissionError:
        raise error(p, "permission denied") from None
    except OSError as e:
        raise error(p, f"cannot read ({e.strerror or e})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped after the check
            raise error(p, "is not a regular file; refused")
        limit = head or (max_bytes or st.st_size) + 1
        chunks, n = [], 0
        while n < limit:
            b = os.read(fd, min(1 << 24, limit - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
    except OSError as e:
        raise error(p, f"cannot read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if max_bytes and len(data) > max_bytes:
        raise error(p, f"file grew above the limit of {max_bytes:,} bytes while it was read")
    if not data:
        raise error(p, "empty file (0 bytes)")
    return data
