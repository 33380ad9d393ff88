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

from .errors import InputError
from .files import read_regular
from .imageio import is_dicom
from .dicom_out import MANUFACTURER as BUSI_MANUFACTURER
from .gradcam import is_busi_png
from .html_report import GENERATOR
from .masks import mask_stem

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


def kind_of(path: Path) -> str | None:
    """None for an image to classify; else the kind of file it is, for the skip count."""
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
    return _dicom_kind(head)


def _dicom_kind(head: bytes) -> str | None:
    """None for a DICOM image (or one that cannot be parsed: it is tried and its problem
    reported); else why it is skipped: no pixel data, or made by busi (--dicom-out)."""
    import io
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(head), force=True, defer_size=256,
                                 specific_tags=["PixelData", "FloatPixelData", "DoubleFloatPixelData", "Rows", "Manufacturer"])
    except Exception:
        return None
    if str(ds.get("Manufacturer", "")).startswith(BUSI_MANUFACTURER):
        return OWN
    pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")) or "Rows" in ds
    return None if pixels else NO_PIXELS


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
        raise InputError(path, f"cannot read as a DICOMDIR ({type(e).__name__}: {str(e)[:120]})") from None


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


def expand_inputs(args: list[str]) -> Inputs:
    """Files as given; folders searched recursively (non-images skipped and counted); globs
    expanded; a DICOMDIR (named, not found in a folder) replaced by the images it references.

    A name that matches nothing is kept, so it is reported as a failure record; a folder
    without images is an InputError in its place."""
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
                kind = kind_of(f)
                if kind is None:
                    found.append(str(f))
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
            res.files.extend(images or [InputError(p, "DICOMDIR references no images")])
        elif not os.path.exists(p) and glob.has_magic(a):
            # a pattern that matches nothing stays, to be reported as a failure record
            res.files.extend(sorted(glob.glob(a, recursive=True)) or [a])
        else:
            res.files.append(a)
    return res
