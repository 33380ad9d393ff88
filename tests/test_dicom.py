"""DICOM input with pydicom: photometric interpretations, windowing, frames, bad files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from helpers import cli
from hostile import dicom as make_dicom
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from busi.runtime.errors import InputError
from busi.runtime.imageio import read_rgb


@pytest.fixture
def grey(phantoms):
    g = cv2.imread(str(phantoms / "benign" / "benign (1).png"), cv2.IMREAD_GRAYSCALE)
    return np.ascontiguousarray(g[:200, :240])


def test_monochrome2_and_monochrome1_and_windowing(tmp_path, grey):
    a = read_rgb(make_dicom(tmp_path / "m2.dcm", grey))
    # 8-bit, no window, no rescale: as stored (what its PNG export holds), no contrast stretch
    np.testing.assert_array_equal(a[..., 0], grey)
    g = grey.astype(np.uint16) * 16 + 7  # 12-bit values without a window: the stored range, stretched
    s = read_rgb(make_dicom(tmp_path / "m2-12bit.dcm", g))
    x = g.astype(float)
    np.testing.assert_array_equal(s[..., 0], ((x - x.min()) / (x.max() - x.min()) * 255 + 0.5).astype(np.uint8))
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


# ---- DICOM as a PACS exports it: found by content, DICOMDIR, identity, pydicom's own corpus --

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
#: what busi-infer says about the images in pydicom's shipped test files that it cannot
#: classify (pydicom 3.0.2, with busi[dicom]); every other image there is classified
EXPECTED_FAILURES = {
    "JPEG-lossy.dcm": "12-bit samples needs the GPL-3 decoder: pip install 'busi[dicom-gpl]'",
    "JPGExtended.dcm": "12-bit samples needs the GPL-3 decoder: pip install 'busi[dicom-gpl]'",
    "JPEG2000-embedded-sequence-delimiter.dcm": "embedded JPEG 2000 declares 3722445056x1024 pixels, the DICOM Rows x Columns 256x1024",
    "MR_truncated.dcm": "pixel data is truncated: 8,130 bytes, Rows x Columns x frames declare 8,192",
    "SC_rgb_small_odd.dcm": "image is only 3x3 pixels",
    "SC_rgb_small_odd_big_endian.dcm": "image is only 3x3 pixels",
    "SC_rgb_small_odd_jpeg.dcm": "image is only 3x3 pixels",
    "meta_missing_tsyntax.dcm": "DICOM has no image size (Rows/Columns)",
    "nested_priv_SQ.dcm": "DICOM has no image size (Rows/Columns)",
}


def _sr(path: Path, study_uid: str) -> Path:
    """A Basic Text SR (no pixel data), as a PACS folder holds next to the images."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SR", study_uid, generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_pacs_folder_is_read_by_content_with_identity_and_skips_counted(exported, tmp_path, grey):
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    root = tmp_path / "export" / "PAT1" / "STUDY1"
    root.mkdir(parents=True)
    uids = {}
    for name in ("IM0001", "1.2.840.113619.2.55.3.1"):  # no extension, as a PACS writes them
        sop = generate_uid()
        make_dicom(root / name, grey, StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID=sop)
        uids[name] = sop
    # a bare dataset: no preamble, no file meta
    bare = pydicom.dcmread(root / "IM0001")
    bare.SOPInstanceUID = uids["IM0003"] = generate_uid()
    del bare.file_meta
    bare.preamble = None
    bare.save_as(root / "IM0003", enforce_file_format=False, implicit_vr=True, little_endian=True)
    head = (root / "IM0003").read_bytes()[:132]
    assert head[:2] == b"\x08\x00" and b"DICM" not in head  # starts with a group 0008 element
    _sr(root / "SR0001", study)
    (root / "README.txt").write_text("exported by a PACS\n")
    r = cli("busi-infer", tmp_path / "export", "--model", exported / "model.onnx", "--roi", "40,40,80,60",
            "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert sorted(Path(row["path"]).name for row in rows) == sorted(uids)
    for row in rows:
        assert row["class"] and not row["error"]
        assert (row["study_uid"], row["series_uid"], row["sop_uid"]) == (study, series, uids[Path(row["path"]).name])
    assert "skipped 2 files that are not images (1 DICOM SR (structured reports), 1 other files)" in r.stderr
    assert len(rows) + 2 == sum(1 for f in (tmp_path / "export").rglob("*") if f.is_file())  # all accounted for


def test_a_dicomdir_names_its_images(exported, tmp_path, grey):
    from pydicom.fileset import FileSet

    src = [make_dicom(tmp_path / f"in{i}.dcm", grey, PatientID="P1", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4",
                      StudyDate="20261125", StudyTime="120000", StudyID="1", AccessionNumber="A1", SeriesNumber=1,
                      InstanceNumber=i + 1) for i in range(2)]
    fs = FileSet()
    for p in src:
        fs.add(pydicom.dcmread(p))
    fs.write(tmp_path / "media")
    dicomdir = tmp_path / "media" / "DICOMDIR"
    r = cli("busi-infer", dicomdir, "--model", exported / "model.onnx", "--mask", "none", "-f", "jsonl")
    recs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(recs) == 2 and all("error" not in x and x["dicom"]["StudyInstanceUID"] == "1.2.3" for x in recs)
    # in a folder walk the DICOMDIR itself is skipped and counted, its images are found
    r = cli("busi-infer", tmp_path / "media", "--model", exported / "model.onnx", "--mask", "none")
    assert len(r.stdout.splitlines()) == 2 and "(1 DICOMDIR)" in r.stderr


def test_pydicoms_shipped_files_each_classified_or_one_line(exported):
    pytest.importorskip("gdcm", reason="the counts below are for the install make test uses (busi[dicom])")
    # --allow-modality: CT, MR and the rest are classified here, to check that they decode
    r = cli("busi-infer", PYDICOM_FILES, "--model", exported / "model.onnx", "--mask", "none", "--allow-modality",
            check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    recs = [json.loads(ln) for ln in r.stdout.splitlines()]
    failed = {Path(x["path"]).name: x["error"] for x in recs if "error" in x}
    assert set(failed) == set(EXPECTED_FAILURES)
    for name, problem in EXPECTED_FAILURES.items():
        assert problem in failed[name] and failed[name].count("\n") == 0, failed[name]
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    others = [ln for ln in r.stderr.splitlines() if not ln.startswith(("error:", "busi: "))]
    assert len(errs) == len(failed) and others == []  # nothing native on the terminal
    assert len(recs) - len(failed) == 77  # the 2 SEG and 6 RT Dose objects with pixel data are skipped by SOP class
    assert ("skipped 90 files that are not images (12 DICOM RT objects, 2 DICOM SEG (segmentations), 3 DICOM SR "
            "(structured reports), 54 DICOM objects without pixel data, 1 DICOM waveforms, 8 DICOMDIR, 10 other files)"
            ) in r.stderr
    assert len(recs) + 90 == sum(1 for f in PYDICOM_FILES.rglob("*") if f.is_file())  # every file accounted for


def test_ybr_full_422_and_no_preamble_files_decode():
    ybr = read_rgb(PYDICOM_FILES / "SC_ybr_full_422_uncompressed.dcm")
    ref = read_rgb(PYDICOM_FILES / "SC_rgb_rle.dcm")  # the same colour pattern, lossless
    assert ybr.shape == ref.shape and np.abs(ybr.astype(int) - ref.astype(int)).mean() < 8
    for name in ("ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm"):  # no preamble, no file meta:
        with pytest.raises(InputError, match="DICOM has no pixel data"):  # read as DICOM (they hold none)
            read_rgb(PYDICOM_FILES / name)


def _compressed_us(tmp_path, grey, syntax) -> Path:
    """A US image compressed into `syntax` with pydicom's own encoders (RLE, JPEG-LS through
    pyjpegls, deflate), or JPEG Baseline bytes from Pillow, encapsulated."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

    path = make_dicom(tmp_path / f"us-{syntax.name.replace(' ', '_')}", grey)
    ds = pydicom.dcmread(path)
    if syntax == JPEGBaseline8Bit:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(grey).save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
    elif syntax in (RLELossless, JPEGLSLossless):
        ds.compress(syntax)
    elif syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("name, lossless", [
    ("ImplicitVRLittleEndian", True), ("DeflatedExplicitVRLittleEndian", True), ("RLELossless", True),
    ("JPEGLSLossless", True), ("JPEGBaseline8Bit", False),
])
def test_a_us_image_in_each_transfer_syntax_the_tests_can_encode(tmp_path, grey, name, lossless):
    """Encoded here (pydicom's encoders, Pillow for JPEG), decoded by busi: the same pixels, or
    within JPEG's loss. JPEG Lossless, 12-bit JPEG Extended and JPEG 2000 come from pydicom's
    shipped files (the corpus test), which busi[dicom] decodes."""
    import pydicom.uid

    syntax = getattr(pydicom.uid, name)
    if name == "ImplicitVRLittleEndian":
        path = make_dicom(tmp_path / "implicit", grey, ts=syntax)
    else:
        path = _compressed_us(tmp_path, grey, syntax)
    assert str(pydicom.dcmread(path).file_meta.TransferSyntaxUID) == str(syntax)
    got = read_rgb(path)[..., 0].astype(int)
    if lossless:
        np.testing.assert_array_equal(got, grey)
    else:
        assert np.abs(got - grey.astype(int)).mean() < 3


# ---- every file in a folder accounted for (issue 27) ------------------------------------------

def _vendor_cine(path: Path, grey, frames: int) -> Path:
    """A US cine loop over 2 MiB whose header holds a vendor's private sequence of 1.9 MiB
    before the pixel data, as scanners write them: a reader of the first 1 MiB runs out of
    data inside the sequence."""
    from pydicom.dataset import Dataset

    cine = np.stack([np.roll(grey, 7 * i, axis=1) for i in range(frames)]).astype(np.uint8)
    p = make_dicom(path, cine, frames=frames)
    ds = pydicom.dcmread(p)
    item = Dataset()
    item.add_new(0x00090010, "LO", "BUSI TEST VENDOR")
    item.add_new(0x00091010, "OB", bytes(range(256)) * (1900 * 1024 // 256))
    ds.add_new(0x00090010, "LO", "BUSI TEST VENDOR")
    ds.add_new(0x00091001, "SQ", [item])  # group 0009: before Rows and the pixel data
    ds.save_as(p, enforce_file_format=True)
    return p


def test_every_file_in_a_folder_is_accounted_for(exported, tmp_path, grey):
    """A cine loop over 2 MiB with a sequence before its pixel data is found and classified; a
    SEG and a slide-microscopy tile are skipped by SOP class and counted; a CT image is refused by
    name (--allow-modality classifies it); a truncated header is a record with its reason; the
    summary's counts add up to the files in the folder."""
    from pydicom.uid import CTImageStorage, SegmentationStorage, VLWholeSlideMicroscopyImageStorage

    folder = tmp_path / "pacs"
    folder.mkdir()
    cine = _vendor_cine(folder / "CINE0001", grey, 6)
    assert cine.stat().st_size > 2 << 20
    make_dicom(folder / "IM0001", grey)
    make_dicom(folder / "SEG0001", (grey > 128).astype(np.uint8), SOPClassUID=SegmentationStorage, Modality="SEG")
    make_dicom(folder / "SM0001", np.stack([grey] * 3, axis=2), "RGB", SOPClassUID=VLWholeSlideMicroscopyImageStorage,
               Modality="SM")
    make_dicom(folder / "CT0001", grey.astype(np.uint16) * 4, SOPClassUID=CTImageStorage, Modality="CT")
    (folder / "TRUNC001").write_bytes(cine.read_bytes()[:600_000])  # ends inside the private sequence
    n_files = len(list(folder.iterdir()))
    model = exported / "model.onnx"
    r = cli("busi-infer", folder, "--model", model, "--roi", "40,40,80,60", "--frames", "all", check=False)
    assert r.returncode == 1, r.stderr
    recs = {Path(x["path"]).name: x for x in map(json.loads, r.stdout.splitlines())}
    assert recs["CINE0001"]["cine"]["frames"] == 6 and "error" not in recs["CINE0001"]
    assert "error" not in recs["IM0001"]
    assert "Modality CT" in recs["CT0001"]["error"] and "--allow-modality" in recs["CT0001"]["error"]
    assert "TRUNC001" in recs and recs["TRUNC001"]["error"]
    skipped = "skipped 2 files that are not images (1 DICOM SEG (segmentations), 1 DICOM SM (slide microscopy))"
    assert skipped in r.stderr
    assert len(recs) + 2 == n_files  # every file is a record or a counted skip
    assert "2/4 images classified" in r.stderr and "2 failed" in r.stderr
    # the CT image classified on request; a SEG named on the command line is refused by name
    r = cli("busi-infer", folder / "CT0001", folder / "SEG0001", "--model", model, "--roi", "40,40,80,60",
            "--allow-modality", check=False)
    ct, seg = map(json.loads, r.stdout.splitlines())
    assert "error" not in ct and ct["class"]
    assert "is a DICOM SEG object (Segmentation Storage" in seg["error"] and "not an image of a patient" in seg["error"]


def test_lut_items_zero_length_pixels_and_unknown_syntaxes_are_named(tmp_path, grey):
    from pydicom.dataset import Dataset
    from pydicom.encaps import encapsulate

    p = make_dicom(tmp_path / "lut.dcm", grey)
    ds = pydicom.dcmread(p)
    ds.ModalityLUTSequence = [Dataset()]  # an empty item: the pixels decode without it
    ds.save_as(p)
    from busi.runtime.imageio import read_image

    d = read_image(p)
    np.testing.assert_array_equal(d.rgb[..., 0], grey)
    assert any("(0028,3000) ModalityLUTSequence is empty or malformed (no LUT descriptor or data); ignored" in n
               for n in d.notes)
    # a 12-bit table declared as 8 bits per entry (a vendor's XA cine in a public test collection): pydicom
    # overflows building it; the stored values and the window are used, with a note
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, 8])  # LUT Descriptor
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", [80 + 15 * i for i in range(256)])  # LUT Data
    ds.ModalityLUTSequence = [item]
    ds.save_as(p)
    d = read_image(p)
    np.testing.assert_array_equal(d.rgb[..., 0], grey)
    assert any("ModalityLUTSequence is malformed (LUT entries up to 3905, above its declared 8 bits per entry); "
               "ignored" in n for n in d.notes), d.notes
    p = make_dicom(tmp_path / "empty.dcm", grey)
    ds = pydicom.dcmread(p)
    ds.PixelData = b""
    ds.save_as(p)
    with pytest.raises(InputError, match="pixel data is empty"):
        read_rgb(p)
    mpeg = "1.2.840.10008.1.2.4.100"
    p = make_dicom(tmp_path / "jxl.dcm", grey)
    ds = pydicom.dcmread(p)
    ds.file_meta.TransferSyntaxUID = mpeg
    ds.PixelData = encapsulate([b"\xff\x0a" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.save_as(p, enforce_file_format=True)
    with pytest.raises(InputError, match=r"MPEG2 .* is not supported"):
        read_rgb(p)
    p.write_bytes(p.read_bytes().replace(mpeg.encode(), b"1.2.840.10008.1.2.4.110"))  # JPEG XL: unknown to pydicom 3.0
    with pytest.raises(InputError, match=r"'1.2.840.10008.1.2.4.110' \(JPEG XL Lossless\) is not supported"):
        read_rgb(p)


def nested_sequence(depth: int, defined: bool = True) -> bytes:
    """A Content Sequence (0040,A730) nested `depth` deep, explicit VR little endian, built as
    bytes (pydicom's writer recurses): defined lengths (pydicom reads the inner levels only when
    they are used) or undefined ones (pydicom parses them all on reading)."""
    import struct

    body = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 2) + b"X1"  # CodeValue in the innermost item
    for _ in range(depth):
        if defined:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
            body = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, len(item)) + item
        else:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + body + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            body = (struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + item
                    + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return body


def insert_before_pixels(path: Path, blob: bytes) -> Path:
    """`blob` (encoded elements) put into an explicit VR little endian file just before its pixel data."""
    data = path.read_bytes()
    at = data.rindex(b"\xe0\x7f\x10\x00")
    path.write_bytes(data[:at] + blob + data[at:])
    return path


def test_empty_rescale_deep_sequences_and_an_unparseable_big_endian_file_are_named(tmp_path, grey):
    """What real archives hold (LEADTOOLS samples with an empty RescaleSlope, Orthanc's deeply
    nested sequence, a big-endian file pydicom cannot parse) is said in words, never as a raw
    exception (TypeError, RecursionError, OSError): an empty rescale value is ignored with a
    note, the others are one line that says what is wrong with the file."""
    import struct

    from pydicom.uid import ExplicitVRBigEndian

    from busi.runtime.imageio import read_image

    p = make_dicom(tmp_path / "slope.dcm", grey.astype(np.uint16) * 4)
    ds = pydicom.dcmread(p)
    ds.RescaleSlope, ds.RescaleIntercept = None, None
    ds.save_as(p)
    d = read_image(p)
    np.testing.assert_array_equal(d.rgb[..., 0], read_rgb(make_dicom(tmp_path / "plain.dcm", grey.astype(np.uint16) * 4))[..., 0])
    assert "(0028,1053) RescaleSlope is empty; ignored (1 is used)" in d.notes
    deep = insert_before_pixels(make_dicom(tmp_path / "deep.dcm", grey), nested_sequence(3000, defined=False))
    with pytest.raises(InputError) as e:
        read_rgb(deep)
    assert str(e.value) == f"{deep}: corrupt DICOM: its sequences are nested too deeply to be read"
    p = make_dicom(tmp_path / "be.dcm", grey.astype(np.uint16), ts=ExplicitVRBigEndian)
    data = p.read_bytes()
    at = data.index(b"\x00\x10\x00\x10PN")  # before PatientName: a UN element of undefined length (CP-246)
    un = (struct.pack(">HH", 0x0008, 0x2112) + b"UN\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
          + struct.pack("<HHI", 0x0008, 0x0100, 2) + b"AB" + b"\xfe\xff\x0d\xe0" + bytes(4) + b"\xfe\xff\xdd\xe0" + bytes(4))
    p.write_bytes(data[:at] + un + data[at:])
    with pytest.raises(InputError) as e:
        read_rgb(p)
    assert "corrupt DICOM: the data set cannot be parsed at byte" in str(e.value) and "Error" not in str(e.value)
    assert "the data ends inside an element" in str(e.value)


def test_a_message_two_decoders_share_is_said_once_with_both_names(tmp_path, grey):
    """A file whose header claims JPEG-LS over native pixel data (as one in a public collection):
    GDCM and pyjpegls fail with the same words, which the error gives once, naming both."""
    from hostile import claim_syntax
    from pydicom.uid import JPEGLSLossless

    p = claim_syntax(make_dicom(tmp_path / "claims_jpegls.dcm", grey), JPEGLSLossless)
    with pytest.raises(InputError) as e:
        read_rgb(p)
    said = str(e.value).split("corrupt or unsupported compressed data (", 1)[1]
    names = [n for n in ("gdcm", "pyjpegls", "pylibjpeg") if f"{n}" in said.split(":")[0]]
    assert len(names) >= 2, said
    message = said.split(": ", 1)[1]
    assert said.count(message.split(";")[0]) == 1, said
