"""What one busi-infer run writes, checked before the first image is read.

Every output target (--out, --report, --explain, --dicom-out) is checked up front: it must be
writable (a folder busi can create a file in), of the right kind (a file or a folder), and it
must not collide with another output of the same run or with anything the run reads (the
inputs, the masks and the --mask folder, the model, the segmenter and their sidecars). A
problem is one OutputError line naming both paths, exit 2, before any image is classified.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterable

from .atomic import output_target
from .errors import OutputError
from .masks import mask_stem

#: file name bytes most file systems allow (NAME_MAX); atomic writes add a temp prefix under it
NAME_MAX = 255
#: suffixes of the files --explain and --dicom-out write
GRADCAM_SUFFIX = ".gradcam.png"
DICOM_SUFFIXES = (".sr.dcm", ".sc.dcm", ".seg.dcm")


def _real(p: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(p))


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    return Path(_real(path)).is_relative_to(_real(folder))


def writable_folder(folder: Path, label: str, what: str = "the folder") -> None:
    """OutputError unless `folder` is, or can be created as, a folder a file can be written in
    (probed with a temp file in it, or in its nearest existing parent: permissions, a
    read-only file system)."""
    probe = Path(os.path.abspath(folder))
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not os.path.isdir(probe):
        raise OutputError(folder, f"{label}: {probe} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".busi-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        where = what if probe == Path(os.path.abspath(folder)) else f"its parent {probe}"
        raise OutputError(folder, f"{label}: cannot write into {where} ({e.strerror or e})") from None


def output_folder(folder: Path, label: str) -> Path:
    """An --explain or --dicom-out folder: not a file, and writable."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise OutputError(folder, f"is not a directory ({label} takes a folder)")
    writable_folder(folder, label)
    return folder


def model_files(*models: str | os.PathLike | None) -> list[Path]:
    """A model (or segmenter) file with what travels beside it: its .sha256 and the folder's cards."""
    out: list[Path] = []
    for m in models:
        if m is None:
            continue
        m = Path(m)
        out += [m, m.with_name(m.name + ".sha256"), m.parent / "card.json", m.parent / "segmenter.json"]
    return out


def check_outputs(*, out: Path | None, report: Path | None, explain: Path | None, dicom_out: Path | None,
                  args: Iterable[str], files: Iterable[str], models: Iterable[Path], mask: str | None) -> dict:
    """The final paths of --out and --report ({option: path}), after every check; OutputError
    (exit 2, one line naming both paths) for the first problem."""
    mask_path = Path(mask) if mask not in (None, "auto", "none") else None
    sources = [*files, *models, *([mask_path] if mask_path is not None else [])]
    folders = {"--explain": explain, "--dicom-out": dicom_out}
    for label, folder in folders.items():
        if folder is None:
            continue
        output_folder(folder, label)
        for a in args:  # busi's outputs are never its inputs: a later walk of that folder would read them
            if os.path.isdir(a) and _inside(folder, a):
                raise OutputError(folder, f"{label} is inside the input folder {a}; write it elsewhere")
        if mask_path is not None and os.path.isdir(mask_path) and _inside(folder, mask_path):
            raise OutputError(folder, f"{label} is inside the --mask folder {mask_path}; write it elsewhere")
    finals: dict[str, Path] = {}
    for label, target in (("--out", out), ("--report", report)):
        if target is None:
            continue
        final = output_target(target, sources)
        for other, done in finals.items():
            if _real(done) == _real(final):
                raise OutputError(target, f"is both the {other} and the {label} file; give two names")
        for model in models:
            if _real(model) == _real(final):
                raise OutputError(target, f"is {model}, which this run reads; refusing to overwrite it")
        name = final.name
        if explain is not None and _inside(final, explain) and name.endswith(GRADCAM_SUFFIX):
            raise OutputError(target, f"is a Grad-CAM overlay name in the --explain folder {explain}; give another name")
        if dicom_out is not None and _inside(final, dicom_out) and name.endswith(DICOM_SUFFIXES):
            raise OutputError(target, f"is a DICOM output name in the --dicom-out folder {dicom_out}; give another name")
        if mask_path is not None and os.path.isdir(mask_path) and _inside(final, mask_path) and mask_stem(final) is not None:
            raise OutputError(target, f"is a mask file name in the --mask folder {mask_path}; refusing to replace a mask")
        writable_folder(final.parent, label, "its folder")
        finals[label] = final
    return finals


def safe_name(stem: str, suffix: str, limit: int = NAME_MAX - 40) -> str:
    """`stem + suffix`, with the stem shortened (and a digest of it added, so two long names
    stay apart) when the name's bytes exceed `limit`: an output name that a file system cannot
    hold never aborts a run. The limit leaves room for the atomic write's temp prefix."""
    name = stem + suffix
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    tag = "~" + hashlib.sha256(os.fsencode(stem)).hexdigest()[:12]
    keep = limit - len(os.fsencode(suffix)) - len(tag)
    head = os.fsencode(stem)[:keep]
    return os.fsdecode(head) + tag + suffix
