"""DICOM input with pydicom: photometric interpretations, windowing, frames, bad files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from busi.runtime.errors import InputError
from busi.runtime.imageio import read_rgb
from helpers import cli
from hostile import dicom as make_dicom


@pytest.fixture
def grey(phantoms):
    g = cv2.imread(str(phantoms / "benign" / "benign (1).png"), cv2.IMREAD_GRAYSCALE)
    return np.ascontiguousarray(g[:200, :240])


def test_monochrome2_and_monochrome1_and_windowing(tmp_path, grey):
    a = read_rgb(make_dicom(tmp_path / "m2.dcm", grey))
    g = grey.astype(float)
    expect = ((g - g.min()) / (g.max() - g.min()) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(a[..., 0], expect)
    b = read_rgb(make_dicom(tmp_path / "m1.dcm", (255 - grey).astype(np.uint8), "MONOCHROME1"))
    assert np.abs(b.astype(int) - a.astype(int)).max() <= 1  # inverted back
    sixteen = (grey.astype(np.uint16) * 16)
    c = read_rgb(make_dicom(tmp_path / "w.dcm", sixteen, WindowCenter=1024, WindowWidth=1024))
    # window [512, 1536] saturates every pixel brighter than 1536 (grey > 96) at white
    bright = sixteen > 1536
    assert bright.mean() > 0.2 and (c[..., 0][bright] == 255).all() and (a[..., 0][bright] < 255).any()


def test_rgb_ybr_and_multiframe(tmp_path, grey):
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=2).astype(np.uint8)
    a = read_rgb(make_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))
    np.testing.assert_array_equal(a, rgb)
    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., [0, 2, 1]]  # Y, Cb, Cr
    b = read_rgb(make_dicom(tmp_path / "ybr.dcm", np.ascontiguousarray(ycc), "YBR_FULL"))
    assert np.abs(b.astype(int) - rgb.astype(int)).max() <= 3
    frames = np.stack([grey, 255 - grey]).astype(np.uint8)
    path = make_dicom(tmp_path / "multi.dcm", frames, frames=2)
    f0, f1 = read_rgb(path), read_rgb(path, frame=1)
    assert f0[..., 0].mean() != pytest.approx(f1[..., 0].mean())
    with pytest.raises(InputError, match="frame 5 requested, the DICOM has 2"):
        read_rgb(path, frame=5)


def test_bad_dicoms(tmp_path, grey):
    with pytest.raises(InputError, match="no pixel data"):
        read_rgb(make_dicom(tmp_path / "nopix.dcm", None))
    comp = make_dicom(tmp_path / "j2k.dcm", grey)
    from pydicom import dcmread

    ds = dcmread(comp)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])  # not a real codestream
    ds["PixelData"].VR = "OB"
    ds.save_as(comp, enforce_file_format=True)
    with pytest.raises(InputError) as e:
        read_rgb(comp)
    assert "JPEG 2000" in str(e.value) and str(comp) in str(e.value)
    with pytest.raises(InputError, match="above the limit"):
        read_rgb(make_dicom(tmp_path / "big.dcm", grey), max_pixels=1000)


def test_busi_infer_on_dicom_with_frame(exported, tmp_path, grey):
    frames = np.stack([grey, grey]).astype(np.uint8)
    path = make_dicom(tmp_path / "case.dcm", frames, frames=2)
    r = cli("busi-infer", path, "--model", exported / "model.onnx", "--roi", "40,40,80,60", "--frame", "1")
    assert json.loads(r.stdout)["class"] in ("normal", "benign", "malignant")
