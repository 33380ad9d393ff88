"""The source of a DICOM output as highdicom can use it: a cleaned copy of the patient, study,
series and equipment attributes of whatever a PACS holds.

highdicom copies these from the source image and refuses values that real archives are full
of: Type 2 attributes that anonymised exports drop, PatientSex '0000' (OsiriX) or '?', a
SpecificCharacterSet it does not accept (an ISO 2022 set whose first value is empty, the
misspelling 'ISO-IR 100'), DA '0' or year 0, TM '14:04:38', a stray NumberOfFrames on a
single-frame SOP class, and SOP classes it has no IOD for (retired or unknown ones).

`clean(src)` gives a `CleanSource`: a copy without pixel data where
- missing Type 2 attributes are present and empty;
- values that violate their VR or enumeration are mapped to a valid value (TM without colons,
  DA 'YYYY.MM.DD') or left empty, each with a note;
- text is decoded with the source's character set (pydicom reads the common misspellings)
  and written as UTF-8 (ISO_IR 192) where it is not ASCII; a value that does not decode is
  left empty, with a note;
- code items without their Type 1 parts (a meaning; a code value with its coding scheme) are
  left out of a copied code sequence, and a sequence that holds one deeper down is left out
  whole (the study-level sequences copied are Type 3), each with a note;
- NumberOfFrames is dropped from a single-frame SOP class (referenced as single-frame);
- a SOP class that highdicom has no IOD for stands in as a class it knows (the retired US
  classes as US, others as Secondary Capture) while the outputs are built; `restore`
  puts the real SOP Class UID back into every reference to the source afterwards.
"""

from __future__ import annotations

import copy
import datetime
import re
import warnings
from dataclasses import dataclass, field

from .sop_classes import RETIRED_STAND_IN, SINGLE_FRAME, ULTRASOUND

#: Type 2 attributes of the Patient, General Study and General Series modules: written empty when absent
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber", "Modality")
PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_TM = re.compile(r"^([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?$")
_AS = re.compile(r"^\d{3}[DWMY]$")
_CS = re.compile(r"^[A-Z0-9_ ]{0,16}$")


@dataclass
class CleanSource:
    dataset: object  # pydicom Dataset: what highdicom is given
    sop_class: str  # the source's real SOP Class UID
    notes: list[str] = field(default_factory=list)

    def restore(self, ds) -> None:
        """Put the source's real SOP Class UID back into every reference to it in an output."""
        stand_in, sop = str(self.dataset.SOPClassUID), str(self.dataset.SOPInstanceUID)
        if stand_in == self.sop_class:
            return

        def walk(d):
            for elem in d:
                if elem.VR == "SQ":
                    for item in elem.value:
                        if str(item.get("ReferencedSOPInstanceUID", "")) == sop and \
                                str(item.get("ReferencedSOPClassUID", "")) == stand_in:
                            item.ReferencedSOPClassUID = self.sop_class
                        walk(item)

        walk(ds)


def _known_to_highdicom(uid: str) -> bool:
    """Whether highdicom has an IOD for this SOP class (it copies patient and study attributes
    by the IOD's modules, and raises KeyError for a class it does not know)."""
    try:
        from highdicom._standard_utils import get_sop_class_iod_map  # highdicom 0.28
    except ImportError:  # another layout: assume it knows it (a failure is still reported)
        return True
    return uid in get_sop_class_iod_map()


def _date(v: str) -> str | None:
    """A valid DA for `v`, '' for nothing, None when it cannot be made valid."""
    s = v.strip()
    if not s:
        return ""
    if re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", s):  # ACR-NEMA style, still written by old systems
        s = s.replace(".", "")
    if not re.fullmatch(r"\d{8}", s):
        return None
    try:
        datetime.date(int(s[:4]), int(s[4:6]), int(s[6:]))
    except ValueError:
        return None
    return s if int(s[:4]) >= 1000 else None  # year 0 or 0095: validators reject a leading zero


def _time(v: str) -> str | None:
    s = v.strip()
    if not s:
        return ""
    if re.fullmatch(r"\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?", s):  # ACR-NEMA style, with colons
        s = s.replace(":", "")
    return s if _TM.match(s) else None


def _datetime(v: str) -> str | None:
    s = v.strip()
    if not s:
        return ""
    body = re.split(r"[+-]", s, maxsplit=1)[0]
    if not re.fullmatch(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?", body) or int(body[:4]) < 1000:
        return None
    if len(body) >= 8 and _date(body[:8]) is None:
        return None
    return s


_FIXERS = {"DA": _date, "TM": _time, "DT": _datetime}


def _complete_code(item) -> bool:
    """Whether a code sequence item has its Type 1 parts: a meaning, and a URN code value or a
    code value (or long code value) with its coding scheme."""
    def text(keyword):
        return str(item.get(keyword, "") or "").strip()

    if not text("CodeMeaning"):
        return False
    return bool(text("URNCodeValue") or (text("CodeValue") or text("LongCodeValue")) and text("CodingSchemeDesignator"))


def _nested_incomplete_code(elem) -> bool:
    """Whether a code sequence inside the items of the sequence `elem` has an incomplete item."""
    for item in elem.value:
        for inner in item:
            if inner.VR != "SQ":
                continue
            if inner.keyword.endswith("CodeSequence") and not all(_complete_code(i) for i in inner.value):
                return True
            if _nested_incomplete_code(inner):
                return True
    return False


def clean(src, path=None) -> CleanSource:
    """The cleaned copy of `src` (a pydicom Dataset) that DICOM out builds from; see the module."""
    from pydicom.dataset import Dataset, FileMetaDataset

    notes: list[str] = []
    c = Dataset()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        charset = src.get("SpecificCharacterSet")
        elements = []
        for tag in src.keys():
            if tag in PIXEL_TAGS or tag.is_private or tag.group == 0xFFFE:  # FFFE: a stray item delimiter
                continue
            try:
                elements.append(src[tag])
            except Exception:  # a value pydicom cannot read at all: left out (a Type 2 one is written empty)
                notes.append(f"{_keyword(tag)} cannot be read; left out")
    charset_warned = [str(w.message) for w in said if "character set" in str(w.message).lower()
                      or "encoding" in str(w.message).lower()] or _charset_invalid(charset)
    if charset_warned:
        notes.append(f"SpecificCharacterSet {_show(charset)} is not valid as written; the text was read as pydicom "
                     "interprets it and is written as UTF-8 (ISO_IR 192)")
    non_ascii = False
    for elem in elements:
        if elem.keyword == "SpecificCharacterSet":
            continue
        if elem.VR == "SQ":  # nested values are decoded with the dataset's character set too
            depth = _depth(elem)
            if depth is None:
                notes.append(f"{_keyword(elem.tag)}: sequences nested more than {MAX_DEPTH} deep; left out")
                continue
            if not elem.value:  # an empty sequence copied says nothing (and a Type 3 one must not be empty)
                continue
            elem = copy.deepcopy(elem)
            if elem.keyword.endswith("CodeSequence"):  # a code item without its Type 1 parts is invalid where copied
                kept = [item for item in elem.value if _complete_code(item)]
                if len(kept) < len(elem.value):
                    notes.append(f"{elem.keyword}: {len(elem.value) - len(kept)} item(s) without a code value, coding "
                                 "scheme or meaning; left out")
                if not kept:
                    continue
                elem.value = kept
            if _nested_incomplete_code(elem):  # deeper down: the item that holds it cannot be mended alone
                notes.append(f"{elem.keyword}: holds a code without its code value, coding scheme or meaning; left out")
                continue
            non_ascii |= _has_non_ascii(elem)
            c.add(elem)
            continue
        elem = copy.deepcopy(elem)
        values = _values(elem)
        if any(isinstance(v, str) and "\ufffd" in v for v in values) or (
                any(isinstance(v, bytes) for v in values) and elem.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC")):
            notes.append(f"{elem.keyword or elem.tag} does not decode in the source's character set "
                         f"{_show(charset)}; left empty")
            elem.value = ""
        elif elem.VR in _FIXERS:
            fixed = [_FIXERS[elem.VR](str(v)) for v in values]
            if any(f is None for f in fixed):
                notes.append(f"{elem.keyword or elem.tag} {_show(elem.value)} is not a valid {elem.VR}; left empty")
                elem.value = ""
            elif [str(v) for v in values] != fixed:
                notes.append(f"{elem.keyword or elem.tag} {_show(elem.value)} written as {_show(fixed)} ({elem.VR})")
                elem.value = fixed if len(fixed) > 1 else fixed[0]
        elif elem.keyword == "PatientSex" and str(elem.value or "").strip().upper() not in ("", "M", "F", "O"):
            notes.append(f"PatientSex {_show(elem.value)} is not M, F or O; left empty")
            elem.value = ""
        elif elem.keyword == "PatientAge" and elem.value and not _AS.match(str(elem.value)):
            notes.append(f"PatientAge {_show(elem.value)} is not a valid age (nnnD/W/M/Y); left out")
            continue
        elif elem.VR in ("DS", "IS") and not _numbers_ok(elem):
            notes.append(f"{elem.keyword or elem.tag} {_show(_raw_text(elem))} is not a valid {elem.VR}; left out")
            continue
        c.add(elem)
        non_ascii |= any(isinstance(v, str) and not v.isascii() for v in _values(elem))
    for keyword in TYPE2:
        if keyword not in c:
            setattr(c, keyword, "")
    if not str(c.Modality or "").strip():  # Type 1 in the source's series; highdicom derives codes from it
        c.Modality = "US" if str(src.get("SOPClassUID", "")).strip() in ULTRASOUND else "OT"
        notes.append(f"the source has no Modality; taken as {c.Modality}")
    if non_ascii:  # else the default repertoire (ASCII) holds every value
        c.SpecificCharacterSet = "ISO_IR 192"
    real = str(src.get("SOPClassUID", "")).strip()
    if real in SINGLE_FRAME and int(_first(src.get("NumberOfFrames", 1)) or 1) > 1:
        notes.append(f"NumberOfFrames {src.NumberOfFrames} on a single-frame SOP class ({_name(real)}): "
                     "referenced as a single-frame image")
        del c.NumberOfFrames
    stand_in = RETIRED_STAND_IN.get(real) or (real if _known_to_highdicom(real) else SECONDARY_CAPTURE)
    if stand_in != real:
        c.SOPClassUID = stand_in
    c.file_meta = FileMetaDataset()
    meta = getattr(src, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        c.file_meta.TransferSyntaxUID = meta.TransferSyntaxUID
    return CleanSource(c, real, notes)


#: sequences nested deeper than this are not copied into the outputs (the patient, study and
#: equipment attributes highdicom needs are a few levels deep at most; Python's recursion is not)
MAX_DEPTH = 32


def _depth(elem) -> int | None:
    """How deep a sequence element nests (1: items without sequences), or None when deeper than
    MAX_DEPTH or unreadable; walked without recursion."""
    deepest, stack = 0, [(elem, 1)]
    try:
        while stack:
            e, d = stack.pop()
            if d > MAX_DEPTH:
                return None
            deepest = max(deepest, d)
            for item in e.value or []:
                stack += [(x, d + 1) for x in item if x.VR == "SQ"]
    except Exception:  # a nested value pydicom cannot read (a RecursionError among them)
        return None
    return deepest


def _charset_invalid(charset) -> bool:
    """Whether pydicom has to guess what a SpecificCharacterSet means (a misspelling such as
    'ISO-IR 100', an unknown term)."""
    from pydicom.charset import convert_encodings

    if charset is None:
        return False
    values = [charset] if isinstance(charset, str) else list(charset)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            convert_encodings(values)
        except Exception:
            return True
    return bool(said)


def _first(v):
    if v is None:
        return None
    if not isinstance(v, (str, bytes)) and hasattr(v, "__len__"):
        return list(v)[0] if len(v) else None
    return v


def _values(elem) -> list:
    v = elem.value
    if v is None:
        return []
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        return [v]
    return list(v)


def _numbers_ok(elem) -> bool:
    try:
        for v in _values(elem):
            float(v)
    except (TypeError, ValueError):
        return False
    return True


def _raw_text(elem) -> str:
    try:
        return str(elem.value)
    except Exception:
        return "?"


def _has_non_ascii(elem) -> bool:
    for item in elem.value:
        for e in item:
            if e.VR == "SQ":
                if _has_non_ascii(e):
                    return True
            elif any(isinstance(v, str) and not v.isascii() for v in _values(e)):
                return True
    return False


def _show(v) -> str:
    if v is None:
        return "(absent)"
    if not isinstance(v, (str, bytes)) and hasattr(v, "__iter__"):
        v = "\\".join(str(x) for x in v)
    return repr(str(v))[:60]


def _keyword(tag) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or str(tag)


def _name(uid: str) -> str:
    from .sop_classes import sop_class_name

    return sop_class_name(uid)
