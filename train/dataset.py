"""BUSI folder scan, validation, near-duplicate grouping and the duplicate-aware split.

Layout: `<root>/{benign,malignant,normal}/<name>.png` with masks `<name>_mask.png` and
optionally `<name>_mask_N.png` (OR-merged). The split is written as `manifest.csv`; the same
data and seed give a byte-identical manifest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from busi.runtime.contract import CLASSES
from busi.runtime.errors import DataError, InputError
from busi.runtime.imageio import read_mask, read_rgb, resize_mask
from busi.runtime.log import get as get_logger
from busi.runtime.masks import mask_stem
from busi.runtime.verify import sha256_file

_LOG = get_logger(__name__)

MANIFEST_FIELDS = ("path", "mask_paths", "label", "group", "split", "sha256")


@dataclass
class Sample:
    path: Path  # image file
    label: str
    masks: list[Path] = field(default_factory=list)
    sha256: str = ""
    problems: list[str] = field(default_factory=list)
    phash: int | None = None
    size: tuple[int, int] | None = None  # (width, height)


@dataclass
class Scan:
    root: Path
    samples: list[Sample]
    orphan_masks: list[Path]
    groups: list[list[int]] = field(default_factory=list)  # indices into samples, size >= 2

    def counts(self) -> dict[str, int]:
        return {c: sum(s.label == c for s in self.samples) for c in CLASSES}

    def conflicting_groups(self) -> list[list[int]]:
        return [g for g in self.groups if len({self.samples[i].label for i in g}) > 1]


def scan_folder(root: str | Path) -> Scan:
    """List images and their mask files; no pixel is decoded here."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    class_dirs = [root / c for c in CLASSES if (root / c).is_dir()]
    if not class_dirs:
        raise DataError(f"{root}: no class subfolders (expected {', '.join(CLASSES)})")
    samples: list[Sample] = []
    orphans: list[Path] = []
    for d in class_dirs:
        files = sorted(p for p in d.iterdir() if p.suffix.lower() == ".png" and p.is_file())
        images = {p.stem: p for p in files if mask_stem(p) is None}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for p in files:
            ms = mask_stem(p)
            if ms is not None:
                masks.setdefault(ms[0], []).append((ms[1], p))
        for stem, lst in sorted(masks.items()):
            if stem not in images:
                orphans.extend(p for _, p in sorted(lst))
        for stem, p in sorted(images.items()):
            s = Sample(path=p, label=d.name, masks=[m for _, m in sorted(masks.get(stem, []))])
            if not s.masks:
                s.problems.append("missing mask")
            samples.append(s)
    if not samples:
        raise DataError(f"{root}: no PNG images in the class subfolders")
    samples.sort(key=lambda s: s.path.relative_to(root).as_posix())
    return Scan(root=root, samples=samples, orphan_masks=sorted(orphans))


def load_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """OR of all mask files of a sample, at the image's (H, W); other sizes resized (nearest)."""
    out = np.zeros(shape, bool)
    for mp in sample.masks:
        m = read_mask(mp)
        if m.shape != shape:
            warnings.warn(f"{mp}: mask is {m.shape[1]}x{m.shape[0]}, image is {shape[1]}x{shape[0]}; resized (nearest)", stacklevel=2)
            m = resize_mask(m, shape)
        out |= m
    return out


def inspect(scan: Scan, hash_size: int = 8) -> None:
    """Decode every image and mask once: sha256, perceptual hash, per-file problems."""
    import imagehash
    from PIL import Image

    from busi.runtime.progress import tracked

    for s in tracked(scan.samples, len(scan.samples), "check-data"):
        s.sha256 = sha256_file(s.path)
        try:
            rgb = read_rgb(s.path)
        except InputError as e:
            s.problems.append(f"unreadable image ({e.problem})")
            continue
        s.size = (rgb.shape[1], rgb.shape[0])
        grey = Image.fromarray(rgb).convert("L")
        s.phash = int(str(imagehash.phash(grey, hash_size=hash_size)), 16)
        if not s.masks:
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                m = load_mask(s, rgb.shape[:2])
            s.problems.extend(f"warning: {w.message}" for w in caught)
        except InputError as e:
            s.problems.append(f"unreadable mask ({e})")
            continue
        if s.label != "normal" and not m.any():
            s.problems.append("empty mask on a lesion class")


def group_duplicates(scan: Scan, max_distance: int = 4) -> None:
    """Union images whose perceptual hashes differ by <= max_distance bits."""
    idx = [i for i, s in enumerate(scan.samples) if s.phash is not None]
    parent = {i: i for i in idx}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    hashes = np.array([scan.samples[i].phash for i in idx], dtype=np.uint64)
    for a in range(len(idx)):
        x = np.bitwise_xor(hashes[a + 1 :], hashes[a])
        dist = np.array([int(v).bit_count() for v in x], dtype=int)
        for b in np.flatnonzero(dist <= max_distance):
            ra, rb = find(idx[a]), find(idx[a + 1 + b])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for i in idx:
        members.setdefault(find(i), []).append(i)
    scan.groups = sorted((sorted(g) for g in members.values() if len(g) > 1), key=lambda g: g[0])


def unusable_reason(scan: Scan) -> str | None:
    """Why the data cannot be trained on, or None."""
    usable = [s for s in scan.samples if not blocking(s)]
    labels = {s.label for s in usable}
    if len(labels) < 2:
        return f"{scan.root}: fewer than two classes have usable images"
    return None


def blocking(s: Sample) -> bool:
    return any(not p.startswith("warning") and p != "empty mask on a lesion class" for p in s.problems) or (
        s.phash is None
    )


def summary(scan: Scan) -> dict:
    rel = lambda p: Path(p).relative_to(scan.root).as_posix()  # noqa: E731
    return {
        "root": str(scan.root),
        "images": len(scan.samples),
        "counts": scan.counts(),
        "multi_mask": [rel(s.path) for s in scan.samples if len(s.masks) > 1],
        "duplicate_groups": [[rel(scan.samples[i].path) for i in g] for g in scan.groups],
        "conflicting_groups": [[rel(scan.samples[i].path) for i in g] for g in scan.conflicting_groups()],
        "problems": {rel(s.path): s.problems for s in scan.samples if s.problems},
        "orphan_masks": [rel(p) for p in scan.orphan_masks],
        "unusable": unusable_reason(scan),
    }


def split(
    scan: Scan,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    keep_conflicts: bool = False,
) -> list[dict]:
    """Stratified group split. Duplicate groups never straddle splits; label-conflicting
    groups are excluded (or kept in train with keep_conflicts). Returns manifest rows."""
    from sklearn.model_selection import StratifiedGroupKFold

    n = len(scan.samples)
    group_of = np.arange(n)
    for gi, g in enumerate(scan.groups):
        for i in g:
            group_of[i] = n + gi
    conflicting = {i for g in scan.conflicting_groups() for i in g}
    usable = [i for i, s in enumerate(scan.samples) if not blocking(s) and (s.masks or s.label == "normal")]
    assign: dict[int, str] = {}
    pool = []
    for i in usable:
        if i in conflicting:
            if keep_conflicts:
                assign[i] = "train"
        else:
            pool.append(i)
    pool_arr = np.array(pool)
    labels = np.array([CLASSES.index(scan.samples[i].label) for i in pool])
    groups = group_of[pool_arr]

    def carve(ix: np.ndarray, frac: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
        """Split ix into (rest, held) with about `frac` of it held out, stratified by group."""
        n_splits = max(2, int(round(1 / frac)))
        n_groups = len(np.unique(groups[ix]))
        n_splits = min(n_splits, n_groups)
        if n_splits < 2:
            return ix, ix[:0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small classes: sklearn warns, split is still valid
            sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + salt)
            rest, held = next(sgkf.split(np.zeros(len(ix)), labels[ix], groups[ix]))
        return ix[rest], ix[held]

    all_ix = np.arange(len(pool))
    rest, test = carve(all_ix, test_frac, 0)
    train, val = carve(rest, val_frac / (1 - test_frac), 1)
    for part, name in ((train, "train"), (val, "val"), (test, "test")):
        for j in part:
            assign[pool[j]] = name
    rows = []
    for i, s in enumerate(scan.samples):
        if i not in assign:
            continue
        rows.append(
            {
                "path": s.path.relative_to(scan.root).as_posix(),
                "mask_paths": ";".join(m.relative_to(scan.root).as_posix() for m in s.masks),
                "label": s.label,
                "group": f"g{group_of[i] - n:04d}" if group_of[i] >= n else "",
                "split": assign[i],
                "sha256": s.sha256,
            }
        )
    return rows


def csv_text(rows: list[dict], fields: tuple[str, ...], float_digits: int | None = None) -> str:
    """CSV of `fields` from each row ("\n" line ends; floats with `float_digits` decimals)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r[k]:.{float_digits}f}" if float_digits and isinstance(r[k], float) else r[k]) for k in fields})
    return buf.getvalue()


def manifest_bytes(rows: list[dict]) -> bytes:
    return csv_text(rows, MANIFEST_FIELDS).encode()


def fingerprint(rows: list[dict]) -> str:
    """sha256 over (path, label, split, sha256) of every manifest row: names the data + split."""
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r['path']}\t{r['label']}\t{r['split']}\t{r['sha256']}\n".encode())
    return h.hexdigest()


def read_manifest(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def usable_rows(data: str | Path) -> tuple[list[dict], list[str], Scan]:
    """(manifest-like rows of every usable image of a BUSI-layout folder, the paths skipped, the scan):
    label-conflicting duplicates, unreadable files and lesion images without a mask are skipped."""
    scan = scan_folder(data)
    inspect(scan)
    group_duplicates(scan)
    conflicting = {i for g in scan.conflicting_groups() for i in g}
    rows = []
    skipped = []
    for i, s in enumerate(scan.samples):
        if i in conflicting or blocking(s) or not (s.masks or s.label == "normal"):
            skipped.append(s.path.relative_to(scan.root).as_posix())
            continue
        rows.append(
            {
                "path": s.path.relative_to(scan.root).as_posix(),
                "mask_paths": ";".join(m.relative_to(scan.root).as_posix() for m in s.masks),
                "label": s.label,
            }
        )
    if not rows:
        raise DataError(f"{data}: no usable images to evaluate")
    if skipped:
        _LOG.info(f"{data}: skipped {len(skipped)} images (label conflicts or problems): {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
    return rows, skipped, scan
