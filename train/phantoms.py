"""Synthetic B-mode breast ultrasound phantoms in the BUSI folder layout.

Deterministic by seed. Each image: tissue layers (skin, fat, gland, muscle) with
depth attenuation and multiplicative Rayleigh speckle. Benign lesions are oval,
circumscribed, wider than tall, hypoechoic, with posterior enhancement; malignant ones are
irregular or spiculated, taller than wide, heterogeneous, with posterior shadowing; normal
images hold no lesion and an all-zero mask. Size, aspect and contrast ranges overlap
between benign and malignant, so the classes are learnable but not trivially.

Storage varies on purpose so every loader path runs: some images grey, some RGB, some
masks RGBA or 1-bit, some split into `_mask` + `_mask_1` parts (to be OR-merged).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from busi.runtime.contract import CLASSES

#: written beside the class folders: the data are synthetic (the OOD guard's evaluation then
#: does not take phantoms as its near-OOD set)
PHANTOM_MARKER = "phantoms.json"


@dataclass(frozen=True)
class Site:
    """A "scanner": what differs between hospitals' images of the same anatomy. Site A is the
    generator's original look (every earlier phantom, bit for bit); other sites change gain and
    dynamic range, speckle grain, depth attenuation, blur, resolution, image size and aspect,
    and burn text, a depth ruler, caliper marks and near-field artefacts into the image."""

    name: str
    width: tuple[int, int] = (400, 700)
    aspect: tuple[float, float] = (0.75, 1.0)  # height / width
    speckle_sigma: tuple[float, float] = (1.2, 0.6)  # speckle grain (blur of the Rayleigh field), x and y
    attenuation: tuple[float, float] = (0.6, 1.4)
    gain: tuple[float, float] = (1.0, 1.0)  # on the log-compressed image
    gamma: tuple[float, float] = (1.0, 1.0)  # dynamic range: < 1 lifts the dark tissue
    blur: float = 0.0  # Gaussian sigma (px) of the display
    resolution: float = 1.0  # acquired at this fraction of the display size, upsampled
    annotations: bool = False  # burned-in text and a depth ruler
    calipers: float = 0.0  # probability that a lesion image carries caliper marks
    near_field: float = 0.0  # probability of a near-field artefact (dark contact gap and reverberation)

    @property
    def original(self) -> bool:
        return self == Site(self.name)


SITES = {
    "A": Site("A"),
    # another vendor's scanner, set up by another department: wider, shallower frames at a
    # coarser speckle grain and lower resolution, more attenuation, brighter with a compressed
    # dynamic range, text and rulers burned in, calipers on half the lesions and a near-field
    # contact artefact on half the images
    "B": Site("B", width=(560, 900), aspect=(0.6, 0.8), speckle_sigma=(2.2, 1.1), attenuation=(1.2, 2.0),
              gain=(1.15, 1.45), gamma=(0.7, 0.85), blur=1.0, resolution=0.6, annotations=True, calipers=0.5,
              near_field=0.5),
}


def site_profile(name: str) -> Site:
    try:
        return SITES[name.upper()]
    except KeyError:
        raise ValueError(f"unknown phantom site {name!r}: choose from {', '.join(SITES)}") from None


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (random field upsampled from a coarse grid)."""
    gh, gw = max(2, int(h / scale)), max(2, int(w / scale))
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    up = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return up / (np.abs(up).max() + 1e-6)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Echogenicity map (before speckle) with skin, fat, gland and muscle layers."""
    y = np.arange(h, dtype=np.float32)[:, None] / h
    x = np.arange(w, dtype=np.float32)[None, :] / w
    wav = lambda amp, f, ph: amp * np.sin(2 * np.pi * (f * x + ph))  # noqa: E731
    skin = rng.uniform(0.03, 0.06) + wav(0.005, 1, rng.random())
    fat = skin + rng.uniform(0.12, 0.25) + wav(0.03, rng.uniform(0.5, 2), rng.random())
    gland = fat + rng.uniform(0.3, 0.45) + wav(0.04, rng.uniform(0.5, 2), rng.random())
    img = np.full((h, w), 0.35, np.float32)
    img = np.where(y < skin, 0.95, img)
    fat_tex = 0.32 + 0.12 * _smooth_noise(rng, h, w, 25)
    img = np.where((y >= skin) & (y < fat), fat_tex, img)
    gland_tex = 0.6 + 0.18 * _smooth_noise(rng, h, w, 18)
    img = np.where((y >= fat) & (y < gland), gland_tex, img)
    stripes = 0.45 + 0.15 * np.sin(2 * np.pi * (y * rng.uniform(25, 40) + 0.2 * _smooth_noise(rng, h, w, 60)))
    img = np.where(y >= gland, stripes, img)
    # Cooper's ligaments: a few bright thin curves
    for _ in range(rng.integers(2, 6)):
        cy = rng.uniform(0.15, 0.7)
        curve = cy + 0.05 * np.sin(2 * np.pi * (x * rng.uniform(0.5, 2) + rng.random()))
        img += 0.35 * np.exp(-(((y - curve) * h / 2.0) ** 2))
    return np.clip(img, 0, 1.2)


def _oval(rng: np.random.Generator, h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    angle = rng.uniform(-15, 15)
    cv2.ellipse(m, (int(cx), int(cy)), (int(rx), int(ry)), angle, 0, 360, 1, -1)
    return m.astype(bool)


def _irregular(rng: np.random.Generator, h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    n = int(rng.integers(14, 28))
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    spiculated = rng.random() < 0.6
    r = 1 + 0.2 * rng.standard_normal(n).clip(-2, 2)
    if spiculated:
        r[rng.random(n) < 0.35] *= rng.uniform(1.2, 1.6)
    pts = np.stack([cx + rx * r * np.cos(t), cy + ry * r * np.sin(t)], axis=1).astype(np.int32)
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [pts], 1)
    return m.astype(bool)


def make_phantom(rng: np.random.Generator, label: str, site: Site = SITES["A"]) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: (grey uint8 image H x W, bool lesion mask H x W), as `site`'s scanner shows it."""
    w = int(rng.integers(site.width[0], site.width[1] + 1))
    h = int(w * rng.uniform(*site.aspect))
    echo = _background(rng, h, w)
    mask = np.zeros((h, w), bool)
    if label != "normal":
        size = rng.uniform(0.08, 0.24) * w  # overlapping size range for both lesion classes
        if label == "benign":
            aspect = rng.uniform(0.9, 1.9)  # width / height: mostly wider than tall
        else:
            aspect = rng.uniform(0.6, 1.25)  # mostly taller than wide
        rx = size / 2
        ry = rx / aspect
        cx = rng.uniform(0.25, 0.75) * w
        cy = rng.uniform(0.3, 0.6) * h
        cy = min(cy, h - ry - 0.15 * h)
        shape = _oval if label == "benign" else _irregular
        mask = shape(rng, h, w, cx, cy, rx, ry)
        if not mask.any():
            mask = _oval(rng, h, w, cx, cy, max(rx, 5), max(ry, 5))
        contrast = rng.uniform(0.12, 0.45)  # lesion echo level (hypoechoic), overlapping ranges
        inner = np.full((h, w), contrast, np.float32)
        if label == "malignant":
            inner += rng.uniform(0.05, 0.2) * _smooth_noise(rng, h, w, 8)  # heterogeneous
        else:
            inner += 0.03 * _smooth_noise(rng, h, w, 20)
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.5 if label == "benign" else 1.0)
        echo = echo * (1 - soft) + inner * soft
        # posterior acoustic feature below the lesion: enhancement (benign) / shadowing (malignant)
        cols = mask.any(axis=0)
        bottom = np.where(mask.any(axis=1))[0].max()
        col_profile = cv2.GaussianBlur(cols.astype(np.float32)[None, :], (0, 0), 4)[0]
        below = (np.arange(h)[:, None] > bottom).astype(np.float32)
        fade = np.exp(-np.maximum(0, np.arange(h)[:, None] - bottom) / (0.5 * h))
        if label == "benign":
            gain = rng.uniform(0.15, 0.5)
        else:
            gain = -rng.uniform(0.25, 0.6)
        echo = echo * (1 + gain * below * fade * col_profile[None, :])
    # depth attenuation (partly compensated by TGC), then multiplicative Rayleigh speckle
    depth = np.arange(h, dtype=np.float32)[:, None] / h
    echo = echo * np.exp(-rng.uniform(*site.attenuation) * depth) * (1 + 0.3 * depth)
    speckle = rng.rayleigh(scale=1.0, size=(h, w)).astype(np.float32)
    sx, sy = site.speckle_sigma
    speckle = cv2.GaussianBlur(speckle, (0, 0), sigmaX=sx, sigmaY=sy) / np.sqrt(np.pi / 2)
    img = echo * speckle
    img = np.log1p(4 * np.clip(img, 0, None)) / np.log1p(4 * 1.6)  # log compression
    if not site.original:  # site A draws nothing more: its images stay what they always were
        img = _scanner(rng, img, mask, site)
    return np.clip(img * 255, 0, 255).astype(np.uint8), mask


def _scanner(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, site: Site) -> np.ndarray:
    """What a site's scanner and its settings do to the log-compressed image (0..1)."""
    h, w = img.shape
    if site.near_field and rng.random() < site.near_field:
        # poor probe contact: a dark gap under part of the probe, with reverberation lines in it
        x0 = rng.uniform(0.05, 0.55) * w
        x1 = min(w, x0 + rng.uniform(0.2, 0.4) * w)
        depth = rng.uniform(0.06, 0.12) * h
        gap = np.zeros((h, w), np.float32)
        cv2.ellipse(gap, (int((x0 + x1) / 2), 0), (int((x1 - x0) / 2), int(depth)), 0, 0, 180, 1.0, -1)
        gap = cv2.GaussianBlur(gap, (0, 0), 3)
        y = np.arange(h, dtype=np.float32)[:, None]
        lines = 0.25 * (np.cos(2 * np.pi * y / max(4.0, depth / 3)) > 0.9)
        img = img * (1 - 0.85 * gap) + gap * lines
    img = np.clip(img * rng.uniform(*site.gain), 0, 1) ** rng.uniform(*site.gamma)
    if site.resolution < 1:
        small = cv2.resize(img, (max(8, int(w * site.resolution)), max(8, int(h * site.resolution))), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if site.blur:
        img = cv2.GaussianBlur(img, (0, 0), site.blur)
    marks = np.zeros((h, w), np.uint8)  # burned-in overlays, drawn at full white
    if site.annotations:
        scale = w / 700
        for i, text in enumerate(("SITE-B  L BREAST", f"{rng.integers(1, 13)}:00  {rng.integers(1, 6)}CM FN",
                                  f"GAIN {rng.integers(40, 70)}  DR {rng.integers(50, 80)}")):
            cv2.putText(marks, text, (int(8 * scale), int((22 + 20 * i) * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.5 * scale, 255, 1, cv2.LINE_AA)
        for k in range(1, 10):  # depth ruler: a dot per centimetre down the right edge
            cv2.circle(marks, (w - int(10 * scale), int(k * h / 10)), max(1, int(2 * scale)), 255, -1)
    if mask.any() and site.calipers and rng.random() < site.calipers:
        ys, xs = np.nonzero(mask)
        for cx, cy in ((xs.min(), int(ys.mean())), (xs.max(), int(ys.mean()))):
            cv2.drawMarker(marks, (int(cx), cy), 255, cv2.MARKER_CROSS, max(7, w // 60), 1)
    return np.maximum(img, marks.astype(np.float32) / 255)


def _write_png(path: Path, arr: np.ndarray, bilevel: bool = False) -> None:
    params = [cv2.IMWRITE_PNG_BILEVEL, 1] if bilevel else []
    tmp = path.with_name(path.name + ".tmp.png")
    if not cv2.imwrite(str(tmp), arr, params):
        raise OSError(f"{path}: cannot write PNG")
    tmp.replace(path)


def write_phantoms(out: str | Path, per_class: int, seed: int = 0, site: str = "A") -> dict[str, int]:
    """Write `per_class` phantoms of each class into `out/<class>/<class> (N).png` (+ masks),
    as `site`'s scanner shows them."""
    profile = site_profile(site)
    out = Path(out)
    counts = {}
    for ci, label in enumerate(CLASSES):
        d = out / label
        d.mkdir(parents=True, exist_ok=True)
        for i in range(1, per_class + 1):
            rng = np.random.default_rng([seed, ci, i])  # independent stream per image
            grey, mask = make_phantom(rng, label, profile)
            stem = f"{label} ({i})"
            style = rng.random()
            if style < 0.5:
                img = grey  # 8-bit grey
            elif style < 0.9:
                img = cv2.merge([grey, grey, grey])  # RGB with equal channels (like BUSI)
            else:
                img = cv2.merge([grey, grey, grey, np.full_like(grey, 255)])  # RGBA
            _write_png(d / f"{stem}.png", img)
            m8 = mask.astype(np.uint8) * 255
            mstyle = rng.random()
            if label == "normal":
                _write_png(d / f"{stem}_mask.png", cv2.merge([m8, m8, m8]))  # RGB zeros, like BUSI
            elif mstyle < 0.15 and mask.any():
                # split into two mask files that OR back to the lesion
                cols = np.where(mask.any(axis=0))[0]
                cut = cols[len(cols) // 2]
                a, b = m8.copy(), m8.copy()
                a[:, cut:] = 0
                b[:, :cut] = 0
                _write_png(d / f"{stem}_mask.png", a, bilevel=True)
                _write_png(d / f"{stem}_mask_1.png", cv2.merge([b, b, b, np.full_like(b, 255)]))
            elif mstyle < 0.3:
                _write_png(d / f"{stem}_mask.png", cv2.merge([m8, m8, m8, np.full_like(m8, 255)]))  # RGBA
            else:
                _write_png(d / f"{stem}_mask.png", m8, bilevel=True)  # 1-bit, like BUSI lesion masks
        counts[label] = per_class
    from busi.runtime.atomic import atomic_write_text

    atomic_write_text(out / PHANTOM_MARKER, json.dumps({"generator": "busi-train phantoms", "per_class": per_class,
                                                        "seed": seed, "site": profile.name}) + "\n")
    return counts


def write_dicom_study(out: str | Path, per_class: int, seed: int = 0, site: str = "A") -> list[Path]:
    """The same phantoms as `write_phantoms(..., per_class, seed)`, as one ultrasound study of a
    phantom patient, the way a PACS exports it: `out/<patient>/STUDY1/IM0001...` (no extension,
    Ultrasound Image Storage, explicit VR little endian), with UIDs derived from the seed, so the
    same seed gives the same study."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    def uid(*parts) -> str:
        return generate_uid(entropy_srcs=["busi phantom", str(seed), *map(str, parts)])

    folder = Path(out) / f"PHANTOM{seed:04d}" / "STUDY1"
    folder.mkdir(parents=True, exist_ok=True)
    study, series = uid("study"), uid("series")
    written = []
    for ci, label in enumerate(CLASSES):
        for i in range(1, per_class + 1):
            grey, _ = make_phantom(np.random.default_rng([seed, ci, i]), label, site_profile(site))
            n = len(written) + 1
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
            ds.file_meta.MediaStorageSOPInstanceUID = uid("image", n)
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"Phantom^{seed}", f"PH{seed:04d}", "", "F"
            ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261125", "120000", "1", f"PHANTOM{seed}"
            ds.ReferringPhysicianName, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "", "US", 1, n
            ds.Manufacturer, ds.StudyDescription = "busi phantom generator", "Breast ultrasound (synthetic phantom)"
            ds.ImageComments = f"phantom {label} ({i}): synthetic, for tests and the demo"
            ds.Rows, ds.Columns = grey.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = np.ascontiguousarray(grey, np.uint8).tobytes()
            path = folder / f"IM{n:04d}"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    return written


def copy_instances(sources: list[Path], out: str | Path, n: int, salt: str = "copy") -> list[Path]:
    """`n` DICOM instances made from `sources` in turn (`out/IM0000`...), each with its own SOP
    Instance UID (derived from `salt` and its number) and instance number: the same study,
    as many images as a load test or a benchmark wants."""
    import pydicom

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(n):
        ds = pydicom.dcmread(sources[i % len(sources)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[salt, str(i)])
        ds.InstanceNumber = i + 1
        ds.save_as(out / f"IM{i:04d}", enforce_file_format=True)
        written.append(out / f"IM{i:04d}")
    return written
