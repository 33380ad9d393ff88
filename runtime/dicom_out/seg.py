"""The SEG of the lesion that --mask auto found."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..dicom_identity import MANUFACTURER, uid
from ..errors import InputError
from .common import frame, series

if TYPE_CHECKING:
    from ..results import Prediction


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
        stack[frame(prediction, src)[0] - 1] = lesion
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
        series_description="busi lesion (research use only, not a medical device)", **series(src, "seg", key))
    seg.PatientOrientation = src.get("PatientOrientation", None)
    # highdicom draws the dimension organisation's UID at random: derived like the others, a re-run
    # writes the same object again (only its creation date and time differ)
    organisation = uid(*key, "seg", "dimension-organization")
    for item in (*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = organisation
    return seg
