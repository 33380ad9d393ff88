"""The DICOM headers busi-infer's folder walk has parsed, kept for the decoder: a DICOM image
is parsed once, not once to find it and again to decode it.

The walk reads each DICOM file's header (up to its pixel data) to tell an image from an SR, a
SEG or another modality; the decoder then needs the same header and the pixel data. `keep`
holds the header the walk parsed together with the bytes it was parsed from; `take` gives it
back to the decoder once, when the file it read still begins with those bytes (a file
rewritten meanwhile is parsed again, whole), and the decoder parses only what follows.

Bounded: a header is 40-120 KiB in memory (pydicom's test files: MR 39 KiB, CT 120 KiB), and
the walk finishes before the first image is decoded, so at most `LIMIT` headers are kept, of
at most `BYTES` in all (a vendor's large private header is parsed twice rather than held);
the images after them are parsed whole, as a caller of the Python API without a walk always is.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

#: headers kept at most (about 10-30 MB)
LIMIT = 256
#: bytes of header kept at most, all together (a parsed header takes several times its bytes)
BYTES = 8 << 20

_KEPT: OrderedDict[str, tuple[object, bytes]] = OrderedDict()
_LOCK = threading.Lock()
_bytes = 0


def _key(path) -> str:
    return os.path.abspath(os.fspath(path))


def keep(path, header, prefix: bytes) -> None:
    """Keep `header`, parsed from `prefix` (the file's bytes up to its pixel data element), for
    the decoder of `path`; nothing when `LIMIT` headers are kept already."""
    global _bytes
    with _LOCK:
        if len(_KEPT) < LIMIT and _bytes + len(prefix) <= BYTES:
            _KEPT[_key(path)] = (header, prefix)
            _bytes += len(prefix)


def take(path, data: bytes):
    """The header kept for `path` when `data` (the whole file, as the decoder read it) begins
    with the bytes it was parsed from, else None; given once (the decoder changes it)."""
    if path is None:
        return None
    global _bytes
    with _LOCK:
        kept = _KEPT.pop(_key(path), None)
        if kept is not None:
            _bytes -= len(kept[1])
    if kept is None:
        return None
    header, prefix = kept
    return header if data.startswith(prefix) else None


def clear() -> None:
    global _bytes
    with _LOCK:
        _KEPT.clear()
        _bytes = 0
