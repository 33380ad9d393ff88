"""The Secondary Capture: the overlay picture (the same marks the HTML report shows) under a
banner with the result and the research-use statement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..dicom_identity import MANUFACTURER
from ..errors import InputError
from .common import RESEARCH, frame, series

if TYPE_CHECKING:
    from ..results import Prediction


def overlay_image(prediction: "Prediction") -> np.ndarray:
    """What the HTML report shows, as one RGB image: the image with the classifier's mask
    (green) and the lesion (yellow), the Grad-CAM heat map when there is one, and a banner with
    the result and the research-use statement."""
    import cv2

    from ..gradcam import marked

    ex = prediction.extras
    view = ex.get("view")
    if view is None:
        raise InputError(prediction.path, "the prediction kept no view of the image (keep_view=True) for the overlay")
    shown = marked(view, ex["mask"], ex.get("lesion"), ex.get("cam"))
    W = shown.shape[1]
    scale = max(0.35, W / 900)
    line = int(22 * scale / 0.5)
    flag = "MALIGNANT FLAG" if prediction.malignant else "no malignant flag"
    texts = [(f"busi: {prediction.label} {prediction.confidence:.2f}  P(mal) {prediction.flag_probability:.3f}  "
              f"{flag} (>= {prediction.threshold:.3f})", (255, 255, 255)),
             ("RESEARCH USE ONLY - NOT A MEDICAL DEVICE - NOT A DIAGNOSIS", (255, 200, 0))]
    rows = [(part, colour) for text, colour in texts for part in _wrapped(text, W - 8, scale)]
    banner = np.zeros((line * len(rows) + 8, W, 3), np.uint8)
    for i, (t, colour) in enumerate(rows):
        cv2.putText(banner, t, (4, line * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([banner, shown], axis=0))


def _wrapped(text: str, width: int, scale: float) -> list[str]:
    """`text` in lines that fit `width` pixels at `scale` (broken between words): a narrow image
    still shows the whole banner, the research-use statement included."""
    import cv2

    lines: list[str] = []
    for word in text.split(" "):
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def secondary_capture(prediction: "Prediction", src, key, sop_class: str | None = None):
    """The overlay as a Secondary Capture. `sop_class`: the source's real SOP class (the
    cleaned source may carry a stand-in) for the SourceImageSequence."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=src, pixel_array=overlay_image(prediction), photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=("A", "F"), manufacturer=MANUFACTURER,
        series_description="busi overlay (research use only, not a medical device)", **series(src, "sc", key))
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
    frames = frame(prediction, src)
    if frames:
        ref.ReferencedFrameNumber = frames[0]
    sc.SourceImageSequence = [ref]
    return sc
