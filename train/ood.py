"""Fitting and evaluating the out-of-distribution guard (the runtime applies it: busi.runtime.ood).

- Statistics: the pooled features (`avg_pool`, the mean of the `features` output over space) of
  the training images with the trained mask source, un-augmented; class means and one shared
  covariance, shrunk by Ledoit-Wolf (scikit-learn), kept exactly in its `RANK` leading
  principal directions and as one pooled variance in the rest.
- Thresholds: per mask source, the `QUANTILE` of the validation images' scores with that source.
- Evaluation: the AUROC of the score between the held-out images and
  - far-OOD: every non-ultrasound image that pydicom ships as test data (CT, MR, CR, ...), read
    by busi's own reader, and synthetic non-images (noise, flat, gradients, stripes);
  - near-OOD: another breast-ultrasound-like set (`--near-ood`): phantoms for a model trained on
    real images, real BUSI images for a model trained on phantoms;
  and the fraction flagged at the threshold. Far-OOD images have no lesion: with box masks they
  get a lesion-sized box at a plausible place (as normal images do); with gt masks they would
  all be the empty input of a normal image, so that column is n/a.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from busi.runtime.contract import MASK_SOURCES, OodGuard, OodStats
from busi.runtime.log import get as get_logger
from busi.runtime.ood import ood_scores
from busi.runtime.validate import pack_floats

from .inputs import Arrays, eval_masks, load_rows

_LOG = get_logger(__name__)

RANK = 32
QUANTILE = 0.99


def fit_statistics(features: np.ndarray, labels: np.ndarray, rank: int = RANK) -> OodStats:
    """Class means and the shrunk shared covariance of (N, D) training features (threshold not yet set)."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features, np.float64)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    # Ledoit-Wolf's covariance is (1 - s) S + s mu I with S = centred' centred / n: its eigenvectors are
    # S's, which the SVD of the N x D features gives (N << D = 2048) without the 2048 x 2048 eigh (5-15 s
    # on 2 cores); its eigenvalues are (1 - s) sigma^2 / n + s mu, and s mu in every direction S lacks
    lw = LedoitWolf(assume_centered=True, store_precision=False).fit(centred)
    s, dim, n = float(lw.shrinkage_), x.shape[1], x.shape[0]
    mu = float(np.trace(lw.covariance_)) / dim  # the trace is S's: shrinkage keeps it
    _, sigma, vt = np.linalg.svd(centred, full_matrices=False)
    k = int(min(rank, dim - 1, len(sigma)))
    values = (1.0 - s) * sigma[:k] ** 2 / n + s * mu
    residual = (np.trace(lw.covariance_) - values.sum()) / (dim - k)
    return OodStats(dim=dim, rank=k, means=pack_floats(means), components=pack_floats(vt[:k].T),
                    variances=pack_floats(values), residual_variance=float(residual))


def with_threshold(stats: OodStats, validation: np.ndarray, quantile: float = QUANTILE) -> OodStats:
    """The statistics with their threshold: the `quantile` of the validation features' scores."""
    return replace(stats, threshold=float(np.quantile(ood_scores(stats, validation), quantile)))


def fit_guard_from_features(train: dict[str, np.ndarray], labels: np.ndarray, val: dict[str, np.ndarray],
                            rank: int = RANK, quantile: float = QUANTILE) -> OodGuard:
    """One guard from {mask source: (N, D) pooled features} of the training and validation images."""
    sources = {src: with_threshold(fit_statistics(f, labels, rank), val[src], quantile) for src, f in train.items()}
    return OodGuard(sources=sources, quantile=quantile, n_fit=int(len(labels)),
                    n_validation=int(len(next(iter(val.values())))))


# ---- the OOD sets --------------------------------------------------------------------------
def synthetic_non_images(size: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Inputs that are no image of anything: noise, flat fields, gradients, stripes, a checkerboard."""
    rng = np.random.default_rng([seed, 404])
    ramp = np.linspace(0, 255, size)
    grey = lambda a: np.repeat(np.clip(a, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)  # noqa: E731
    yy, xx = np.mgrid[:size, :size]
    return [
        ("uniform noise", grey(rng.integers(0, 256, (size, size)))),
        ("colour noise", rng.integers(0, 256, (size, size, 3)).astype(np.uint8)),
        ("gaussian noise", grey(rng.normal(128, 50, (size, size)))),
        ("black", grey(np.zeros((size, size)))),
        ("mid grey", grey(np.full((size, size), 128))),
        ("white", grey(np.full((size, size), 255))),
        ("horizontal gradient", grey(np.tile(ramp, (size, 1)))),
        ("vertical gradient", grey(np.tile(ramp[:, None], (1, size)))),
        ("stripes", grey(127.5 + 127.5 * np.sin(xx / 3.0))),
        ("checkerboard", grey(((xx // 8 + yy // 8) % 2) * 255)),
    ]


def pydicom_non_ultrasound(size: int) -> list[tuple[str, np.ndarray]]:
    """The non-ultrasound images among pydicom's bundled test files (nothing is downloaded),
    decoded and resized by busi's reader; files it refuses are left out."""
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    out = []
    with warnings.catch_warnings():  # pydicom's remarks on its own deliberately odd test files
        warnings.simplefilter("ignore")
        _read_non_ultrasound(folder, size, out)
    return out


def _read_non_ultrasound(folder: Path, size: int, out: list) -> None:
    import pydicom

    from busi.runtime.errors import BusiError
    from busi.runtime.imageio import load_image

    for f in sorted(p for p in folder.glob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            if "PixelData" not in ds and "SOPClassUID" not in ds:
                continue
            if str(getattr(ds, "Modality", "")).upper() in ("US", ""):
                continue
            out.append((f"pydicom {f.name} ({ds.Modality})", load_image(f, size)))
        except (BusiError, Exception):  # a test file busi refuses (or pydicom cannot read) is not an OOD image
            continue


def far_set(size: int) -> Arrays:
    named = pydicom_non_ultrasound(size) + synthetic_non_images(size)
    images = np.stack([im for _, im in named])
    return Arrays(images, np.zeros(images.shape[:3], bool), np.zeros(len(named), np.int64), [n for n, _ in named])


def near_set(spec: str | None, data: str | Path, size: int) -> tuple[Arrays | None, str]:
    """(images, what they are) of the near-OOD set: `spec` a BUSI-layout folder, `phantoms`
    (generated now, unless the training data are phantoms themselves) or `none`."""
    from .dataset import usable_rows
    from .phantoms import PHANTOM_MARKER, write_phantoms

    if spec in (None, "", "none"):
        return None, "none"
    if spec == "phantoms":
        if (Path(data) / PHANTOM_MARKER).is_file():
            _LOG.info("near-OOD: the training data are phantoms; give --near-ood DIR (real images) for a near-OOD figure")
            return None, "none (the training data are phantoms)"
        with tempfile.TemporaryDirectory(prefix="busi-near-ood-") as tmp:
            write_phantoms(tmp, per_class=8, seed=9090)
            rows = usable_rows(tmp)[0]
            return load_rows(tmp, rows, size), "24 synthetic phantoms"
    rows = usable_rows(spec)[0]
    return load_rows(spec, rows, size), f"{len(rows)} images of {spec}"


# ---- evaluation ----------------------------------------------------------------------------
def guard_metrics(guard: OodGuard, source: str, trained: str, test_features: np.ndarray,
                  sets: dict[str, np.ndarray | None]) -> dict:
    """Fraction of the held-out images flagged, and per OOD set the AUROC of the score (held-out
    0, OOD 1) and the fraction flagged; None where a set is missing for this source."""
    from sklearn.metrics import roc_auc_score

    stats = guard.stats(source, trained)
    limit = stats.threshold
    s_in = ood_scores(stats, test_features)
    out = {"ood_flagged": float(np.mean(s_in > limit)), "ood_threshold": limit}
    for name, feats in sets.items():
        if feats is None or not len(feats):
            out[f"ood_auroc_{name}"] = out[f"ood_flagged_{name}"] = None
            continue
        s_out = ood_scores(stats, feats)
        y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
        out[f"ood_auroc_{name}"] = float(roc_auc_score(y, np.r_[s_in, s_out]))
        out[f"ood_flagged_{name}"] = float(np.mean(s_out > limit))
        out[f"ood_n_{name}"] = int(len(s_out))
    return out


@dataclass
class OodSet:
    """Images to evaluate the guard on: whether they have lesion masks (gt), and masks of
    sources that come from elsewhere (`auto`: the segmenter's)."""

    arrays: Arrays
    has_lesions: bool
    extra_masks: dict[str, np.ndarray] = field(default_factory=dict)

    def masks(self, source: str, sizes: np.ndarray, seed: int) -> np.ndarray | None:
        """The masks with a mask source; None where there are none (gt of images without lesions)."""
        if source in self.extra_masks:
            return self.extra_masks[source]
        if source not in MASK_SOURCES or (source == "gt" and not self.has_lesions):
            return None
        return eval_masks(self.arrays, source, sizes, seed)


def ood_sets(near_spec: str | None, data: str | Path, size: int) -> tuple[dict[str, OodSet | None], dict[str, str]]:
    """({"far": ..., "near": ... or None}, what each set is) for evaluate_model."""
    far = far_set(size)
    n_dicom = sum(p.startswith("pydicom ") for p in far.paths)
    near, near_what = near_set(near_spec, data, size)
    what = {"far": f"{n_dicom} non-ultrasound DICOM images from pydicom's test files and {len(far) - n_dicom} synthetic "
                   "non-images", "near": near_what}
    return {"far": OodSet(far, False), "near": None if near is None else OodSet(near, True)}, what


def guard_summary(guard: OodGuard, sets_what: dict[str, str]) -> dict:
    """What report.json says about the guard (its figures per mask source sit with the others)."""
    one = next(iter(guard.sources.values()))
    return {"method": f"{guard.method} distance of the pooled features ({one.dim}) to the class means of the training "
                      f"images with the same mask source, {one.rank} leading directions exact, the rest pooled; "
                      "Ledoit-Wolf shrinkage",
            "n_fit": guard.n_fit, "quantile": guard.quantile, "n_validation": guard.n_validation,
            "thresholds": dict(guard.thresholds), "sets": sets_what}
