"""Model file integrity: sha256 of the file, checked against its `.sha256` sidecar.

The sha256 covers the .onnx file only, so a model whose tensors live in external data files
(which ONNX Runtime would load from beside it, unverified) is refused: busi's exporter
writes one self-contained file.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable

from .errors import ModelError
from .files import read_regular, regular_stat


def sidecar(path: str | Path) -> Path:
    """`model.onnx` -> `model.onnx.sha256`: the digest that travels beside a file."""
    p = Path(path)
    return p.with_name(p.name + ".sha256")

#: how an ONNX TensorProto names its external file: StringStringEntryProto key "location"
#: (field 1, length 8), as every ONNX writer encodes it
_EXTERNAL_DATA_KEY = b"\x0a\x08location"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    return _scan(Path(path))[0]


def _scan(path: Path) -> tuple[str, bool]:
    """(sha256, whether the bytes hold an ONNX external-data reference), in one pass."""
    h = hashlib.sha256()
    external, tail = False, b""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
            if not external:
                external = _EXTERNAL_DATA_KEY in tail + chunk[: len(_EXTERNAL_DATA_KEY)] or _EXTERNAL_DATA_KEY in chunk
                tail = chunk[-(len(_EXTERNAL_DATA_KEY) - 1):]
    return h.hexdigest(), external


def _sidecar_digest(side: Path) -> str | None:
    """The digest a `<model>.sha256` sidecar states; None when there is no sidecar.
    ModelError when it is a directory, unreadable, binary or not a sha256 line."""
    if not side.exists() and not side.is_symlink():
        return None
    text = read_regular(side, 1 << 16, ModelError, what="a .sha256 file")
    if text.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (Windows editors write one): text all the same
        text = text[3:]
    elif text.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ModelError(side, "is UTF-16 text; save it as plain ASCII (sha256sum's format)")
    try:
        words = text.decode("ascii").split()
    except UnicodeDecodeError:
        raise ModelError(side, "is not a sha256 text file (binary content)") from None
    want = words[0].lower() if words else ""
    if not _HEX64.match(want):
        raise ModelError(side, f"does not start with a sha256 hex digest (64 hex digits), found {want[:20]!r}")
    return want


def verified_sha256(path: Path, verify: bool = True, require: bool = False,
                    notice: Callable[[str], None] | None = None) -> str:
    """The file's sha256. With `verify`, a `<file>.sha256` sidecar that disagrees is refused;
    a missing one is said once through `notice`, or refused with `require`. A model that refers
    to external data files is refused either way."""
    path = Path(path)
    if not path.exists():
        raise ModelError(path, "model file not found")
    if path.is_dir():
        raise ModelError(path, "is a folder; pass the .onnx file")
    regular_stat(path, ModelError, what="the .onnx file")
    side = sidecar(path)
    want = _sidecar_digest(side) if (verify or require) else None
    try:
        digest, external = _scan(path)
    except OSError as e:
        raise ModelError(path, f"cannot read ({e.strerror or e})") from None
    if external:
        raise ModelError(path, "model keeps tensors in external data files, which its sha256 does not cover; "
                               "busi loads self-contained .onnx files only (re-export with busi-export)")
    if want is None:
        if require:
            raise ModelError(path, f"not verified: no {side.name} beside the model, and a verified model is required")
        if verify and notice is not None:
            notice(f"busi: {path}: not verified: no {side.name} beside the model")
    elif want != digest:
        raise ModelError(
            path, f"sha256 mismatch: file is {digest[:16]}..., {side.name} says {want[:16]}... (altered or truncated)"
        )
    return digest
