"""What busi-infer's arguments name: files, folders (searched recursively), globs and DICOMDIRs.

A PACS export names its files `IM0001` or by UID, without an extension, so a folder's files
are recognised by content (PNG and JPEG by suffix, DICOM by its marker or a readable dataset
header), not by extension. What is not an image (mask files, a DICOMDIR, an SR or other DICOM
object without pixel data, a text file) is skipped and counted, so it is neither silent nor an
error; what is named explicitly is always tried, so its problem is reported.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import dicom_headers
from .dicom_identity import is_busi_output
from .errors import InputError, describe
from .files import read_regular
from .gradcam import is_busi_png
from .html_report import GENERATOR
from .imageio import is_dicom
from .masks import mask_stem
from .sop_classes import modality_problem, not_an_image, sop_class_name

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg"}
#: how much of a file is read to tell whether it is DICOM and has pixel data
SNIFF_BYTES = 1 << 20

MASK, DICOMDIR, NO_PIXELS, OTHER = "mask files", "DICOMDIR", "DICOM objects without pixel data", "other files"
OWN = "busi's own DICOM outputs"
OWN_VIEW, OWN_REPORT = "busi's own Grad-CAM overlays", "busi's own HTML reports"
LINKED_DIR = "symbolic links to folders (not followed)"


@dataclass
class Inputs:
    #: what to classify, in the order given: paths, and InputErrors for what named nothing usable
    #: (a folder without images, an unreadable DICOMDIR), so they are reported in their place
    files: list[str | InputError] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        """'skipped 3 files (2 mask files, 1 DICOMDIR)', or '' when nothing was skipped."""
        n = sum(self.skipped.values())
        if not n:
            return ""
        parts = ", ".join(f"{v} {k}" for k, v in sorted(self.skipped.items()))
        return f"skipped {n} file{'s' if n != 1 else ''} that {'are' if n != 1 else 'is'} not images ({parts})"


def kind_of(path: Path, allow_modality: bool = True) -> str | InputError | None:
    """None for an image to classify; else the kind of file it is, for the skip count; an
    InputError for a DICOM image that is refused by name (not ultrasound, without
    `allow_modality`), to be reported in its place."""
    if path.is_symlink() and path.is_dir():
        return LINKED_DIR
    if path.suffix.lower() in RASTER_SUFFIXES:
        if mask_stem(path) is not None:
            return MASK
        try:
            return OWN_VIEW if is_busi_png(read_regular(path, what="a file", head=4096)) else None
        except InputError:
            return None  # unreadable: tried, so the problem is reported
    if path.name.upper() == "DICOMDIR":
        return DICOMDIR
    try:
        head = read_regular(path, what="a file", head=SNIFF_BYTES)
    except InputError:
        return None  # unreadable: tried, so the problem is reported
    if not is_dicom(head):
        return OWN_REPORT if f'<meta name="generator" content="{GENERATOR}'.encode() in head[:4096] else OTHER
    return _dicom_kind(path, head, allow_modality)


def _dicom_kind(path: Path, head: bytes, allow_modality: bool = True) -> str | InputError | None:
    """None for a DICOM image, or for a file whose header cannot be read (it is tried, and
    its problem reported in a record); else why it is skipped: made by busi (--dicom-out), an
    object that is not an image of a patient (by SOP class), or no pixel data; an InputError
    for a non-ultrasound image (refused by name unless allowed)."""
    ds = read_header(path, head)
    if ds is None:
        return None
    if is_busi_output(ds):
        return OWN
    kind = not_an_image(ds.get("SOPClassUID", ""))
    if kind:
        return kind
    if ds.get("DirectoryRecordSequence") is not None or str(ds.get("SOPClassUID", "")) == "1.2.840.10008.1.3.10":
        return DICOMDIR
    if not ds.busi_complete:
        return None  # cannot tell what it is: tried, so the full read names the problem in a record
    if not ds.busi_has_pixels:
        return NO_PIXELS
    refused = None if allow_modality else refusal(path, ds)
    if refused is None:
        _keep_for_decoding(path, ds)
    return refused


def refusal(path, ds) -> InputError | None:
    """An InputError for a DICOM dataset that busi-infer does not classify: not an image of a
    patient (by SOP class) or not ultrasound; None for an ultrasound image."""
    sop = ds.get("SOPClassUID", "")
    kind = not_an_image(sop)
    if kind:
        return InputError(path, f"is a {kind.split(' (')[0]} object ({sop_class_name(sop)}), not an image of a patient; "
                                "not classified")
    problem = modality_problem(ds.get("Modality", ""), sop)
    return InputError(path, problem) if problem else None


def named_refusal(path: str, allow_modality: bool) -> InputError | None:
    """For a file named on the command line (or by a DICOMDIR): its refusal when it is a DICOM
    object busi-infer does not classify; None otherwise (it is tried, so its problem is reported)."""
    p = Path(path)
    try:
        head = read_regular(p, what="a file", head=SNIFF_BYTES)
    except InputError:
        return None
    if not is_dicom(head):
        return None
    ds = read_header(p, head)
    if ds is None or is_busi_output(ds):
        return None
    # an image, allowed; or no pixel data: tried, so that problem is reported
    tried = not not_an_image(ds.get("SOPClassUID", "")) and (allow_modality or not ds.busi_has_pixels)
    refused = None if tried else refusal(path, ds)
    if refused is None:
        _keep_for_decoding(p, ds)
    return refused


#: a deflated header is inflated up to this many bytes to find what the object is (a bomb guard);
#: a header that does not fit is decided on the full read, which has its own cap
DEFLATED_HEADER_BYTES = 64 << 20
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}


def read_header(path: Path, head: bytes = b""):
    """The dataset up to its pixel data, parsed from the whole file (never a fixed prefix:
    pydicom running out of data inside a sequence returns an empty dataset, not an error; a
    `head` shorter than SNIFF_BYTES is the whole file), with `busi_has_pixels`,
    `busi_complete` (the parse reached the pixel data or the end of the file) and
    `busi_prefix` (the bytes up to the pixel data element, for `dicom_headers.keep`; None
    when a value was left in the file) set; None when it cannot be parsed (the full read
    reports why)."""
    import io
    import struct
    import warnings

    import pydicom

    whole = bool(head) and len(head) < SNIFF_BYTES
    try:
        fd = None if whole else os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with io.BytesIO(head) if whole else os.fdopen(fd, "rb") as fp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if b"1.2.840.10008.1.2.1.99" in head[:4096]:  # deflated: inflate the header only, capped
                    return _deflated_header(head if whole else fp.read())
                ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True, defer_size=None if whole else 1 << 16)
                offset = fp.tell()
                tag = fp.read(4)
                if not whole and _has_deferred(ds):
                    ds.busi_prefix = None
                elif offset <= len(head):  # the sniff holds the header already: not read again
                    ds.busi_prefix = head[:offset]
                else:
                    fp.seek(0)
                    ds.busi_prefix = fp.read(offset)
        except Exception:
            return None
    if len(tag) == 4:
        _, little = ds.original_encoding
        g, e = struct.unpack("<HH" if little is not False else ">HH", tag)
        ds.busi_has_pixels = (g << 16 | e) in _PIXEL_TAGS
    else:
        ds.busi_has_pixels = False
    # 'no pixel data' is believed only when the parse reached the end of the file (pydicom stops
    # quietly at a truncated element or sequence)
    ds.busi_complete = ds.busi_has_pixels or _ends_at(ds, len(head) if whole else os.path.getsize(path))
    return ds


def _has_deferred(ds) -> bool:
    """Whether a value of `ds` was left in the file (larger than the header read's defer size)."""
    from pydicom.dataelem import RawDataElement

    for t in ds.keys():
        e = ds.get_item(t, keep_deferred=True)
        if isinstance(e, RawDataElement) and e.value is None and e.length not in (0, 0xFFFFFFFF):
            return True
    return False


def _keep_for_decoding(path, ds) -> None:
    """An image about to be classified: its header is kept for the decoder (parsed once)."""
    if ds.busi_has_pixels and getattr(ds, "busi_prefix", None) and ds.busi_prefix[128:132] == b"DICM":
        dicom_headers.keep(path, ds, ds.busi_prefix)


def _ends_at(ds, size: int) -> bool:
    """Whether the last element of a dataset read without stopping ends where the data ends:
    pydicom stops quietly at a truncated element or sequence, so 'no pixel data' is only
    believed when the whole file was parsed."""
    if not len(ds):
        return False
    last = ds.get_item(max(ds.keys()), keep_deferred=True)
    tell = getattr(last, "value_tell", None)
    if tell is None:
        return True
    length = last.length
    if length == 0xFFFFFFFF:
        return tell + len(last.value or b"") + 8 == size
    return tell + length == size


def _deflated_header(data: bytes):
    import io
    import zlib

    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset

    fp = io.BytesIO(data)
    fp.seek(132 if data[128:132] == b"DICM" else 0)
    FileMetaDataset(read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                                 stop_when=lambda tag, vr, length: tag.group != 2))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    body = inflater.decompress(data[fp.tell():], DEFLATED_HEADER_BYTES)
    seen = []
    ds = read_dataset(io.BytesIO(body), is_implicit_VR=False, is_little_endian=True,
                      stop_when=lambda tag, vr, length: seen.append(tag) or tag in _PIXEL_TAGS)
    ds.busi_has_pixels = bool(seen) and seen[-1] in _PIXEL_TAGS
    ds.busi_complete = ds.busi_has_pixels or (inflater.eof and _ends_at(ds, len(body)))
    return ds


def dicomdir_images(path: Path) -> list[str]:
    """The image files a DICOMDIR references (records of type IMAGE), in its order."""
    import warnings

    import pydicom
    from pydicom.fileset import FileSet

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fs = FileSet(pydicom.dcmread(path))
            return [str(inst.path) for inst in fs if str(inst.DirectoryRecordType).upper() == "IMAGE"]
    except Exception as e:
        raise InputError(path, f"cannot read as a DICOMDIR ({describe(e, 120)})") from None


def walk(folder: Path) -> list[tuple[Path, str | None]]:
    """Every file below `folder` in path order (symlinked folders are not followed), with None,
    or with why it cannot be read: a folder that cannot be listed (permissions, a name too
    long), a file that vanished or a broken symbolic link. Not-regular files (a FIFO, a device)
    come as they are, so `kind_of` counts them."""
    out: list[tuple[Path, str | None]] = []

    def unreadable(e: OSError) -> None:
        out.append((Path(e.filename or folder), f"cannot read this folder ({e.strerror or e}); the images in it are "
                    "not classified"))

    for root, dirs, names in os.walk(folder, onerror=unreadable):
        out += [(Path(root, d), None) for d in dirs if os.path.islink(os.path.join(root, d))]  # counted, not followed
        for n in names:
            f = Path(root, n)
            try:
                os.stat(f)
            except FileNotFoundError:
                out.append((f, "broken symbolic link" if f.is_symlink() else "file vanished while the folder was read"))
                continue
            except OSError as e:
                out.append((f, f"cannot read ({e.strerror or e})"))
                continue
            out.append((f, None))
    return sorted(out, key=lambda t: t[0])


def expand_inputs(args: list[str], allow_modality: bool = True) -> Inputs:
    """Files as given; folders searched recursively (non-images skipped and counted); globs
    expanded; a DICOMDIR (named, not found in a folder) replaced by the images it references.

    A name that matches nothing is kept, so it is reported as a failure record; a folder
    without images is an InputError in its place. A DICOM object that is not an image of a
    patient (SEG, SR, SM, ...) named explicitly, and without `allow_modality` a DICOM image
    that is not ultrasound, is an InputError in its place (refused by name)."""
    res = Inputs()
    for a in args:
        if not str(a).strip():  # Path("") is ".": an empty argument would classify the whole current folder
            res.files.append(InputError(None, f"an empty path was given ({a!r})"))
            continue
        p = Path(a)
        if os.path.isdir(p):  # os.path: a name too long is no folder (Path.is_dir raises)
            found, here = [], Counter()
            for f, problem in walk(p):
                if problem is not None:  # unreadable: a failure record in its place, never skipped in silence
                    found.append(InputError(f, problem))
                    continue
                kind = kind_of(f, allow_modality)
                if kind is None or isinstance(kind, InputError):
                    found.append(kind or str(f))
                else:
                    here[kind] += 1
            res.skipped.update(here)
            res.files.extend(found)
            if not found:  # reported as a failure: the user named it to have something classified
                what = ", ".join(f"{v} {k}" for k, v in sorted(here.items()))
                res.files.append(InputError(p, f"is a directory without images ({what})" if here
                                            else "is a directory holding no files"))
        elif os.path.isfile(p) and p.name.upper() == "DICOMDIR":
            try:
                images = dicomdir_images(p)
            except InputError as e:
                images = [e]
            res.files.extend([named_refusal(f, allow_modality) or f if isinstance(f, str) else f for f in images]
                             or [InputError(p, "DICOMDIR references no images")])
        elif not os.path.exists(p) and glob.has_magic(a):
            # a pattern that matches nothing stays, to be reported as a failure record
            res.files.extend([named_refusal(f, allow_modality) or f for f in sorted(glob.glob(a, recursive=True))] or [a])
        else:
            res.files.append(named_refusal(a, allow_modality) or a)
    return res
