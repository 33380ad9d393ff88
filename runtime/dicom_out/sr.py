"""The Structured Reports: one per classified image (TID 1500 with the finding), one per image
--mask auto did not classify, and busi-node's study summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..dicom_identity import MANUFACTURER
from ..dicom_identity import uid as _uid
from ..dicom_source import clean
from ..study import summarise_study
from .common import RESEARCH, SERIES_NUMBERS, THRESHOLD, busi_code, coding_scheme, device_observer, frame, highdicom_said, series

if TYPE_CHECKING:
    from ..results import NeedsRoi, Prediction


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
    pathology = {"normal": codes.SCT.Normal, "benign": codes.SCT.Benign, "malignant": codes.SCT.Malignant}
    qualitative = [
        hd.sr.QualitativeEvaluation(name=hd.sr.CodedConcept("111042", "DCM", "Pathology"), value=pathology[prediction.label]),
        hd.sr.QualitativeEvaluation(name=busi_code("MALIGNANT-FLAG", "Malignant flag at the operating point"),
                                    value=codes.SCT.Yes if prediction.malignant else codes.SCT.No),
    ]
    if prediction.likelihood:  # 2, 3, 4A, 4B, 4C or 5
        band = prediction.likelihood["band"]
        qualitative.append(hd.sr.QualitativeEvaluation(
            name=busi_code("LIKELIHOOD-BAND", "Likelihood band aligned with BI-RADS (not an assessment)"),
            value=busi_code(f"BAND-{band}", f"P(malignant) {prediction.likelihood['range']}")))
    if prediction.out_of_distribution is not None:
        qualitative.append(hd.sr.QualitativeEvaluation(
            name=busi_code("OOD", "Image unlike the training images (do not trust the class)"),
            value=codes.SCT.Yes if prediction.out_of_distribution else codes.SCT.No))
    for c in prediction.prediction_set or []:
        qualitative.append(hd.sr.QualitativeEvaluation(
            name=busi_code("PREDICTION-SET", f"In the {prediction.coverage:.0%} conformal prediction set"),
            value=pathology[c]))
    p = prediction.probabilities
    # P(malignant) behind the flag (a cine loop's highest frame); the class probabilities as given (a cine's mean):
    # for one image P(malignant) is the Probability of cancer, not written twice
    measurements = [hd.sr.Measurement(name=codes.DCM.ProbabilityOfCancer, value=prediction.flag_probability, unit=no_units)]
    measurements += [hd.sr.Measurement(name=busi_code(f"P-{c.upper()}", f"Probability of {c}"), value=float(v), unit=no_units)
                     for c, v in p.items() if c != "malignant" or prediction.cine]
    measurements.append(hd.sr.Measurement(name=hd.sr.CodedConcept(*THRESHOLD), value=float(prediction.threshold),
                                          unit=no_units))
    if prediction.ood_score is not None:
        measurements.append(hd.sr.Measurement(name=busi_code("OOD-SCORE", "Out-of-distribution score"),
                                              value=float(prediction.ood_score), unit=no_units))
    tracking = hd.sr.TrackingIdentifier(uid=_uid(*key, "finding"), identifier="busi finding")
    frames = frame(prediction, src)
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
    return _report(group, sha, [src], "busi finding (research use only, not a medical device)", **series(src, "sr", key))


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
        hd.sr.QualitativeEvaluation(name=busi_code("NEEDS-ROI", "Not classified: a lesion ROI drawn by a reader is needed"),
                                    value=codes.SCT.Yes),
    ]
    measurements = [
        hd.sr.Measurement(name=busi_code("LESION-PRESENCE", "Lesion presence score"), value=float(result.lesion_presence),
                          unit=no_units),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(*key, "finding"), identifier="busi finding"),
        finding_type=codes.SCT.Breast, algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=qualitative,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src, referenced_frame_numbers=frame(result, src))])
    return _report(group, sha, [src], "busi: not classified, ROI needed (research use only)", **series(src, "sr", key))


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
            hd.sr.Measurement(name=busi_code("IMAGES", "Images classified in the study"), value=len(sources), unit=no_units),
            hd.sr.Measurement(name=busi_code("IMAGES-FLAGGED", "Images with the malignant flag"), value=int(flagged), unit=no_units),
            hd.sr.Measurement(name=hd.sr.CodedConcept(*THRESHOLD), value=float(threshold), unit=no_units)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=busi_code("MALIGNANT-FLAG", "Malignant flag at the operating point"),
            value=codes.SCT.Yes if flagged else codes.SCT.No)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(top)])
    covered = sorted(d.SOPInstanceUID for d in sources)
    with highdicom_said(f"study {study}"):
        sr = _report(group, sha, sources, "busi study summary (research use only, not a medical device)",
                     series_instance_uid=_uid(study, "study", sha, options), series_number=SERIES_NUMBERS["study"],
                     sop_instance_uid=_uid(study, "study", sha, options, *covered), instance_number=version)
    for c in cleaned:
        c.restore(sr)
    return sr


def _report(group, sha: str, evidence: list, description: str, **identity):
    """The envelope every busi SR shares: a TID 1500 Measurement Report of breast ultrasound
    with busi as the observing device and `group` as its one measurement group, in a
    Comprehensive 3D SR that declares busi's private coding scheme."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device_observer(sha)),
        procedure_reported=codes.SCT.UltrasonographyOfBreast, imaging_measurements=[group],
        title=codes.DCM.ImagingMeasurementReport)
    return hd.sr.Comprehensive3DSR(evidence=evidence, content=report, manufacturer=MANUFACTURER,
                                   series_description=description, coding_schemes=[coding_scheme()], **identity)
