"""The one decode/resize path shared by training and runtime.

Training calls these functions too, so what the model saw in training and what it sees at
the scanner cannot drift apart. Decoders are chosen because they report damage: Pillow for
PNG (every chunk's CRC verified, truncation an error) and libjpeg-turbo through simplejpeg
with `strict=True` for JPEG (libjpeg's "Corrupt JPEG data" warnings become errors); OpenCV's
imdecode fills damaged images with grey and only prints a warning. Sizes come from the
decoders' own header reads, so the pixel limit and the decode always see the same size.
Errors are `InputError` with a one-line message that names the file; nothing is printed.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError, first_line
from .files import DEFAULT_MAX_BYTES, read_regular
from .pixels import DEFAULT_MAX_PIXELS, check_min_side, check_pixel_limit, to_uint8

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
#: EXIF orientation -> (what a viewer does, numpy transform of an (H, W, ...) array)
_EXIF_ORIENTATION = {
    2: ("mirrored left-right", lambda a: a[:, ::-1]),
    3: ("rotated 180 degrees", lambda a: a[::-1, ::-1]),
    4: ("mirrored top-bottom", lambda a: a[::-1]),
    5: ("transposed", lambda a: a.swapaxes(0, 1)),
    6: ("rotated 90 degrees clockwise", lambda a: np.rot90(a, -1)),
    7: ("transversed", lambda a: a[::-1, ::-1].swapaxes(0, 1)),
    8: ("rotated 90 degrees counter-clockwise", lambda a: np.rot90(a, 1)),
}


@dataclass(frozen=True)
class Decoded:
    """A decoded image: RGB uint8 (H, W, 3) as a viewer shows it, and what was done to get it
    there that a user should know (EXIF orientation applied, a DICOM window ignored)."""

    rgb: np.ndarray
    notes: tuple[str, ...] = ()
    #: DICOM only: StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID (those present)
    identity: dict[str, str] | None = None
    #: DICOM only: the number of frames in the file
    frames: int = 1
    #: DICOM only: the dataset parsed to decode it (pydicom), which the DICOM outputs reuse
    dataset: object | None = None


def _short(e: Exception) -> str:
    return first_line(e) or type(e).__name__


def _exif_orientation(im) -> int:
    try:
        v = int(im.getexif().get(0x0112, 1))
    except Exception:  # a malformed EXIF block: the pixels are still fine, orientation unknown
        return 1
    return v if v in _EXIF_ORIENTATION else 1


def _decode_png(path, data: bytes, max_pixels: int):
    """PNG with Pillow: size from its lazy header read, every chunk's CRC verified, then
    decoded; truncation and corruption raise instead of filling with grey. Returns
    (array as stored: grey / RGB / RGBA, 8 or 16 bit; EXIF orientation; notes)."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data), formats=["PNG"])
        w, h = im.size
    except Image.DecompressionBombError:
        # Pillow's own refusal (above 2 x Image.MAX_IMAGE_PIXELS) comes before ours: say it with
        # the size it read from the same IHDR chunk
        w, h = (int.from_bytes(data[i:i + 4], "big") for i in (16, 20))
        check_pixel_limit(path, w, h, max_pixels)
        raise InputError(path, f"image is {w}x{h}, above Pillow's decompression-bomb limit") from None
    except UnidentifiedImageError:
        raise InputError(path, "truncated or corrupt PNG header (not a readable PNG)") from None
    except Exception as e:
        _text_bomb(path, e)
        raise InputError(path, f"truncated or corrupt PNG header ({_short(e)})") from None
    check_pixel_limit(path, w, h, max_pixels)
    _check_png_layout(path, data)
    try:
        im.verify()  # CRC of every chunk up to IEND: a truncated or altered file fails here
        im = Image.open(io.BytesIO(data), formats=["PNG"])
        im.load()
        orientation = _exif_orientation(im)
        mode = im.mode
        if mode == "P" or mode == "PA":
            im = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
        elif mode == "LA":
            a = np.asarray(im)
            return np.dstack([a[:, :, 0]] * 3 + [a[:, :, 1]]), orientation, ()
        elif mode not in ("1", "L", "RGB", "RGBA") and not mode.startswith("I"):
            im = im.convert("RGB")
        arr = np.asarray(im)
    except InputError:
        raise
    except Exception as e:
        _text_bomb(path, e)
        raise InputError(path, f"truncated or corrupt PNG ({_short(e)}); not classified") from None
    _check_png_data_length(path, data)
    notes: tuple[str, ...] = ()
    if arr.dtype.kind in "iu" and arr.dtype != np.uint8:  # 16-bit grey ('I;16', 'I;16B', 'I')
        if arr.min() < 0 or arr.max() > 65535:
            raise InputError(path, f"unsupported PNG pixel values (mode {mode})")
        arr, notes = _significant_bits(arr.astype(np.uint16), _png_chunk(data, b"sBIT"))
    return arr, orientation, notes


def _text_bomb(path, e: Exception) -> None:
    """Pillow's limits on PNG text chunks (MAX_TEXT_CHUNK, MAX_TEXT_MEMORY), said as what they are."""
    if isinstance(e, ValueError) and ("text" in str(e).lower() or "decompressed data too large" in str(e).lower()):
        raise InputError(path, f"PNG text chunk too large ({_short(e)}); refused as a decompression bomb") from None


def _png_chunk_list(data: bytes):
    """(type, offset of its data, length) of each chunk up to IEND."""
    i = 8
    while i + 8 <= len(data):
        n, k = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8]
        yield k, i + 8, n
        if k == b"IEND":
            return
        i += 12 + n


def _check_png_layout(path, data: bytes) -> None:
    """The critical chunks as the PNG standard orders them (libpng refuses the same files):
    one IHDR first; PLTE at most once, before IDAT, required for a palette image; the IDAT
    chunks in one run; no unknown critical chunk (Apple's CgBI PNGs are not standard PNG)."""
    kinds = [k for k, _, _ in _png_chunk_list(data)]
    unknown = [k for k in kinds if k[:1].isupper() and k not in (b"IHDR", b"PLTE", b"IDAT", b"IEND")]
    bad = None
    if unknown:
        what = unknown[0].decode("latin-1")
        bad = f"unknown critical chunk {what!r}" + (" (an Apple iOS-optimised PNG, not standard PNG)" if what == "CgBI" else "")
    elif kinds.count(b"IHDR") != 1 or kinds[0] != b"IHDR":
        bad = "IHDR must come first, once"
    elif kinds.count(b"PLTE") > 1:
        bad = "PLTE appears more than once"
    elif data[25:26] == b"\x03" and b"PLTE" not in kinds:
        bad = "a palette image without its PLTE chunk"
    elif b"IDAT" in kinds and b"PLTE" in kinds and kinds.index(b"PLTE") > kinds.index(b"IDAT"):
        bad = "PLTE after the image data"
    else:
        idat = [i for i, k in enumerate(kinds) if k == b"IDAT"]
        if idat and idat[-1] - idat[0] + 1 != len(idat):
            bad = "IDAT chunks are not consecutive"
    if bad:
        raise InputError(path, f"corrupt PNG structure: {bad}; not classified")


def _check_png_data_length(path, data: bytes) -> None:
    """The image data must inflate to every scanline the header declares: a zlib stream that
    ends early (a writer cut short) otherwise decodes as black rows without an error."""
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, colour, interlace = data[24], data[25], data[28]
    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
    if interlace:
        passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
        sizes = [(-(-(w - x0) // dx), -(-(h - y0) // dy)) for x0, y0, dx, dy in passes]
        need = sum(ph * (1 + (pw * bits + 7) // 8) for pw, ph in sizes if pw > 0 and ph > 0)
    else:
        need = h * (1 + (w * bits + 7) // 8)
    inflater, got = zlib.decompressobj(), 0
    try:
        for k, start, n in _png_chunk_list(data):
            if k == b"IDAT":
                got += len(inflater.decompress(data[start:start + n], 1 << 20))  # in bounded pieces
                while inflater.unconsumed_tail and got <= need:
                    got += len(inflater.decompress(inflater.unconsumed_tail, 1 << 20))
            if got >= need:
                return
    except zlib.error as e:
        raise InputError(path, f"corrupt PNG image data ({e}); not classified") from None
    raise InputError(path, f"truncated PNG image data: {got:,} of {need:,} bytes of scanlines; not classified")


def _png_chunk(data: bytes, kind: bytes) -> bytes | None:
    """The data of the first `kind` chunk before the image data (CRCs were verified by then)."""
    i = 8
    while i + 8 <= len(data):
        n, k = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8]
        if k == kind:
            return data[i + 8:i + 8 + n]
        if k in (b"IDAT", b"IEND"):
            return None
        i += 12 + n
    return None


def _significant_bits(arr: np.ndarray, sbit: bytes | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """A 16-bit grey PNG with an sBIT chunk of s < 16 significant bits. The standard has the
    writer scale the samples up to 16 bits (low bits zero or a copy of the high ones), which
    reads right as 16-bit. Writers of medical images often store the raw s-bit values
    instead (0..4095 for 12 bits), which read as 16-bit are 1/16 as bright: values that all
    fit in s bits and are not all multiples of 2^(16-s) are read on the s-bit scale, with a note."""
    s = sbit[0] if sbit else 16
    if sbit is None and arr.size and 0 < int(arr.max()) < 256:
        return arr, ("16-bit PNG whose values all lie below 256: read on the 16-bit scale, nearly black; if it holds "
                     "8-bit values, save it as an 8-bit PNG",)
    if not 1 <= s < 16:
        return arr, ()
    top, step = (1 << s) - 1, 1 << (16 - s)
    if int(arr.max()) > top or not (arr % step).any():
        return arr, ()
    scaled = ((arr.astype(np.uint32) * 65535 + top // 2) // top).astype(np.uint16)
    return scaled, (f"PNG sBIT: {s} significant bits and every value fits in them: read on the 0..{top} scale "
                    f"(a 16-bit reading would show it 1/{step} as bright)",)


def _decode_jpeg(path, data: bytes, max_pixels: int):
    """JPEG with libjpeg-turbo through simplejpeg: size from the decoder's own header read,
    and `strict`, so every libjpeg warning (truncated scan, corrupt Huffman data) is an error
    instead of grey fill. Returns (grey or RGB uint8 array, EXIF orientation)."""
    import simplejpeg

    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except Exception as e:
        raise InputError(path, f"truncated or corrupt JPEG header ({_short(e)})") from None
    check_pixel_limit(path, w, h, max_pixels)
    sof = _jpeg_sof(data)
    if sof is not None and (sof[1] != 8 or sof[0] in (0xC3, 0xC7, 0xCB, 0xCF)):
        kind = "lossless " if sof[0] in (0xC3, 0xC7, 0xCB, 0xCF) else ""
        raise InputError(path, f"{sof[1]}-bit {kind}JPEG (SOF{sof[0] - 0xC0}) is not supported: busi reads 8-bit JPEG; "
                               "convert it to PNG")
    if colorspace in ("CMYK", "YCCK"):
        raise InputError(path, "CMYK JPEG is not supported; save the image as RGB or greyscale")
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace="GRAY" if colorspace == "Gray" else "RGB", strict=True)
    except Exception as e:
        raise InputError(path, f"truncated or corrupt JPEG data ({_short(e)}); not classified") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    orientation = 1
    if b"Exif" in data[:65536]:  # APP1 sits before the scan: only then ask Pillow for the tag
        from PIL import Image

        try:
            orientation = _exif_orientation(Image.open(io.BytesIO(data), formats=["JPEG"]))
        except Exception:
            orientation = 1
    return arr, orientation


def _jpeg_sof(data: bytes) -> tuple[int, int] | None:
    """(start-of-frame marker, sample precision in bits) of a JPEG, read from its header."""
    i = 2
    while i + 4 < len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker, data[i + 4]
        if marker == 0xDA:
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _decode_raster(path, data: bytes, max_pixels: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """PNG/JPEG bytes -> (array as stored, oriented as a viewer shows it: grey, RGB or RGBA;
    8 or 16 bit; notes)."""
    notes: tuple[str, ...] = ()
    if data.startswith(PNG_MAGIC):
        from .gradcam import is_busi_png

        if is_busi_png(data[:4096]):  # busi's outputs are never its inputs
            raise InputError(path, "is a Grad-CAM overlay written by busi (PNG text chunk Software: busi), not an image to classify")
        arr, orientation, notes = _decode_png(path, data, max_pixels)
    elif data.startswith(JPEG_MAGIC):
        arr, orientation = _decode_jpeg(path, data, max_pixels)
    else:
        looks = looks_like(data)
        raise InputError(path, "not a PNG, JPEG or DICOM image" + (f"; it looks like {looks}: convert it to PNG" if looks else ""))
    if arr.size == 0:
        raise InputError(path, "corrupt image data (no pixels decoded)")
    if orientation != 1:
        what, transform = _EXIF_ORIENTATION[orientation]
        arr = np.ascontiguousarray(transform(arr))
        notes += (f"EXIF orientation {orientation} applied ({what}), as image viewers show it; "
                 "ROI coordinates refer to the image as shown",)
    return arr, notes


#: magic bytes of what else arrives named .png/.jpg/.dcm -> what to call it
_FOREIGN = ((b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"), (b"GIF8", "GIF"), (b"%PDF", "PDF"),
            (b"PK\x03\x04", "ZIP (an archive)"), (b"\x1f\x8b", "gzip (a compressed file)"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
            (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
            (b"HTTP/", "HTTP response headers before the data (saved with curl -i?)"), (b"iVBORw0KGgo", "base64 text of a PNG"),
            (b"/9j/", "base64 text of a JPEG"), (b"data:image/", "a data: URI (base64 text)"))


def looks_like(data: bytes) -> str:
    """What a file that is not PNG, JPEG or DICOM seems to be, from its first bytes ('' if unknown)."""
    for magic, name in _FOREIGN:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc", b"avif"):
        return "HEIC/AVIF (an iPhone or camera photo)"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "HTML (a web page: a failed download?)"
    if head.startswith(b"<?xml") and b"<svg" in head or head.startswith(b"<svg"):
        return "SVG (a vector drawing)"
    return ""


def _stored_to_rgb(arr: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3). A grey image (most ultrasound) becomes a read-only view of its one
    plane repeated three times, not a copy: `resize_rgb` then resizes one plane instead of
    three. (Copy and 3-plane resize were 1 ms of the 3.6 ms busi spends per 564x474 PNG.)"""
    arr = to_uint8(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return grey_rgb(arr)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        # RGBA: ultrasound frames carry no meaningful transparency; drop alpha
        return arr[:, :, :3]
    raise ValueError(f"unsupported image layout {arr.shape}")


def is_dicom(data: bytes) -> bool:
    """DICOM by content: the DICM marker after the 128-byte preamble or at the very start, or a
    bare dataset (no preamble, no file meta, as some PACS exports are) that begins with a
    plausible group 0002 or 0008 element, little or big endian."""
    if len(data) >= 132 and data[128:132] == b"DICM" or data[:4] == b"DICM":
        return True
    if len(data) < 8 or data[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x08"):
        return False
    vr = data[4:6]
    if vr.isalpha() and vr.isupper():  # explicit VR
        return True
    big = data[:2] == b"\x00\x08"
    element = int.from_bytes(data[2:4], "big" if big else "little")
    length = int.from_bytes(data[4:8], "big" if big else "little")  # implicit VR: a 4-byte length
    return element < 0x1000 and length < 1 << 16


def decode_image(data: bytes, path=None, *, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int = 0) -> Decoded:
    """Decode PNG, JPEG or DICOM bytes into a `Decoded` RGB uint8 image (H, W, 3).

    Accepts every PNG mode (1-bit, grey, RGB, RGBA, palette, 16-bit). A truncated or corrupt
    image raises `InputError`; it is never decoded with grey fill and classified."""
    identity, frames, dataset = None, 1, None
    if is_dicom(data):
        from .dicom import DicomImage  # pydicom only when needed

        dcm = DicomImage(path, data, max_pixels=max_pixels)
        rgb, notes = dcm.frame(frame)
        identity, frames, dataset = dict(dcm.identity), dcm.n_frames, dcm.ds
    else:
        arr, notes = _decode_raster(path, data, max_pixels)
        try:
            rgb = _stored_to_rgb(arr)
        except ValueError as e:
            raise InputError(path, str(e)) from None
    h, w = rgb.shape[:2]
    check_min_side(path, w, h)
    return Decoded(rgb if is_grey_view(rgb) else np.ascontiguousarray(rgb), tuple(notes), identity, frames, dataset)


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int = 0,
               max_bytes: int = DEFAULT_MAX_BYTES) -> Decoded:
    """`decode_image` of a file: regular files only, at most `max_bytes` read."""
    data = read_regular(path, max_bytes)  # as given: a URL's '//' is not folded before it is named
    return decode_image(data, Path(path), max_pixels=max_pixels, frame=frame)


def read_rgb(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int = 0,
             max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Decode a PNG, JPEG or DICOM file into an RGB uint8 array (H, W, 3).

    Raises `InputError` with a one-line reason naming the file."""
    return read_image(path, max_pixels=max_pixels, frame=frame, max_bytes=max_bytes).rgb


def read_mask(path: str | os.PathLike, *, threshold: int = 127, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a mask file of any mode into a bool array (H, W): True = lesion.

    1-bit, grey, RGB and RGBA PNGs (or JPEGs), and single-frame DICOM images are accepted; a
    pixel is lesion when its brightest colour channel is above `threshold` (8-bit scale), or,
    in a mask whose values are all 0 or 1 (as a label map is saved), when it is 1: the rule
    the API applies to a mask array. Alpha is ignored unless the colour channels are all zero
    while alpha varies (a mask drawn only in the alpha channel). A DICOM Segmentation is
    refused by name (give the lesion as a PNG mask).
    """
    path = Path(path)
    data = read_regular(path, DEFAULT_MAX_BYTES, what="a mask file")
    if is_dicom(data):
        raw = _dicom_mask(path, data, max_pixels)
    else:
        raw = _decode_raster(path, data, max_pixels)[0]
    check_min_side(path, raw.shape[1], raw.shape[0])  # a 1x1 "mask" would be resized over the whole image
    if raw.size and raw.dtype.kind in "biu" and int(raw.max()) <= 1:  # a 0/1 label map, any bit depth
        return (raw > 0).any(axis=2) if raw.ndim == 3 else raw > 0
    arr = to_uint8(raw)
    top = int(arr[:, :, :3].max() if arr.ndim == 3 else arr.max())
    if 1 < top <= threshold and not (arr.ndim == 3 and arr.shape[2] == 4 and top == 0):
        raise InputError(path, f"mask values reach only {top}: neither lesion pixels (above {threshold}) nor a 0/1 label map; "
                               "save the lesion as 255 (or 1) on 0")
    if arr.ndim == 2:
        grey = arr
    elif arr.shape[2] == 1:
        grey = arr[:, :, 0]
    else:
        grey = arr[:, :, :3].max(axis=2)
        if arr.shape[2] == 4 and grey.max() == 0 and arr[:, :, 3].min() != arr[:, :, 3].max():
            grey = arr[:, :, 3]
    return grey > threshold


def _dicom_mask(path, data: bytes, max_pixels: int) -> np.ndarray:
    """A DICOM file given as a mask: its image (one frame), as it is shown; a Segmentation or a
    cine loop is refused naming what it is."""
    from .dicom import DicomImage

    dcm = DicomImage(path, data, max_pixels=max_pixels)
    if str(dcm.ds.get("SOPClassUID", "")) == "1.2.840.10008.5.1.4.1.1.66.4":
        raise InputError(path, "is a DICOM Segmentation (SEG); busi reads a mask as a PNG, JPEG or single-frame "
                               "DICOM image: export the lesion as a mask PNG")
    if dcm.n_frames > 1:
        raise InputError(path, f"is a DICOM with {dcm.n_frames} frames; a mask must be one image")
    return dcm.frame(0)[0]


def grey_rgb(grey: np.ndarray) -> np.ndarray:
    """A grey (H, W) image as RGB (H, W, 3) without copying: a read-only view."""
    grey = np.ascontiguousarray(grey)
    return np.broadcast_to(grey[:, :, None], (*grey.shape, 3))


def is_grey_view(rgb: np.ndarray) -> bool:
    """True for what `grey_rgb` returns (its three planes are one)."""
    return rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.strides[2] == 0


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB image to size x size with INTER_AREA (the training/runtime contract).
    A grey view is resized as its one plane (INTER_AREA treats planes independently, so the
    result is the same to the bit) and returned as a writable RGB array."""
    if is_grey_view(rgb):
        small = cv2.resize(np.ascontiguousarray(rgb[:, :, 0]), (size, size), interpolation=cv2.INTER_AREA)
        return np.repeat(small[:, :, None], 3, axis=2)
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a bool mask with nearest neighbour. `size` is an int (square) or (height, width)."""
    hw = (size, size) if isinstance(size, int) else size
    out = cv2.resize(mask.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool)


def load_image(path: str | os.PathLike, size: int, **kw) -> np.ndarray:
    """read_rgb + resize_rgb: the exact input that both training and inference use."""
    return resize_rgb(read_rgb(path, **kw), size)
