"""Shared fixtures: phantom data and one small model folder trained, exported and loaded once.

The classifier is tiny on purpose (64 px, 2 epochs, from scratch): these tests are about the
plumbing and the honesty of the numbers, not about accuracy. The lesion segmenter in the same
folder is trained properly (64 px, up to 80 short epochs), because a test holds it to a Dice
floor on held-out phantoms.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from helpers import PER_CLASS, SAMPLE, cli

SLOW_FIXTURES = {"trained", "exported", "model_copy", "predictor"}


def pytest_collection_modifyitems(items):
    """A test that needs the trained model folder (minutes to build) is `slow`: `make test-fast`
    (`-m "not slow"`) runs the rest."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def sample() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("phantoms")
    cli("busi-train", "phantoms", "--out", d, "--per-class", PER_CLASS, "--seed", 3)
    return d


@pytest.fixture(scope="session")
def trained(tmp_path_factory, phantoms) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny"
    prebuilt = os.environ.get("BUSI_TEST_TRAINED")
    if prebuilt:  # a developer's shortcut: a copy of a folder these same two commands wrote before
        shutil.copytree(prebuilt, out)
        return out
    cli("busi-train", "fit", "--data", phantoms, "--out", out, "--weights", "none", "--image-size", 64,
        "--epochs", 2, "--batch-size", 8)
    # 34 training images: smaller batches and more patience than the defaults
    cli("busi-train", "segmenter", "--data", phantoms, "--out", out, "--image-size", 64, "--batch-size", 8,
        "--epochs", 80, "--patience", 20)
    return out


@pytest.fixture(scope="session")
def exported(trained) -> Path:
    r = cli("busi-export", trained, "--int8", "--calibration-images", 16, check=False)
    assert r.returncode in (0, 1), r.stderr
    # TensorFlow's start-up chatter (absl I/W lines) stays off the terminal, as in busi-train
    native = [ln for ln in r.stderr.splitlines() if re.match(r"[EWIF]\d{4} ", ln)]
    assert not native, native
    assert (trained / "model.onnx").is_file(), r.stderr
    return trained


@pytest.fixture
def model_copy(exported, tmp_path) -> Path:
    """A private copy of the exported model folder that a test may damage."""
    d = tmp_path / "model"
    shutil.copytree(exported, d)
    return d
