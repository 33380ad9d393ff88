"""DICOM out, with highdicom: a Structured Report of the finding, a Secondary Capture of the
overlay, and a SEG of the lesion that `--mask auto` found, beside the source in the PACS.
One module per kind of object (`sr`, `sc`, `seg`), what they share in `common`; `write` here.

`write(prediction, source, out_dir)` writes, for one DICOM source image:

- `<SOPInstanceUID>.sr.dcm`: Comprehensive 3D SR, TID 1500 Measurement Report. A device
  observer (busi, the model's sha256), procedure "Ultrasonography of breast", one measurement
  group that references the source image: the ROI as a planar polyline in the source's pixel
  coordinates (none for a whole-image classification), the finding, P(malignant) as
  "Probability of cancer" and the three class probabilities, the malignant flag and its
  threshold, the mask source, and the algorithm (busi, its version, the model's sha256, the
  research-use statement).
- `<SOPInstanceUID>.sc.dcm`: Secondary Capture of what the HTML report shows: the image with
  what the classifier saw (green) and the lesion (yellow), the Grad-CAM heat map when the
  prediction has one, class, P(malignant) and flag burned in under a research-use banner.
- `<SOPInstanceUID>.seg.dcm`: binary SEG of the lesion, when the segmenter found one.

Patient and study come from the source; each kind of output gets its own series. The UIDs
are derived from the source SOP instance, the model's sha256, the busi version and the
options that change the result (pydicom's `generate_uid(entropy_srcs=...)`), so running
again into the same folder replaces the same files instead of adding new objects. Files are
written to a temp file and renamed.

Coded concepts: SNOMED CT and DICOM codes wherever one exists (dciodvfy, like other
validators, knows a fixed list of coding schemes and warns once for every code of any other,
private ones included, declared or not). Pathology (DCM 111042) = Normal (SCT 17621005) /
Benign (SCT 30807003) / Malignant (SCT 21594007); Probability of cancer (DCM 111047) =
P(malignant) behind the flag; Threshold Value (DCM 122411) = the flag's threshold; finding
type Lesion (SCT 52988006) with an ROI, Breast (SCT 76752008) without; the settings (mask
source, OOD threshold, the segmenter's presence band) are Algorithm Parameters (DCM 111002,
text). What DICOM has no code for is in busi's private scheme `99BUSI`, declared in the
Coding Scheme Identification Sequence: P-NORMAL, P-BENIGN (and P-MALIGNANT for a cine loop,
where the class probabilities are the mean over the frames), MALIGNANT-FLAG (Yes/No, SCT
373066001/373067005), LIKELIHOOD-BAND (BAND-2 ... BAND-5), PREDICTION-SET (one item per
class in the conformal set, valued Normal/Benign/Malignant), OOD (Yes/No: the
out-of-distribution guard) with OOD-SCORE; NEEDS-ROI and LESION-PRESENCE in the SR of an image
--mask auto did not classify; IMAGES and IMAGES-FLAGGED in busi-node's study summary.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import atomic_path
from ..dicom import dicom_problem
from ..dicom_source import clean
from ..errors import InputError, WriteError
from ..log import get as get_logger
from ..results import NEEDS_ROI
from .common import RESEARCH, SCHEME, SERIES_NUMBERS, highdicom_said
from .sc import overlay_image, secondary_capture
from .seg import segmentation
from .sr import not_classified_report, structured_report, study_report

_LOG = get_logger(__name__)

if TYPE_CHECKING:
    from ..results import NeedsRoi, Prediction

__all__ = ["RESEARCH", "SCHEME", "SERIES_NUMBERS", "not_classified_report", "overlay_image", "read_source",
           "secondary_capture", "segmentation", "structured_report", "study_report", "write"]


def read_source(source) -> "object":
    """The source as a pydicom Dataset (a path is read again: a prediction made without keep_view
    does not carry the dataset it was decoded from)."""
    import pydicom

    if isinstance(source, pydicom.Dataset):
        return source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(source, force=True)
    except Exception as e:
        raise InputError(source, f"cannot read the DICOM source for the output: {dicom_problem(e)}") from None


def write(prediction: "Prediction | NeedsRoi", source, out_dir: str | Path, *, options: str = "",
          notes: list[str] | None = None) -> list[Path]:
    """SR, SC and (when a lesion was found) SEG for one prediction of a DICOM source image; for
    a `NeedsRoi` (--mask auto abstained) one SR that says the image was not classified and why.
    `options`: what else changed the result (mask, threshold, TTA, frame), for the UIDs.
    `notes`, when given, receives what was done to the source's values to write them (a value
    left empty, a date rewritten; see `dicom_source`)."""
    # the dataset the image was decoded from (a prediction made with keep_view), else the file read again
    raw = prediction.extras.get("dicom_source") if isinstance(source, (str, Path)) else None
    raw = raw if raw is not None else read_source(source)
    path = getattr(prediction, "path", None)
    for key in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not str(raw.get(key, "") or "").strip():
            raise InputError(path, f"DICOM output not written: the source has no {key}")
    try:
        cleaned = clean(raw, path)
    except Exception as e:  # a value no rule of dicom_source foresaw: this output's failure, not the run's
        raise InputError(path, f"DICOM output not written: cannot copy the source's attributes ({dicom_problem(e)})") \
            from None
    src = cleaned.dataset
    if notes is not None:
        notes.extend(cleaned.notes)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(out, f"cannot create the output folder ({e.strerror or e})") from None
    key = (src.SOPInstanceUID, prediction.model_sha256, options)
    building = "the DICOM output"
    try:
        abstained = prediction.kind == NEEDS_ROI
        with highdicom_said(path):
            building = "the SR"
            if abstained:  # auto abstained: an SR that says so, nothing else (no overlay, no SEG of a guess)
                objects = {"sr": not_classified_report(prediction, src, key)}
            else:
                objects = {"sr": structured_report(prediction, src, key)}
                building = "the SC"
                objects["sc"] = secondary_capture(prediction, src, key, cleaned.sop_class)
        lesion = prediction.extras.get("lesion_mask")
        if not abstained and prediction.mask_source == "auto" and lesion is not None and lesion.any():
            if int(src.get("NumberOfFrames", 1) or 1) > 1 and "FrameOfReferenceUID" not in src:
                _LOG.warning("busi: %s: no SEG for a cine loop without a Frame of Reference (highdicom segments one "
                             "frame there); its SR carries the lesion box", prediction.path)
            else:
                building = "the SEG"
                with highdicom_said(path):
                    objects["seg"] = segmentation(prediction, src, key, lesion)
    except InputError:
        raise
    except Exception as e:  # highdicom refuses a source it cannot reference (values busi does not clean)
        raise InputError(path, f"DICOM output not written: highdicom cannot build {building} from this source's "
                               f"attributes ({dicom_problem(e)})") from None
    for ds in objects.values():
        cleaned.restore(ds)
    written = []
    for kind, ds in objects.items():
        final = out / f"{src.SOPInstanceUID}.{kind}.dcm"
        try:
            with atomic_path(final, suffix=".dcm") as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        except OSError as e:
            raise WriteError(final, f"cannot write ({e.strerror or e})") from None
        written.append(final)
    return written
