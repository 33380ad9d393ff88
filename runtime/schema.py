"""The JSON Schema of busi-infer's output records (`busi-infer --schema`), built from the result
dataclasses themselves (their fields and types), so that it cannot drift from what is written.

One record per input: a prediction, an abstention of `--mask auto` (`needs_roi`), or a
failure (`error`); with `--by study`, one summary record per DICOM study as well.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from . import results

SCHEMA_ID = "https://github.com/busi/busi/schemas/record.json"

#: what each field means: the reference for the output record (a test checks every field has one)
MEANING = {
    "path": "the input file as named (null for arrays and bytes given through the API)",
    "class": "the predicted class (the model's classes, normal / benign / malignant): the highest probability",
    "confidence": "the probability of that class",
    "probabilities": "calibrated probability of each class (sums to 1)",
    "malignant": "the malignant flag: P(malignant) >= threshold (the operating point, set for 95 % sensitivity), "
                 "not the top class",
    "threshold": "the P(malignant) threshold of the flag (the model's operating point, or --threshold)",
    "mask_source": "what the classifier was shown: box (a lesion box with the trained margin), gt (a lesion mask), "
                   "auto (the segmenter's lesion) or none (the whole image)",
    "lesion_box": "the lesion's tight box x, y, w, h in image pixels (given, from the mask or found); null without one",
    "provider": "the ONNX Runtime execution provider that ran the model (or the server's)",
    "model_sha256": "sha256 of the model file",
    "tta": "true when averaged with the horizontally flipped image (--tta)",
    "calibrated": "true when the probabilities are temperature-calibrated (false: a model without calibration)",
    "lesion_found": "mask source auto: whether the segmenter found a lesion (null otherwise)",
    "lesion_presence": "mask source auto: the segmenter's lesion presence score",
    "notes": "what the reader should know about this input (a resized mask, an empty mask, a DICOM quirk, OOD)",
    "dicom": "DICOM inputs: StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, patient/study identity, frame "
             "and frames",
    "cine": "--frames all: how the frames of a cine loop were combined (frames, mean probabilities, the frame with "
            "the highest P(malignant), the rule)",
    "likelihood": "the likelihood band (aligned with BI-RADS wording) of the P(malignant) behind the flag",
    "adjusted_probabilities": "--prevalence: probabilities adjusted to the site's case mix (prior shift); the flag "
                              "does not use them",
    "prediction_set": "the conformal prediction set at `coverage`, most probable class first",
    "coverage": "the coverage of the prediction set",
    "out_of_distribution": "true when the image is unlike the training images (its class is not to be trusted)",
    "ood_score": "the out-of-distribution score (Mahalanobis distance of the pooled features)",
    "ood_threshold": "the score above which an image is out of distribution",
    "needs_roi": "true: --mask auto abstained, the image is not classified; give a box (--roi) or a mask",
    "reason": "why auto abstained",
    "presence_band": "the segmenter's uncertain presence band (low, high)",
    "error": "why this input could not be classified (one line naming the file and the problem)",
    "record": "'study': a --by study summary record",
    "study_uid": "the StudyInstanceUID",
    "images": "images of the study classified",
    "max_malignant": "the highest P(malignant) of the study's images (null when none was classified)",
    "max_malignant_path": "the image with that P(malignant)",
    "output_error": "--explain: why this image's Grad-CAM overlay could not be written (the image keeps its class)",
    "dicom_output_error": "--dicom-out: why this image's DICOM objects could not be built or written (it keeps its "
                          "class)",
}

#: --by study: one summary record per DICOM study (busi.runtime.records.study_summaries)
STUDY_FIELDS = {
    "record": {"const": "study"},
    "study_uid": {"type": "string"},
    "images": {"type": "integer", "minimum": 0},
    "needs_roi": {"type": "integer", "minimum": 0, "description": "images of the study on which auto abstained"},
    "max_malignant": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "max_malignant_path": {"type": ["string", "null"]},
    "malignant": {"type": ["boolean", "null"], "description": "whether any image of the study carries the flag"},
    "threshold": {"type": ["number", "null"]},
}


def _type(tp) -> dict[str, Any]:
    """A Python annotation -> a JSON Schema fragment."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_type(a) for a in args if a is not type(None)]
        out = parts[0] if len(parts) == 1 else {"anyOf": parts}
        if type(None) in args:
            out = {"anyOf": [out, {"type": "null"}]}
        return out
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if origin is dict:
        value = args[1] if args else Any
        return {"type": "object"} if value is Any else {"type": "object", "additionalProperties": _type(value)}
    if origin is list:
        return {"type": "array", "items": _type(args[0])} if args else {"type": "array"}
    if origin is tuple:
        return {"type": "array", "prefixItems": [_type(a) for a in args], "minItems": len(args),
                "maxItems": len(args)}
    return {}


def _from_dataclass(cls, rename=None, optional=(), skip=("extras",)) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        name = (rename or {}).get(f.name, f.name)
        tp = hints[f.name]
        if f.name in optional:  # left out when None: present, it is not null
            tp = typing.Union[tuple(a for a in typing.get_args(tp) if a is not type(None))] \
                if type(None) in typing.get_args(tp) else tp
        else:
            required.append(name)
        props[name] = {**_type(tp), "description": MEANING[name]}
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def record_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one busi-infer JSON line."""
    prediction = _from_dataclass(results.Prediction, {"label": "class"}, results.Prediction.OPTIONAL)
    for p in ("confidence", "threshold", "coverage", "lesion_presence"):
        prediction["properties"][p].update(minimum=0, maximum=1)
    prediction["properties"]["probabilities"]["additionalProperties"].update(minimum=0, maximum=1)
    needs_roi = _from_dataclass(results.NeedsRoi, optional=("dicom",))
    needs_roi["properties"]["needs_roi"]["const"] = True
    # what busi-infer adds to a record when one of its outputs fails (the batch goes on, exit 1)
    prediction["properties"]["output_error"] = {"type": "string", "description": MEANING["output_error"]}
    for variant in (prediction, needs_roi):
        variant["properties"]["dicom_output_error"] = {"type": "string", "description": MEANING["dicom_output_error"]}
    failure = _from_dataclass(results.Failure)
    study = {"type": "object", "additionalProperties": False, "required": list(STUDY_FIELDS),
             "properties": {k: {**v, "description": v.get("description", MEANING.get(k, ""))} for k, v in STUDY_FIELDS.items()}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "busi-infer output record",
        "description": "One JSON line per input (a prediction, an abstention of --mask auto, or a failure), and "
                       "with --by study one summary line per DICOM study. Research software, not a medical device.",
        "oneOf": [
            {"title": "prediction", **prediction},
            {"title": "needs_roi", **needs_roi},
            {"title": "failure", **failure},
            {"title": "study summary", **study},
        ],
    }
