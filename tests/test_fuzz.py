"""Property-based fuzzing (Hypothesis) of the decoders and of Predictor.prepare.

Whatever the bytes or the array: an `InputError`, or a valid (H, W, 3) uint8 image, within a
time and memory bound. The suite runs a fixed, derandomized number of examples;
`make fuzz` runs many more (BUSI_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
from hostile import dicom, jpeg_bytes, png_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from busi.runtime.errors import InputError
from busi.runtime.imageio import decode_image

EXAMPLES = int(os.environ.get("BUSI_FUZZ_EXAMPLES", "300"))
MAX_PIXELS = 4_000_000
TIME_BOUND_S = 5.0
MEMORY_BOUND = 256e6  # bytes traced (numpy buffers included) for one example

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("BUSI_FUZZ_RANDOM") is None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None)


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    grey = cv2.GaussianBlur(rng.integers(0, 256, (48, 64), dtype=np.uint8), (5, 5), 0)
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        dcm = dicom(Path(d) / "s.dcm", grey, WindowCenter=128, WindowWidth=200).read_bytes()
        dcm_rgb = dicom(Path(d) / "c.dcm", rgb[:, :, ::-1].copy(), "RGB").read_bytes()
        cine = dicom(Path(d) / "m.dcm", np.stack([grey, grey]), frames=2).read_bytes()
    return {"png": png_bytes(grey), "png_rgb": png_bytes(rgb), "jpeg": jpeg_bytes(grey), "jpeg_rgb": jpeg_bytes(rgb),
            "dicom": dcm, "dicom_rgb": dcm_rgb, "dicom_cine": cine}


SEEDS = _seeds()


@st.composite
def mutated(draw):
    """A valid PNG/JPEG/DICOM with its header (and sometimes body) mutated: bytes replaced,
    inserted, deleted, or the file cut short."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate", "set_body"]))
        head = min(len(data), 600)
        if not data:
            break
        if op == "set":
            data[draw(st.integers(0, head - 1))] = draw(st.integers(0, 255))
        elif op == "set_body":
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "insert":
            i = draw(st.integers(0, head))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            i = draw(st.integers(0, head - 1))
            del data[i:i + draw(st.integers(1, 8))]
        else:
            del data[draw(st.integers(0, len(data) - 1)):]
    return bytes(data)


def _check_bounded(fn):
    t = time.perf_counter()
    tracemalloc.start()
    try:
        out = fn()
    except InputError as e:
        assert "\n" not in str(e)
        out = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t < TIME_BOUND_S and peak < MEMORY_BOUND, (time.perf_counter() - t, peak)
    return out


def _valid_image(rgb) -> None:
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 8


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), mutated(),
                      st.binary(max_size=512).map(lambda b: b"\x00" * 128 + b"DICM" + b),
                      st.binary(max_size=512).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
                      st.binary(max_size=512).map(lambda b: b"\xff\xd8\xff" + b)))
def test_fuzz_decoders(data):
    d = _check_bounded(lambda: decode_image(data, "fuzz", max_pixels=MAX_PIXELS))
    if d is not None:
        _valid_image(d.rgb)


ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.uint16, np.int16, np.int64, np.float32, np.float64, np.bool_]),
    shape=st.one_of(hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=40),
                    st.tuples(st.integers(0, 40), st.integers(0, 40), st.sampled_from([1, 2, 3, 4, 5]))),
)


@st.composite
def arrays(draw):
    a = draw(ARRAYS)
    if a.dtype.kind == "f" and a.size and draw(st.booleans()):  # sprinkle NaN, inf, negatives
        a = a.copy()
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 1e30]))
    return a


@pytest.fixture(scope="module")
def predictor(exported):
    from busi.runtime import Predictor

    return Predictor(exported / "model.onnx", device="cpu", max_pixels=MAX_PIXELS)


@FUZZ
@given(image=arrays(), box=st.one_of(st.none(), st.tuples(*[st.one_of(st.floats(-50, 100), st.sampled_from([np.nan, np.inf]))] * 4)))
def test_fuzz_predictor_prepare(predictor, image, box):
    prep = _check_bounded(lambda: predictor.prepare(image, box if box is not None else "none"))  # None: auto (a segmenter is beside)
    if prep is not None:
        S = predictor.size
        assert prep.image.shape == (S, S, 3) and prep.image.dtype == np.float32
        assert prep.mask.shape == (S, S, 1) and np.isfinite(prep.image).all()
        assert 0 <= prep.image.min() and prep.image.max() <= 255


@FUZZ
@given(data=mutated())
def test_fuzz_predictor_prepare_bytes(predictor, data):
    prep = _check_bounded(lambda: predictor.prepare(data, "none"))
    if prep is not None:
        assert prep.image.shape == (predictor.size, predictor.size, 3)
