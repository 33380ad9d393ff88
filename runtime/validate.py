"""Checks for the values of the busi contract (ONNX metadata and card): each failure is one
ModelError that names the file and the key, so a tampered or damaged model is refused with a
reason instead of being run with a wrong threshold or class order."""

from __future__ import annotations

import base64
import binascii
import json
import math
from contextlib import contextmanager

import numpy as np

from .errors import ModelError


def number(value, key: str, path: str | None, lo: float | None = None, hi: float | None = None) -> float:
    """A finite number (bools and strings refused), within [lo, hi] when given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelError(path, f"{key} is {value!r}, expected a finite number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        where = (f"outside [{lo:g}, {hi:g}]" if lo is not None and hi is not None
                 else f"below {lo:g}" if lo is not None else f"above {hi:g}")
        raise ModelError(path, f"{key} is {value!r}, {where}")
    return float(value)


def optional_number(value, key: str, path: str | None, lo: float | None = None, hi: float | None = None) -> float | None:
    return None if value is None else number(value, key, path, lo, hi)


def integer(value, key: str, path: str | None, lo: int, hi: int) -> int:
    v = number(value, key, path, lo, hi)
    if v != int(v):
        raise ModelError(path, f"{key} is {value!r}, expected a whole number")
    return int(v)


def choice(value, key: str, path: str | None, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ModelError(path, f"{key} is {value!r}, expected one of {', '.join(allowed)}")
    return value


def mapping(value, key: str, path: str | None) -> dict:
    if not isinstance(value, dict):
        raise ModelError(path, f"{key} is {value!r}, expected a JSON object")
    return value


def optional_text(value, key: str, path: str | None) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ModelError(path, f"{key} is {value!r}, expected text")
    return value


def fractions(value, key: str, path: str | None) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ModelError(path, f"{key} is {value!r}, expected [width, height] as image fractions")
    w, h = (number(v, key, path, 0.0, 1.0) for v in value)
    if w <= 0 or h <= 0:
        raise ModelError(path, f"{key} is {list(value)!r}, expected fractions above 0")
    return w, h


@contextmanager
def malformed(path: str | None, what: str = "busi metadata"):
    """Turn a missing field or a value of the wrong type into one ModelError naming the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ModelError(path, f"{what} is malformed ({type(e).__name__}: {e})") from None


def decode_json(meta: dict[str, str], required: tuple[str, ...], optional: tuple[str, ...], path: str | None, what: str) -> dict:
    """The JSON values of the contract's keys; ModelError naming what is missing or malformed."""
    missing = [k for k in required if k not in meta]
    if missing:
        raise ModelError(path, f"not a busi {what}: metadata lacks {', '.join(missing)}")
    out = {}
    for k in required + optional:
        if k in meta:
            try:
                out[k] = json.loads(meta[k])
            except ValueError as e:  # name the key and where its text breaks, not the parser's class
                raise ModelError(path, f"{k} is not valid JSON ({str(e).split(':')[0].lower()} at character "
                                       f"{getattr(e, 'pos', '?')} of {meta[k][:40]!r})") from None
    return out


def unpack_floats(text: str, shape: tuple[int, ...]) -> np.ndarray:
    """float32 little-endian base64 -> a float64 array of `shape`."""
    return np.frombuffer(base64.b64decode(text), "<f4").astype(np.float64).reshape(shape)


def pack_floats(array) -> str:
    return base64.b64encode(np.ascontiguousarray(array, "<f4").tobytes()).decode("ascii")


def packed_floats(value, key: str, path: str | None, count: int | None, multiple_of: int = 1,
                  positive: bool = False) -> str:
    """A base64 text of float32 values: `count` of them (or a whole multiple of `multiple_of`),
    every one finite (and above 0 with `positive`)."""
    if not isinstance(value, str):
        raise ModelError(path, f"{key} is {value!r:.60}, expected base64 float32 values")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ModelError(path, f"{key} is not valid base64") from None
    n = len(raw) // 4
    if len(raw) % 4 or (count is not None and n != count) or (count is None and (n == 0 or n % multiple_of)):
        want = count if count is not None else f"a multiple of {multiple_of}"
        raise ModelError(path, f"{key} holds {len(raw) / 4:g} float32 values, expected {want}")
    a = np.frombuffer(raw, "<f4")
    if not np.isfinite(a).all() or (positive and not (a > 0).all()):
        raise ModelError(path, f"{key} holds values that are not finite{' and above 0' if positive else ''}")
    return value
