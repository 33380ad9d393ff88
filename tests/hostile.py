"""Generators of hostile and odd inputs (no binary blobs in the repository).

`corpus(folder, good)` writes one file per kind of bad input and returns
{kind: (path, what the one-line error must say, or None for a file that must be classified)}.
The DICOM helpers build files with pydicom, byte-patched where pydicom refuses to write
something malformed.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage, generate_uid

DEFLATED = "1.2.840.10008.1.2.1.99"


def png_bytes(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_idat_damaged(png: bytes, what: str) -> bytes:
    """The PNG with its zlib stream damaged and every chunk CRC made right again, so that only
    the deflate data or its Adler-32 checksum can tell: `what` "adler" (the checksum's bits
    inverted) or "flip" (one bit of the compressed data). Decoders that skip the Adler-32
    check (libspng as pyspng builds it) decode such files to wrong pixels."""
    chunks, i = [], 8
    while i + 8 <= len(png):
        n = int.from_bytes(png[i:i + 4], "big")
        chunks.append([png[i + 4:i + 8], png[i + 8:i + 8 + n]])
        i += 12 + n
    idat = [c for c in chunks if c[0] == b"IDAT"]
    if what == "adler":
        idat[-1][1] = idat[-1][1][:-4] + bytes(b ^ 0xFF for b in idat[-1][1][-4:])
    else:
        d = idat[0][1]
        idat[0][1] = d[:len(d) // 3] + bytes([d[len(d) // 3] ^ 0x01]) + d[len(d) // 3 + 1:]
    return png[:8] + b"".join(png_chunk(k, d) for k, d in chunks)


def png_with_ihdr(width: int, height: int) -> bytes:
    """A PNG whose (CRC-correct) header declares width x height over a tiny image's data."""
    good = png_bytes(np.zeros((8, 8), np.uint8))
    ihdr = struct.pack(">II", width, height) + good[24:29]
    return good[:8] + png_chunk(b"IHDR", ihdr) + good[33:]


def png16_sbit(raw: np.ndarray, bits: int) -> bytes:
    """A 16-bit grey PNG of `raw` as stored, with an sBIT chunk declaring `bits` significant bits
    (medical writers store raw 12-bit values so; the standard would have them scaled up)."""
    buf = io.BytesIO()
    Image.fromarray(raw.astype(np.uint16)).save(buf, "PNG")
    png = buf.getvalue()
    return png[:33] + png_chunk(b"sBIT", bytes([bits])) + png[33:]


def jpeg_sof_offset(data: bytes) -> int:
    i = data.find(b"\xff\xc0")
    assert i > 0
    return i


def jpeg_declaring(data: bytes, width: int, height: int, fill: bool) -> bytes:
    """The JPEG with its SOF0 size changed, and (fill) a legal 0xFF fill byte before the SOF
    marker, which naive header parsers skip wrongly."""
    i = jpeg_sof_offset(data)
    sof = bytearray(data[i:i + 9])
    sof[5:7] = struct.pack(">H", height)
    sof[7:9] = struct.pack(">H", width)
    return data[:i] + (b"\xff" if fill else b"") + bytes(sof) + data[i + 9:]


def exif_jpeg(path: Path, rgb: np.ndarray, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, quality=95, exif=exif.tobytes())
    return path


def us_dataset(ts=ExplicitVRLittleEndian) -> Dataset:
    """An Ultrasound Image Storage dataset with its file meta, no pixel attributes yet."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientName = "Phantom^Test"
    return ds


def dicom(path, pixels: np.ndarray | None, photometric="MONOCHROME2", frames=1, ts=ExplicitVRLittleEndian,
          **extra) -> Path:
    """A small US DICOM file (pydicom), pixel data written as given."""
    ds = us_dataset(ts)
    if frames > 1:  # a cine loop is an Ultrasound Multi-frame Image
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    if pixels is not None:
        shape = pixels.shape[1:] if frames > 1 else pixels.shape
        ds.Rows, ds.Columns = shape[0], shape[1]
        ds.SamplesPerPixel = 3 if len(shape) == 3 else 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        if pixels.dtype.kind != "f":
            ds.BitsStored = ds.BitsAllocated
            ds.HighBit = ds.BitsStored - 1
            ds.PixelRepresentation = 0
        if ds.SamplesPerPixel == 3:
            ds.PlanarConfiguration = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if pixels.dtype.kind == "f":
            ds.FloatPixelData = pixels.astype(np.float32).tobytes()
        else:
            ds.PixelData = pixels.tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def palette_dicom(path, idx: np.ndarray) -> Path:
    """PALETTE COLOR: red = index, green = 255 - index, blue = 0 (16-bit LUT entries)."""
    lut = np.arange(256, dtype=np.uint16)
    p = dicom(path, idx.astype(np.uint8), "PALETTE COLOR",
              RedPaletteColorLookupTableDescriptor=[256, 0, 16],
              GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
              BluePaletteColorLookupTableDescriptor=[256, 0, 16])
    from pydicom import dcmread

    ds = dcmread(p)
    ds.RedPaletteColorLookupTableData = (lut * 257).astype("<u2").tobytes()
    ds.GreenPaletteColorLookupTableData = ((255 - lut) * 257).astype("<u2").tobytes()
    ds.BluePaletteColorLookupTableData = np.zeros(256, "<u2").tobytes()
    ds.save_as(p, enforce_file_format=True)
    return p


def patch_text_element(path: Path, tag: tuple[int, int], vr: bytes, old: bytes, new: bytes) -> Path:
    """Replace an explicit-VR text value in place (same length): how malformed values get in."""
    data = path.read_bytes()
    head = struct.pack("<HH", *tag) + vr + struct.pack("<H", len(old)) + old
    assert head in data, (tag, old)
    path.write_bytes(data.replace(head, head[:-len(old)] + new, 1))
    return path


def deflated_bomb(path: Path, rows: int, cols: int, pixel_bytes: int | None = None, chunk: int = 1 << 22) -> Path:
    """A deflated-syntax US file declaring rows x cols 8-bit pixels, whose zero pixel data
    (rows*cols bytes, or `pixel_bytes`) inflates to that size from kilobytes on disk; streamed
    through zlib so the test itself never holds it."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = us_dataset(DEFLATED)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    n = rows * cols if pixel_bytes is None else pixel_bytes
    body = head.getvalue() + struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\x00\x00" + struct.pack("<I", n)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    fm = DicomBytesIO()
    write_file_meta_info(fm, ds.file_meta, enforce_standard=True)
    out.write(fm.getvalue())
    out.write(z.compress(body))
    zeros = bytes(chunk)
    left = n
    while left > 0:
        out.write(z.compress(zeros[: min(chunk, left)]))
        left -= min(chunk, left)
    out.write(z.flush())
    path.write_bytes(out.getvalue())
    return path


def corpus(folder: Path, good: Path) -> dict[str, tuple[Path, str | None]]:
    """One file per kind of bad (or merely odd) input, next to the good image `good`."""
    folder.mkdir(parents=True, exist_ok=True)
    grey = cv2.imread(str(good), cv2.IMREAD_GRAYSCALE)
    jpg, png = jpeg_bytes(grey), png_bytes(grey)
    f: dict[str, tuple[Path, str | None]] = {}

    def put(kind, name, data: bytes | None, expect):
        p = folder / name
        if data is not None:
            p.write_bytes(data)
        f[kind] = (p, expect)
        return p

    # JPEG
    put("jpeg truncated mid-scan, end marker re-added", "trunc_eoi.jpg", jpg[: len(jpg) // 2] + b"\xff\xd9", "corrupt JPEG")
    put("jpeg truncated", "trunc.jpg", jpg[: len(jpg) // 2], "corrupt JPEG")
    rng = np.random.default_rng(7)
    bad = bytearray(jpg)
    mid = len(bad) // 2
    bad[mid:mid + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    put("jpeg corrupt data mid-scan", "corrupt_mid.jpg", bytes(bad), "corrupt JPEG")
    flat = jpeg_bytes(np.full((7000, 7000), 128, np.uint8), quality=5)
    put("jpeg 7000x7000 header, a few hundred bytes", "flat_7000.jpg", flat[:631] + b"\xff\xd9", "corrupt JPEG")
    put("jpeg fill byte before SOF declaring 20000x20000", "fill_huge.jpg", jpeg_declaring(jpg, 20000, 20000, True), "above the limit")
    h, w = grey.shape
    put("jpeg fill byte before SOF, valid", "fill_ok.jpg", jpeg_declaring(jpg, w, h, True), None)
    Image.new("CMYK", (64, 64), (10, 20, 30, 0)).save(folder / "cmyk.jpg")
    put("jpeg CMYK", "cmyk.jpg", None, "CMYK")
    put("jpeg header only", "header_only.jpg", jpg[: jpeg_sof_offset(jpg) + 4], "corrupt JPEG")
    exif_jpeg(folder / "exif6.jpg", cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), 6)
    put("jpeg with EXIF orientation 6", "exif6.jpg", None, None)
    # PNG
    iend = png_chunk(b"IEND", b"")
    put("png truncated, IEND re-added", "trunc_iend.png", png[: len(png) // 2] + iend, "corrupt PNG")
    put("png truncated", "trunc.png", png[: len(png) // 2], "corrupt PNG")
    flip = bytearray(png)
    flip[len(flip) // 2] ^= 0x01
    put("png one bit flipped in the image data", "bitflip.png", bytes(flip), "corrupt PNG")
    put("png zlib checksum damaged, chunk CRCs recomputed", "adler.png", png_idat_damaged(png, "adler"), "corrupt PNG")
    put("png deflate data damaged, chunk CRCs recomputed", "deflate_flip.png", png_idat_damaged(png, "flip"), "corrupt PNG")
    put("png header declaring 60000x60000", "ihdr_huge.png", png_with_ihdr(60000, 60000), "above the limit")
    put("png header declaring 0x0", "ihdr_zero.png", png_with_ihdr(0, 0), "corrupt PNG")
    put("png signature only", "sig_only.png", png[:8], "corrupt PNG")
    put("png 1x1", "tiny.png", png_bytes(np.zeros((1, 1), np.uint8)), "only 1x1")
    Image.fromarray(grey).convert("P").save(folder / "palette.png")
    put("png palette", "palette.png", None, None)
    Image.fromarray(grey).convert("LA").save(folder / "grey_alpha.png")
    put("png grey + alpha", "grey_alpha.png", None, None)
    put("png 16-bit, raw 12-bit values, sBIT 12", "sbit12.png", png16_sbit(grey.astype(np.uint32) * 4095 // 255, 12), None)
    # not images, not files
    put("empty file", "empty.png", b"", "empty file")
    put("text named .png", "text.png", b"just text\n" * 20, "not a PNG, JPEG or DICOM")
    put("missing file", "missing.png", None, "file not found")
    (folder / "adir.png").mkdir(exist_ok=True)
    put("directory named .png", "adir.png", None, "is a directory")
    fifo = folder / "fifo.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    put("FIFO named .png", "fifo.png", None, "FIFO")
    zero = folder / "zero.png"
    if not zero.is_symlink():
        zero.symlink_to("/dev/zero")
    put("/dev/zero named .png", "zero.png", None, "character device")
    put("larger than --max-bytes", "big.png", png + b"\x00" * 3_000_000, "above the limit of")
    # DICOM
    put("dicom PALETTE COLOR", "palette.dcm", None, None)
    palette_dicom(folder / "palette.dcm", grey)
    nan = grey.astype(np.float32)
    nan[10, 10] = np.nan
    dicom(folder / "float_nan.dcm", nan)
    put("dicom float pixel data with NaN", "float_nan.dcm", None, "NaN or infinite")
    dicom(folder / "window0.dcm", grey, WindowCenter=128, WindowWidth=0)
    put("dicom WindowWidth 0", "window0.dcm", None, None)
    dicom(folder / "rescale_inf.dcm", grey, RescaleSlope="1e400", RescaleIntercept=0)
    put("dicom RescaleSlope infinite", "rescale_inf.dcm", None, "NaN or infinite")
    dicom(folder / "rescale0.dcm", grey.astype(np.int16) * 8, RescaleSlope=0, RescaleIntercept=0, PixelRepresentation=1)
    put("dicom int16 with RescaleSlope 0", "rescale0.dcm", None, "(0028,1053) RescaleSlope is 0")
    patch_text_element(dicom(folder / "frames_1a.dcm", np.stack([grey, grey]), frames=2), (0x0028, 0x0008), b"IS",
                       b"2 ", b"1A")
    put("dicom NumberOfFrames '1A'", "frames_1a.dcm", None, "(0028,0008) NumberOfFrames: invalid value '1A'")
    short = dicom(folder / "short_pixels.dcm", grey)
    short.write_bytes(short.read_bytes()[:-1000])
    put("dicom pixel data shorter than Rows x Columns", "short_pixels.dcm", None, "pixel data is truncated")
    put("dicom without pixel data", "nopix.dcm", None, "no pixel data")
    dicom(folder / "nopix.dcm", None)
    deflated_bomb(folder / "deflate_bomb.dcm", 20000, 20000)
    put("deflated dicom of 400 MB pixels, 400 KB on disk", "deflate_bomb.dcm", None, "above the limit")
    put("dicom preamble and marker only", "dicm_only.dcm", b"\x00" * 128 + b"DICM", "no pixel data")
    encapsulated_corpus(folder, put)
    from busi.runtime.gradcam import mark_png

    put("busi's own Grad-CAM overlay named explicitly", "own.gradcam.png", mark_png(png),
        "is a Grad-CAM overlay written by busi")
    return f


#: Bad values given to the Python API, one per kind: kind -> (what is called: "init" for
#: Predictor(model, **kw), "predict" for predict(image, **kw), "predict_many" for
#: predict_many([image], **kw); its keyword arguments, with "image" standing for a good image
#: path unless given; the error class; what its one line must say). The exit code a CLI would
#: give is the error class's.
NAN = float("nan")
API_CORPUS: dict[str, tuple[str, dict, str, str]] = {
    "Predictor(threshold=nan)": ("init", {"threshold": NAN}, "UsageError", "threshold must be a number in [0, 1], got nan"),
    "Predictor(threshold=5)": ("init", {"threshold": 5}, "UsageError", "threshold must be a number in [0, 1], got 5"),
    "Predictor(threshold=-1)": ("init", {"threshold": -1}, "UsageError", "threshold must be a number in [0, 1], got -1"),
    "predict(threshold=nan)": ("predict", {"threshold": NAN}, "UsageError", "threshold must be a number in [0, 1]"),
    "predict(threshold=1.5)": ("predict", {"threshold": 1.5}, "UsageError", "threshold must be a number in [0, 1]"),
    "predict_many(threshold=-0.1)": ("predict_many", {"threshold": -0.1}, "UsageError", "threshold must be a number in [0, 1]"),
    "predict('')": ("predict", {"image": ""}, "InputError", "image path is empty"),
    "mask=dict": ("predict", {"mask": {"x": 1}}, "InputError", "mask must be None, 'none', 'auto', a box (x, y, w, h), a mask array or a mask file or folder path, got dict"),
    "mask=int": ("predict", {"mask": 3}, "InputError", "mask must be None, 'none', 'auto', a box"),
    "mask=bool": ("predict", {"mask": True}, "InputError", "got bool"),
    "float image array with maximum <= 1 (a 0..1 image)": (
        "predict", {"image": np.full((20, 20), 0.6)}, "InputError", "read on the 0..255 scale and this array's maximum is 0.6"),
}

#: Bad options to busi-infer (a good image and the suite's model added): kind -> (options, exit code, error line)
CLI_CORPUS: dict[str, tuple[list[str], int, str]] = {
    "--device gpu (not a device name)": (["--device", "gpu"], 2, "unknown device 'gpu' (choose auto, cuda, cpu)"),
    "--threshold nan": (["--threshold", "nan"], 2, "Invalid value for '--threshold'"),
    "an empty path argument ('')": ([""], 1, "an empty path was given ('')"),
}


# ---- encapsulated pixel data whose codestream lies about its size ------------------------------

JPEG_BASELINE, JPEG_LS, JPEG_2000 = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"


def encapsulated_dicom(path: Path, codestream: bytes, rows: int, cols: int, ts: str) -> Path:
    """A 8-bit grey US DICOM of rows x cols whose one frame is `codestream` (JPEG, JPEG-LS or J2K)."""
    from pydicom.encaps import encapsulate

    ds = us_dataset(ts)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def j2k_declaring(grey: np.ndarray, width: int, height: int) -> bytes:
    """A raw JPEG 2000 codestream of `grey` (OpenCV's encoder) with its SIZ size changed."""
    ok, jp2 = cv2.imencode(".jp2", grey)
    assert ok
    jp2 = jp2.tobytes()
    k = jp2.find(b"\xff\x4f\xff\x51")
    cs = bytearray(jp2[k:])
    cs[8:16] = struct.pack(">II", width, height)
    return bytes(cs)


def jpeg_ls_declaring(grey: np.ndarray, width: int, height: int) -> bytes:
    """A JPEG-LS codestream of `grey` (CharLS) with its SOF55 size changed."""
    import jpeg_ls

    data = bytearray(jpeg_ls.encode(grey).tobytes())
    i = data.find(b"\xff\xf7")
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def encapsulated_corpus(folder: Path, put) -> None:
    """64x64 DICOMs whose embedded codestream declares 40000x40000 (refused from the headers,
    never decoded), one that declares another small size, and a good one."""
    small = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    jpg = jpeg_bytes(small)
    for kind, name, ts, stream in (
            ("JPEG", "encaps_jpeg_huge.dcm", JPEG_BASELINE, jpeg_declaring(jpg, 40000, 40000, fill=False)),
            ("JPEG-LS", "encaps_jls_huge.dcm", JPEG_LS, jpeg_ls_declaring(small, 40000, 40000)),
            ("JPEG 2000", "encaps_j2k_huge.dcm", JPEG_2000, j2k_declaring(small, 40000, 40000))):
        encapsulated_dicom(folder / name, stream, 64, 64, ts)
        put(f"dicom 64x64 whose embedded {kind} declares 40000x40000", name, None,
            f"embedded {kind} declares 40000x40000 pixels, the DICOM Rows x Columns 64x64")
    encapsulated_dicom(folder / "encaps_jpeg_other.dcm", jpeg_declaring(jpg, 64, 32, fill=True), 64, 64, JPEG_BASELINE)
    put("dicom 64x64 whose embedded JPEG (after a fill byte) declares 64x32", "encaps_jpeg_other.dcm", None,
        "embedded JPEG declares 64x32 pixels")
    encapsulated_dicom(folder / "encaps_jpeg_ok.dcm", jpg, 64, 64, JPEG_BASELINE)
    put("dicom 64x64 with an embedded JPEG of 64x64", "encaps_jpeg_ok.dcm", None, None)


# ---- busi-infer runs: outputs, walks and masks ---------------------------------------------------

class RunCase:
    """One busi-infer run: its arguments (after --model), what its one error line (or its
    summary line) says, its exit code; `unprivileged`: file permissions must hold (run without
    root's override, see test_hardening). Kinds with the same arguments share one run."""

    def __init__(self, args, expect: str | None, code: int, unprivileged: bool = False):
        self.args, self.expect, self.code, self.unprivileged = [str(a) for a in args], expect, code, unprivileged


def run_corpus(folder: Path, good: Path, model: Path) -> dict[str, RunCase]:
    """The kinds of run that hit busi-infer's outputs, folder walks and mask files, each in its
    own folder under `folder`; `model` is an exported model.onnx (with its .sha256)."""
    from busi.runtime.gradcam import mark_png

    folder.mkdir(parents=True, exist_ok=True)
    grey = cv2.imread(str(good), cv2.IMREAD_GRAYSCALE)
    h, w = grey.shape
    roi = ["--roi", "10,10,50,50"]
    c: dict[str, RunCase] = {}

    def box(name: str) -> Path:
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    inp = box("in")
    img = inp / "scan.png"
    img.write_bytes(good.read_bytes())
    other = box("other") / "second.png"
    other.write_bytes(good.read_bytes())
    afile = folder / "a-file.txt"
    afile.write_text("not a folder\n")
    masks = box("masks")
    m = np.zeros((h, w), np.uint8)
    m[h // 4:h // 2, w // 4:w // 2] = 255
    (masks / "scan_mask.png").write_bytes(png_bytes(m))
    ro = box("readonly")
    os.chmod(ro, 0o555)

    # outputs that collide with each other or with what the run reads: refused before the first image
    same = folder / "same.out"
    c["--out and --report the same file"] = RunCase([img, *roi, "--out", same, "--report", same],
                                                    "is both the --out and the --report file", 2)
    cams = folder / "cams"
    c["--out onto a Grad-CAM overlay of the same run"] = RunCase(
        [img, *roi, "--explain", cams, "--out", cams / "scan.gradcam.png"], "Grad-CAM overlay name in the --explain folder", 2)
    side = model.with_name(model.name + ".sha256")
    c["--out onto the model's .sha256"] = RunCase([img, *roi, "--out", side], f"is one of the inputs ({side})", 2)
    card = model.parent / "card.json"
    c["--report onto the model folder's card.json"] = RunCase([img, *roi, "--report", card], f"is one of the inputs ({card})", 2)
    c["--out onto a mask in the --mask folder"] = RunCase([img, "--mask", masks, "--out", masks / "scan_mask.png"],
                                                          "is a mask file name in the --mask folder", 2)
    c["--out onto a mask given as --mask"] = RunCase([img, "--mask", masks / "scan_mask.png", "--out", masks / "scan_mask.png"],
                                                     "is one of the inputs", 2)
    # busi's outputs are never inputs
    c["--explain inside the input folder"] = RunCase([inp, *roi, "--explain", inp / "cams"], "--explain is inside the input folder", 2)
    c["--dicom-out is the input folder"] = RunCase([inp, *roi, "--dicom-out", inp], "--dicom-out is inside the input folder", 2)
    c["--explain inside the --mask folder"] = RunCase([img, "--mask", masks, "--explain", masks / "cams"],
                                                      "--explain is inside the --mask folder", 2)
    # targets that are not folders, or not writable
    c["--explain is a file"] = RunCase([img, *roi, "--explain", afile], "is not a directory (--explain takes a folder)", 2)
    c["--dicom-out is a file"] = RunCase([img, *roi, "--dicom-out", afile], "is not a directory (--dicom-out takes a folder)", 2)
    c["--explain below a file"] = RunCase([img, *roi, "--explain", afile / "cams"], f"--explain: {afile} is not a directory", 2)
    c["--explain in a read-only folder"] = RunCase([img, *roi, "--explain", ro / "cams"],
                                                   f"--explain: cannot write into its parent {ro} (Permission denied)", 2, True)
    c["--dicom-out a read-only folder"] = RunCase([img, *roi, "--dicom-out", ro],
                                                  "--dicom-out: cannot write into the folder (Permission denied)", 2, True)
    c["--out in a read-only folder"] = RunCase([img, *roi, "--out", ro / "r.jsonl"],
                                               "--out: cannot write into its folder (Permission denied)", 2, True)
    c["--report in a read-only folder"] = RunCase([img, *roi, "--report", ro / "r.html"],
                                                  "--report: cannot write into its folder (Permission denied)", 2, True)
    # one image's output cannot be written: that image fails, the batch goes on (one run for both kinds)
    blocked = box("blocked")
    (blocked / "scan.gradcam.png").mkdir(exist_ok=True)
    us = dicom(box("dcm") / "us.dcm", grey, StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(),
               PatientID="PH001", PatientBirthDate="19700101", PatientSex="F", StudyDate="20261125", StudyTime="120000",
               AccessionNumber="ACC1", StudyID="1", SeriesNumber=1, ReferringPhysicianName="")
    from pydicom import dcmread

    uid = dcmread(us, stop_before_pixels=True).SOPInstanceUID
    dblocked = box("dblocked")
    (dblocked / f"{uid}.sr.dcm").mkdir(exist_ok=True)
    blocked_run = [us, img, other, *roi, "--explain", blocked, "--dicom-out", dblocked]
    c["one Grad-CAM overlay cannot be written"] = RunCase(blocked_run, "scan.gradcam.png: is a directory", 1)
    c["one DICOM output cannot be written"] = RunCase(blocked_run, f"{uid}.sr.dcm: cannot write (Is a directory)", 1)
    # long names (one run): an overlay name shortened under NAME_MAX; a name too long is that file's failure
    longname = box("long") / ("x" * 250 + ".png")
    longname.write_bytes(good.read_bytes())
    long_run = [longname, folder / ("y" * 300 + ".png"), *roi, "--explain", folder / "cams-long"]
    c["input named with 254 bytes, --explain"] = RunCase(long_run, "1/2 images classified", 1)
    c["input path with a 300-character name"] = RunCase(long_run, "File name too long", 1)
    # folder walks: nothing unreadable skipped in silence; busi's own outputs skipped and counted
    walk = box("walk")
    (box("walk/ok") / "a.png").write_bytes(good.read_bytes())
    locked = box("walk/locked")
    (locked / "b.png").write_bytes(good.read_bytes())
    (walk / "c.png").write_bytes(good.read_bytes())
    os.chmod(walk / "c.png", 0o000)
    os.chmod(locked, 0o000)
    c["unreadable subfolder in a walk"] = RunCase([walk, *roi], f"{locked}: cannot read this folder (Permission denied)", 1, True)
    c["unreadable file in a walk"] = RunCase([walk, *roi], f"{walk / 'c.png'}: permission denied", 1, True)
    deep = box("deep")
    (deep / "a.png").write_bytes(good.read_bytes())
    fd = os.open(deep, os.O_RDONLY)  # a folder path longer than PATH_MAX (4096): made one level at a time
    for i in range(17):
        name = f"{i:02d}" + "d" * 240
        os.makedirs(f"/proc/self/fd/{fd}/{name}", exist_ok=True)
        nfd = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)
    c["folder path longer than PATH_MAX in a walk"] = RunCase([deep, *roi], "cannot read this folder (File name too long)", 1)
    own = box("own")
    (own / "a.png").write_bytes(good.read_bytes())
    if not (own / "gone.png").is_symlink():
        (own / "gone.png").symlink_to(own / "nowhere.png")
    (own / "a.gradcam.png").write_bytes(mark_png(png_bytes(cv2.applyColorMap(grey, cv2.COLORMAP_JET))))
    (own / "cases.html").write_text('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                                    '<meta name="generator" content="busi 0.1.0"><title>busi case report</title></head></html>\n')
    c["broken symbolic link in a walk"] = RunCase([own, *roi], f"{own / 'gone.png'}: broken symbolic link", 1)
    c["busi's Grad-CAM overlay in the input folder"] = RunCase([own, *roi], "1 busi's own Grad-CAM overlays", 1)
    c["busi's HTML report in the input folder"] = RunCase([own, *roi], "1 busi's own HTML reports", 1)
    # mask files
    binary = masks / "binary01.png"
    binary.write_bytes(png_bytes((m > 0).astype(np.uint8)))
    c["mask PNG with values 0/1"] = RunCase([img, "--mask", binary], "1/1 images classified", 0)
    dmask = dicom(masks / "mask.dcm", m)
    c["DICOM image as --mask"] = RunCase([img, "--mask", dmask], "1/1 images classified", 0)
    seg = dicom(masks / "seg.dcm", (m > 0).astype(np.uint8), SOPClassUID="1.2.840.10008.5.1.4.1.1.66.4")
    c["DICOM Segmentation as --mask"] = RunCase([img, "--mask", seg], "is a DICOM Segmentation (SEG)", 1)
    return c
