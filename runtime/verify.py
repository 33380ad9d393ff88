"""Model file integrity: sha256 of the file, checked against its `.sha256` sidecar."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import ModelError


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_sha256(path: Path, verify: bool = True) -> str:
    """The file's sha256; with `verify`, a `<file>.sha256` sidecar that disagrees is refused."""
    if not path.exists():
        raise ModelError(path, "model file not found")
    if path.is_dir():
        raise ModelError(path, "is a folder; pass the .onnx file")
    try:
        digest = sha256_file(path)
    except OSError as e:
        raise ModelError(path, f"cannot read ({e.strerror or e})") from None
    side = path.with_name(path.name + ".sha256")
    if verify and side.is_file():
        words = side.read_text().split()
        want = words[0].lower() if words else ""
        if want != digest:
            raise ModelError(
                path, f"sha256 mismatch: file is {digest[:16]}..., {side.name} says {want[:16]}... (altered or truncated)"
            )
    return digest
