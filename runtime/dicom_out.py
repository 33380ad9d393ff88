"""DICOM out, with highdicom: a Structured Report of the finding, a Secondary Capture of the
overlay, and a SEG of the lesion that `--mask auto` found, beside the source in the PACS.

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
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import atomic_path
from .dicom import dicom_problem
from .dicom_identity import MANUFACTURER
from .dicom_identity import uid as _uid
from .dicom_source import clean
from .errors import InputError, WriteError, first_line
from .log import get as get_logger
from .results import NEEDS_ROI
from .study import summarise_study

_LOG = get_logger(__name__)

if TYPE_CHECKING:
    from .results import NeedsRoi, Prediction

SCHEME = "99BUSI"
RESEARCH = "Research software, not a medical device: not a diagnosis."
SERIES_NUMBERS = {"sr": 9901, "sc": 9902, "seg": 9903, "study": 9904}
#: registered codes busi uses that pydicom's code dictionary does not name: Threshold Value
THRESHOLD = ("122411", "DCM", "Threshold Value")


def _busi(value: str, meaning: str):
    import highdicom as hd

    return hd.sr.CodedConcept(value, SCHEME, meaning)


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
        with _highdicom_said(path):
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
                with _highdicom_said(path):
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


def _series(src, kind: str, key) -> dict:
    return {"series_instance_uid": _uid(src.SeriesInstanceUID, kind, *key[1:]), "series_number": SERIES_NUMBERS[kind],
            "sop_instance_uid": _uid(*key, kind), "instance_number": 1}


def _frame(prediction, src) -> list[int] | None:
    """The 1-based frame of a multi-frame source that the finding refers to."""
    n = int(src.get("NumberOfFrames", 1) or 1)
    return [int((prediction.dicom or {}).get("frame", 0)) + 1] if n > 1 else None


def structured_report(prediction: "Prediction", src, key):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from busi import __version__

    no_units = hd.sr.CodedConcept("1", "UCUM", "no units")
    sha = prediction.model_sha256
    settings = [f"mask source {prediction.mask_source}"]
    if prediction.ood_threshold is not None:
        settings.append(f"out-of-distribution threshold {float(prediction.ood_threshold):.6g}")
    algorithm = hd.sr.AlgorithmIdentification(
        name="busi", version=__version__, family=codes.DCM.ArtificialIntelligence,
        parameters=[f"model sha256 {sha}", *settings, RESEARCH]
        + ([f"cine loop of {prediction.cine['frames']} frames: class probabilities are the mean over the frames, "
            f"Probability of cancer and the flag are those of frame {prediction.cine['max_malignant_frame']} (0-based), "
            "the highest"] if prediction.cine else []))
    device = _device(sha)
    pathology = {"normal": codes.SCT.Normal, "benign": codes.SCT.Benign, "malignant": codes.SCT.Malignant}
    qualitative = [
        hd.sr.QualitativeEvaluation(name=hd.sr.CodedConcept("111042", "DCM", "Pathology"), value=pathology[prediction.label]),
        hd.sr.QualitativeEvaluation(name=_busi("MALIGNANT-FLAG", "Malignant flag at the operating point"),
                                    value=codes.SCT.Yes if prediction.malignant else codes.SCT.No),
    ]
    if prediction.likelihood:  # 2, 3, 4A, 4B, 4C or 5
        band = prediction.likelihood["band"]
        qualitative.append(hd.sr.QualitativeEvaluation(
            name=_busi("LIKELIHOOD-BAND", "Likelihood band aligned with BI-RADS (not an assessment)"),
            value=_busi(f"BAND-{band}", f"P(malignant) {prediction.likelihood['range']}")))
    if prediction.out_of_distribution is not None:
        qualitative.append(hd.sr.QualitativeEvaluation(
            name=_busi("OOD", "Image unlike the training images (do not trust the class)"),
            value=codes.SCT.Yes if prediction.out_of_distribution else codes.SCT.No))
    for c in prediction.prediction_set or []:
        qualitative.append(hd.sr.QualitativeEvaluation(
            name=_busi("PREDICTION-SET", f"In the {prediction.coverage:.0%} conformal prediction set"),
            value=pathology[c]))
    p = prediction.probabilities
    # P(malignant) behind the flag (a cine loop's highest frame); the class probabilities as given (a cine's mean):
    # for one image P(malignant) is the Probability of cancer, not written twice
    measurements = [hd.sr.Measurement(name=codes.DCM.ProbabilityOfCancer, value=prediction.flag_probability, unit=no_units)]
    measurements += [hd.sr.Measurement(name=_busi(f"P-{c.upper()}", f"Probability of {c}"), value=float(v), unit=no_units)
                     for c, v in p.items() if c != "malignant" or prediction.cine]
    measurements.append(hd.sr.Measurement(name=hd.sr.CodedConcept(*THRESHOLD), value=float(prediction.threshold),
                                          unit=no_units))
    if prediction.ood_score is not None:
        measurements.append(hd.sr.Measurement(name=_busi("OOD-SCORE", "Out-of-distribution score"),
                                              value=float(prediction.ood_score), unit=no_units))
    tracking = hd.sr.TrackingIdentifier(uid=_uid(*key, "finding"), identifier="busi finding")
    frames = _frame(prediction, src)
    if prediction.lesion_box:
        x, y, w, h = prediction.lesion_box
        corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]], dtype=float)
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=corners,
            source_image=hd.sr.SourceImageForRegion.from_source_image(src, referenced_frame_numbers=frames))
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_region=region, finding_type=codes.SCT.Lesion,
            algorithm_id=algorithm, measurements=measurements, qualitative_evaluations=qualitative)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=codes.SCT.Breast, algorithm_id=algorithm,
            measurements=measurements, qualitative_evaluations=qualitative,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src, referenced_frame_numbers=frames)])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.UltrasonographyOfBreast, imaging_measurements=[group],
        title=codes.DCM.ImagingMeasurementReport)
    return hd.sr.Comprehensive3DSR(
        evidence=[src], content=report, manufacturer=MANUFACTURER, **_series(src, "sr", key),
        series_description="busi finding (research use only, not a medical device)", coding_schemes=[_coding_scheme()])


def not_classified_report(result: "NeedsRoi", src, key):
    """The SR of an image that --mask auto did not classify: no class, no probabilities; the
    reason, the lesion presence score and its band, so the reading room sees that busi looked
    and that a reader must draw the lesion (then busi-infer --roi classifies it)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from busi import __version__

    no_units = hd.sr.CodedConcept("1", "UCUM", "no units")
    sha = result.model_sha256
    why = result.reason.split("needs an ROI: ", 1)[-1]
    low, high = result.presence_band
    algorithm = hd.sr.AlgorithmIdentification(
        name="busi", version=__version__, family=codes.DCM.ArtificialIntelligence,
        parameters=[f"model sha256 {sha}", "mask source auto", f"not classified, an ROI is needed: {why}",
                    f"lesion presence band {float(low):.6g} (at or below: no lesion found) to {float(high):.6g} (from: a "
                    "lesion found)", RESEARCH])
    qualitative = [
        hd.sr.QualitativeEvaluation(name=_busi("NEEDS-ROI", "Not classified: a lesion ROI drawn by a reader is needed"),
                                    value=codes.SCT.Yes),
    ]
    measurements = [
        hd.sr.Measurement(name=_busi("LESION-PRESENCE", "Lesion presence score"), value=float(result.lesion_presence),
                          unit=no_units),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(*key, "finding"), identifier="busi finding"),
        finding_type=codes.SCT.Breast, algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=qualitative,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src, referenced_frame_numbers=_frame(result, src))])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_device(sha)),
        procedure_reported=codes.SCT.UltrasonographyOfBreast, imaging_measurements=[group],
        title=codes.DCM.ImagingMeasurementReport)
    return hd.sr.Comprehensive3DSR(
        evidence=[src], content=report, manufacturer=MANUFACTURER, **_series(src, "sr", key),
        series_description="busi: not classified, ROI needed (research use only)", coding_schemes=[_coding_scheme()])


def _coding_scheme():
    """busi's private coding scheme, declared in the SR (Coding Scheme Identification Sequence)
    so that a reader knows who defines the 99BUSI codes."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(
        designator=SCHEME, name="busi private codes (classifier outputs and settings)",
        responsible_organization="busi project (research software, not a medical device)")


@contextmanager
def _highdicom_said(path):
    """What highdicom says while it builds an output (warnings, its logger's warnings: a
    person name with one component, a long string) goes to the busi logger (debug, -v), not
    raw to stderr with site-packages paths."""
    import logging

    hd_log = logging.getLogger("highdicom")

    class Forward(logging.Handler):
        def emit(self, record):
            _LOG.debug("busi: %s: DICOM output: highdicom: %s", path, record.getMessage())

    handler, propagate = Forward(logging.WARNING), hd_log.propagate
    hd_log.addHandler(handler)
    hd_log.propagate = False
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            yield
    finally:
        hd_log.removeHandler(handler)
        hd_log.propagate = propagate
        for w in locals().get("said") or []:
            _LOG.debug("busi: %s: DICOM output: %s", path, first_line(w.message))


def _device(sha: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid("device", sha), name="busi", manufacturer_name=MANUFACTURER,
            model_name="busi masked ResNet50", serial_number=sha[:16]))


def study_report(sources: list, p_malignant: dict[str, float], threshold: float, sha: str, options: str = "",
                 version: int = 1):
    """One SR for a whole study (busi-node): how many images were classified, the highest
    P(malignant) with the image it came from, and whether any image carries the malignant flag.
    `sources`: the classified images' datasets (headers suffice), `p_malignant`: SOP Instance
    UID -> the P(malignant) behind its flag. Its series is fixed for the study, model and
    options; its SOP instance depends on the images it covers, so a study summarised again
    after a later image gets a new SR in the same series (instance number `version`), which
    supersedes the old one."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from busi import __version__

    no_units = hd.sr.CodedConcept("1", "UCUM", "no units")
    cleaned = [clean(d) for d in sources]  # the headers as archives hold them: see dicom_source
    sources = [c.dataset for c in cleaned]
    study = sources[0].StudyInstanceUID
    summary = summarise_study({d.SOPInstanceUID: p_malignant[d.SOPInstanceUID] for d in sources}, threshold)
    top = next(d for d in sources if d.SOPInstanceUID == summary.top)
    p_top, flagged = summary.max_malignant, summary.flagged
    algorithm = hd.sr.AlgorithmIdentification(
        name="busi", version=__version__, family=codes.DCM.ArtificialIntelligence,
        parameters=[f"model sha256 {sha}", f"study summary of {len(sources)} classified images", RESEARCH])
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(study, sha, options, "study-finding"),
                                                     identifier="busi study summary"),
        finding_type=codes.SCT.Breast, algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=codes.DCM.ProbabilityOfCancer, value=p_top, unit=no_units),
            hd.sr.Measurement(name=_busi("IMAGES", "Images classified in the study"), value=len(sources), unit=no_units),
            hd.sr.Measurement(name=_busi("IMAGES-FLAGGED", "Images with the malignant flag"), value=int(flagged), unit=no_units),
            hd.sr.Measurement(name=hd.sr.CodedConcept(*THRESHOLD), value=float(threshold), unit=no_units)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=_busi("MALIGNANT-FLAG", "Malignant flag at the operating point"),
            value=codes.SCT.Yes if flagged else codes.SCT.No)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(top)])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_device(sha)),
        procedure_reported=codes.SCT.UltrasonographyOfBreast, imaging_measurements=[group],
        title=codes.DCM.ImagingMeasurementReport)
    covered = sorted(d.SOPInstanceUID for d in sources)
    with _highdicom_said(f"study {study}"):
        sr = hd.sr.Comprehensive3DSR(
            evidence=sources, content=report, manufacturer=MANUFACTURER,
            series_instance_uid=_uid(study, "study", sha, options), series_number=SERIES_NUMBERS["study"],
            sop_instance_uid=_uid(study, "study", sha, options, *covered), instance_number=version,
            series_description="busi study summary (research use only, not a medical device)",
            coding_schemes=[_coding_scheme()])
    for c in cleaned:
        c.restore(sr)
    return sr


def overlay_image(prediction: "Prediction") -> np.ndarray:
    """What the HTML report shows, as one RGB image: the image with the classifier's mask
    (green) and the lesion (yellow), the Grad-CAM heat map when there is one, and a banner with
    the result and the research-use statement."""
    import cv2

    from .gradcam import outline, overlay

    ex = prediction.extras
    view = ex.get("view")
    if view is None:
        raise InputError(prediction.path, "the prediction kept no view of the image (keep_view=True) for the overlay")
    shown = overlay(view, ex["cam"]) if ex.get("cam") is not None else view.copy()
    shown = outline(shown, ex["mask"], (0, 255, 0))
    if ex.get("lesion") is not None:
        shown = outline(shown, ex["lesion"], (255, 255, 0), 1)
    W = shown.shape[1]
    scale = max(0.35, W / 900)
    line = int(22 * scale / 0.5)
    banner = np.zeros((line * 2 + 8, W, 3), np.uint8)
    flag = "MALIGNANT FLAG" if prediction.malignant else "no malignant flag"
    texts = [f"busi: {prediction.label} {prediction.confidence:.2f}  P(mal) {prediction.flag_probability:.3f}  "
             f"{flag} (>= {prediction.threshold:.3f})", "RESEARCH USE ONLY - NOT A MEDICAL DEVICE - NOT A DIAGNOSIS"]
    for i, t in enumerate(texts):
        cv2.putText(banner, t, (4, line * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255) if i == 0 else (255, 200, 0),
                    1, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([banner, shown], axis=0))


def secondary_capture(prediction: "Prediction", src, key, sop_class: str | None = None):
    """The overlay as a Secondary Capture. `sop_class`: the source's real SOP class (the
    cleaned source may carry a stand-in) for the SourceImageSequence."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=src, pixel_array=overlay_image(prediction), photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=("A", "F"), manufacturer=MANUFACTURER,
        series_description="busi overlay (research use only, not a medical device)", **_series(src, "sc", key))
    # an ultrasound image has no patient orientation to copy: left empty (type 2), not invented
    sc.PatientOrientation = src.get("PatientOrientation", None)
    # copied where the source has it (Laterality, or the Image Laterality of a breast image: R or L);
    # else empty, which the module allows only when it is unknown, as it is then (absent is an error)
    side = str(src.get("Laterality", "") or src.get("ImageLaterality", "") or "").strip().upper()
    sc.Laterality = side if side in ("R", "L") else None
    sc.ImageComments = RESEARCH
    # what it was derived from: the source image (and the frame behind the finding)
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class or src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    frames = _frame(prediction, src)
    if frames:
        ref.ReferencedFrameNumber = frames[0]
    sc.SourceImageSequence = [ref]
    return sc


def segmentation(prediction: "Prediction", src, key, lesion: np.ndarray):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from busi import __version__

    rows, cols = int(src.Rows), int(src.Columns)
    if lesion.shape != (rows, cols):
        raise InputError(prediction.path, f"lesion mask {lesion.shape} does not match the source {rows}x{cols}")
    n = int(src.get("NumberOfFrames", 1) or 1)
    if n > 1:  # the lesion belongs to one frame of the cine
        stack = np.zeros((n, rows, cols), bool)
        stack[_frame(prediction, src)[0] - 1] = lesion
    else:
        stack = lesion[None]
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion (busi segmenter)",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure, segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="busi lesion segmenter", family=codes.DCM.ArtificialIntelligence, version=__version__))
    seg = hd.seg.Segmentation(
        source_images=[src], pixel_array=stack, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], manufacturer=MANUFACTURER, manufacturer_model_name="busi",
        software_versions=__version__, device_serial_number=prediction.model_sha256[:16],
        series_description="busi lesion (research use only, not a medical device)", **_series(src, "seg", key))
    seg.PatientOrientation = src.get("PatientOrientation", None)
    return seg
