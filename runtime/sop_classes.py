"""What a DICOM object is, by its SOP Class UID and Modality: an image of a patient that busi
may classify (ultrasound), a non-ultrasound image (refused by name unless allowed), or an
object that is not an image of a patient at all (SEG, SR, KO, PR, RT, SM, ...: skipped and
counted in a folder walk, refused by name when named).

Used by the folder walk (`inputs`), by busi-infer's modality check and by DICOM out, which
references a retired or unknown SOP class by its UID.
"""

from __future__ import annotations

_STORAGE = "1.2.840.10008.5.1.4.1.1."

#: the ultrasound image SOP classes, the retired ones included (1.6 and 1.3, still in PACS archives)
US_IMAGE = _STORAGE + "6.1"
US_MULTIFRAME = _STORAGE + "3.1"
US_RETIRED = _STORAGE + "6"
US_MULTIFRAME_RETIRED = _STORAGE + "3"
ULTRASOUND = {US_IMAGE, US_MULTIFRAME, US_RETIRED, US_MULTIFRAME_RETIRED, _STORAGE + "6.2", _STORAGE + "6.3"}
#: what the retired US classes are referenced as when highdicom builds an output (it has no IOD for them)
RETIRED_STAND_IN = {US_RETIRED: US_IMAGE, US_MULTIFRAME_RETIRED: US_MULTIFRAME}
SECONDARY_CAPTURE = {_STORAGE + s for s in ("7", "7.1", "7.2", "7.3", "7.4")}

#: image SOP classes that hold one frame: a stray NumberOfFrames on them is not a cine loop's
SINGLE_FRAME = {_STORAGE + s for s in (
    "1", "1.1", "1.1.1", "1.2", "1.2.1", "1.3", "1.3.1",  # CR, DX, MG, IO
    "2", "4", "6", "6.1", "7", "128",  # CT, MR, US (retired and current), SC, PET
    "77.1.1", "77.1.2", "77.1.3", "77.1.4",  # VL endoscopic, microscopic, slide-coordinates, photographic
)}

#: SOP classes (exact, or a prefix ending in '.') that are not images of a patient: what a
#: folder walk counts them as
NOT_IMAGES = (
    (_STORAGE + "66.4", "DICOM SEG (segmentations)"),
    (_STORAGE + "66.5", "DICOM SEG (segmentations)"),
    (_STORAGE + "66.7", "DICOM SEG (segmentations)"),
    (_STORAGE + "88.59", "DICOM KO (key object selections)"),
    (_STORAGE + "88.", "DICOM SR (structured reports)"),
    (_STORAGE + "11.", "DICOM PR (presentation states)"),
    (_STORAGE + "481.", "DICOM RT objects"),
    (_STORAGE + "77.1.6", "DICOM SM (slide microscopy)"),
    (_STORAGE + "91.", "DICOM SM (slide microscopy)"),  # microscopy annotations
    (_STORAGE + "9.", "DICOM waveforms"),
    (_STORAGE + "104.", "DICOM encapsulated documents"),
    (_STORAGE + "30", "DICOM parametric maps"),
    (_STORAGE + "66", "DICOM raw data, registrations and fiducials"),
    (_STORAGE + "66.", "DICOM raw data, registrations and fiducials"),
    (_STORAGE + "67", "DICOM raw data, registrations and fiducials"),
    (_STORAGE + "68.", "DICOM surface models"),
    (_STORAGE + "90.1", "DICOM raw data, registrations and fiducials"),
    ("1.2.840.10008.5.1.4.38.", "DICOM hanging protocols and other non-image objects"),
    ("1.2.840.10008.5.1.4.39.", "DICOM hanging protocols and other non-image objects"),
    ("1.2.840.10008.5.1.4.43.", "DICOM hanging protocols and other non-image objects"),
    ("1.2.840.10008.5.1.4.44.", "DICOM hanging protocols and other non-image objects"),
    ("1.2.840.10008.5.1.4.45.", "DICOM hanging protocols and other non-image objects"),
)


def not_an_image(sop_class: str) -> str | None:
    """The kind of a non-image SOP class (for the skip count), or None for an image class or
    one not known here (its pixel data decides)."""
    uid = str(sop_class or "").strip()
    for prefix, kind in NOT_IMAGES:
        if uid == prefix or (prefix.endswith(".") and uid.startswith(prefix)):
            return kind
    return None


def sop_class_name(sop_class: str) -> str:
    """'Segmentation Storage (1.2.840...)', or the UID alone when pydicom does not know it."""
    from pydicom.uid import UID

    uid = str(sop_class or "").strip()
    name = UID(uid).name if uid else ""
    return f"{name} ({uid})" if name and name != uid else uid or "no SOP class"


def modality_problem(modality, sop_class) -> str | None:
    """Why an image is not ultrasound, or None when it is: Modality US, or no Modality on an
    ultrasound SOP class. A Secondary Capture of an ultrasound (Modality US) is ultrasound."""
    m = str(modality or "").strip().upper()
    if m == "US" or (not m and str(sop_class or "").strip() in ULTRASOUND):
        return None
    what = f"Modality {m}" if m else "no Modality"
    return (f"{what} ({sop_class_name(sop_class)}), not ultrasound: the model is for breast ultrasound; "
            "not classified (--allow-modality classifies it anyway)")
