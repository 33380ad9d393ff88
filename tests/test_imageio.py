"""The one decode/resize path: every PNG mode, JPEG, unicode paths, and bad files."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from PIL import Image

from busi.runtime.errors import InputError
from busi.runtime.imageio import load_image, read_mask, read_rgb, resize_rgb


@pytest.fixture
def grey():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (60, 80), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA", "I;16"])
def test_every_png_mode_decodes_like_pillow(tmp_path, grey, mode):
    p = tmp_path / f"img_{mode.replace(';', '')}.png"
    if mode == "1":
        im = Image.fromarray(grey > 127).convert("1")
        expect = np.repeat(((grey > 127) * 255).astype(np.uint8)[..., None], 3, 2)
    elif mode == "I;16":
        g16 = grey.astype(np.uint16) * 257
        im = Image.fromarray(g16)
        expect = np.repeat(grey[..., None], 3, 2)
    else:
        im = Image.fromarray(grey).convert(mode)
        expect = np.asarray(im.convert("RGB"))
    im.save(p)
    got = read_rgb(p)
    assert got.dtype == np.uint8 and got.shape == (60, 80, 3)
    np.testing.assert_array_equal(got, expect)


def test_rgb_channel_order_is_rgb(tmp_path):
    a = np.zeros((20, 20, 3), np.uint8)
    a[..., 0] = 200  # red
    Image.fromarray(a).save(tmp_path / "red.png")
    got = read_rgb(tmp_path / "red.png")
    assert got[0, 0].tolist() == [200, 0, 0]


def test_unicode_path_and_jpeg(tmp_path, grey):
    p = tmp_path / "ünïcødé 超音波.jpg"
    Image.fromarray(grey).convert("RGB").save(p, quality=95)
    got = read_rgb(p)
    assert got.shape == (60, 80, 3)
    assert np.abs(got[..., 0].astype(int) - grey).mean() < 6


def test_resize_is_inter_area(grey):
    rgb = np.repeat(grey[..., None], 3, 2)
    np.testing.assert_array_equal(resize_rgb(rgb, 32), cv2.resize(rgb, (32, 32), interpolation=cv2.INTER_AREA))


def test_real_busi_masks_of_every_mode(sample):
    one_bit = read_mask(sample / "benign" / "benign (4)_mask.png")
    rgba = read_mask(sample / "benign" / "benign (4)_mask_1.png")
    normal = read_mask(sample / "normal" / "normal (1)_mask.png")
    assert one_bit.any() and rgba.any() and not normal.any()
    ref = np.asarray(Image.open(sample / "benign" / "benign (4)_mask_1.png").convert("L")) > 127
    np.testing.assert_array_equal(rgba, ref)


def _png_bytes(grey) -> bytes:
    ok, buf = cv2.imencode(".png", grey)
    return buf.tobytes()


@pytest.mark.parametrize(
    "name,content,problem",
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"hello, I am not an image\n" * 10, "not a PNG, JPEG or DICOM"),
        ("trunc.png", "TRUNC_PNG", "truncated"),
        ("trunc.jpg", "TRUNC_JPG", "truncated"),
        ("tiny.png", "TINY", "only 1x1"),
        ("cmyk.jpg", "CMYK", "CMYK"),
    ],
)
def test_bad_files_give_one_line_naming_the_file(tmp_path, grey, name, content, problem):
    p = tmp_path / name
    if content == "TRUNC_PNG":
        content = _png_bytes(grey)[:200]
    elif content == "TRUNC_JPG":
        ok, buf = cv2.imencode(".jpg", grey)
        content = buf.tobytes()[: len(buf) // 2]
    elif content == "TINY":
        content = _png_bytes(np.zeros((1, 1), np.uint8))
    elif content == "CMYK":
        Image.new("CMYK", (20, 20), (0, 50, 100, 0)).save(p)
        content = None
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError) as e:
        read_rgb(p)
    msg = str(e.value)
    assert str(p) in msg and problem in msg and "\n" not in msg


def test_missing_directory_and_permission(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="file not found"):
        read_rgb(tmp_path / "nope.png")
    with pytest.raises(InputError, match="is a directory"):
        read_rgb(tmp_path)
    p = tmp_path / "locked.png"
    p.write_bytes(_png_bytes(np.zeros((20, 20), np.uint8)))
    os.chmod(p, 0)
    if os.access(p, os.R_OK):  # root reads any file: make the OS refusal happen anyway
        import busi.runtime.files as files

        real = os.open

        def refuse(path, *a, **kw):
            if str(path) == str(p):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *a, **kw)

        monkeypatch.setattr(files.os, "open", refuse)
    with pytest.raises(InputError, match="permission denied"):
        read_rgb(p)
    os.chmod(p, 0o644)


def test_pixel_limit_refuses_before_decoding(tmp_path):
    p = tmp_path / "big.png"
    cv2.imwrite(str(p), np.zeros((300, 400), np.uint8))
    with pytest.raises(InputError, match="above the limit"):
        read_rgb(p, max_pixels=100_000)
    assert load_image(p, 32).shape == (32, 32, 3)
