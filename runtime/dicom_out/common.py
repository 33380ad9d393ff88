"""What every DICOM object busi writes shares: its private coding scheme, series numbers,
the research-use statement, the series and instance UIDs of an output, the frame a finding
refers to, the device observer, and highdicom's remarks routed to the busi logger."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from ..dicom_identity import MANUFACTURER
from ..dicom_identity import uid as _uid
from ..errors import first_line
from ..log import get as get_logger

_LOG = get_logger("busi.runtime.dicom_out")

SCHEME = "99BUSI"
RESEARCH = "Research software, not a medical device: not a diagnosis."
SERIES_NUMBERS = {"sr": 9901, "sc": 9902, "seg": 9903, "study": 9904}
#: registered codes busi uses that pydicom's code dictionary does not name: Threshold Value
THRESHOLD = ("122411", "DCM", "Threshold Value")


def busi_code(value: str, meaning: str):
    import highdicom as hd

    return hd.sr.CodedConcept(value, SCHEME, meaning)


def series(src, kind: str, key) -> dict:
    return {"series_instance_uid": _uid(src.SeriesInstanceUID, kind, *key[1:]), "series_number": SERIES_NUMBERS[kind],
            "sop_instance_uid": _uid(*key, kind), "instance_number": 1}


def frame(prediction, src) -> list[int] | None:
    """The 1-based frame of a multi-frame source that the finding refers to."""
    n = int(src.get("NumberOfFrames", 1) or 1)
    return [int((prediction.dicom or {}).get("frame", 0)) + 1] if n > 1 else None


def device_observer(sha: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid("device", sha), name="busi", manufacturer_name=MANUFACTURER,
            model_name="busi masked ResNet50", serial_number=sha[:16]))


def coding_scheme():
    """busi's private coding scheme, declared in the SR (Coding Scheme Identification Sequence)
    so that a reader knows who defines the 99BUSI codes."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(
        designator=SCHEME, name="busi private codes (classifier outputs and settings)",
        responsible_organization="busi project (research software, not a medical device)")


@contextmanager
def highdicom_said(path):
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
