"""DICOM out (--dicom-out) and cine/study handling, as a PACS user would check them: every object
passes dciodvfy, the SR read back with highdicom says what the prediction says, re-running
replaces instead of duplicating, and a cine loop's aggregate recomputes from its frames."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from helpers import BIN, cli
from hostile import dicom as make_dicom
from pydicom.uid import generate_uid

hd = pytest.importorskip("highdicom")


def dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy") or str(BIN / "dciodvfy")
    r = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]


def algorithm_parameters(sr) -> list[str]:
    """The Algorithm Parameters (DCM 111002) text items anywhere in an SR's content."""
    found = []

    def walk(items):
        for item in items:
            name = item.get("ConceptNameCodeSequence")
            if name and name[0].CodeValue == "111002" and name[0].CodingSchemeDesignator == "DCM":
                found.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def study(folder: Path, images: dict[str, np.ndarray], **kw) -> dict[str, str]:
    """US DICOM files of one study (patient attributes included); name -> SOPInstanceUID."""
    base = dict(StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), PatientID="PH001",
                PatientName="Phantom^One", PatientBirthDate="19700101", PatientSex="F", StudyDate="20261125",
                StudyTime="120000", AccessionNumber="ACC1", StudyID="1", SeriesNumber=1, ReferringPhysicianName="")
    base.update(kw)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (name, px) in enumerate(images.items(), 1):
        sop = generate_uid()
        make_dicom(folder / name, px, frames=len(px) if px.ndim == 3 and px.shape[-1] != 3 else 1,
                   SOPInstanceUID=sop, InstanceNumber=i, **base)
        out[name] = sop
    return out


@pytest.fixture
def lesion_grey(phantoms):
    return cv2.imread(str(phantoms / "malignant" / "malignant (1).png"), cv2.IMREAD_GRAYSCALE)


def test_sr_sc_seg_are_valid_and_say_what_the_prediction_says(exported, tmp_path, lesion_grey):
    sops = study(tmp_path / "in", {"IM0001": lesion_grey})
    out = tmp_path / "dicom-out"
    args = [tmp_path / "in", "--model", exported / "model.onnx", "--mask", "auto", "--dicom-out", out, "--explain",
            tmp_path / "cam"]
    r = cli("busi-infer", *args)
    rec = json.loads(r.stdout)
    src = pydicom.dcmread(tmp_path / "in" / "IM0001")
    kinds = ["sr", "sc"] + (["seg"] if rec["lesion_found"] else [])
    files = sorted(out.iterdir())
    assert sorted(p.name for p in files) == sorted(f"{sops['IM0001']}.{k}.dcm" for k in kinds)
    for f in files:
        assert dciodvfy_errors(f) == [], f
        ds = pydicom.dcmread(f)
        assert ds.PatientID == "PH001" and ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
        assert ds.Manufacturer.startswith("busi")
    sr = hd.sr.srread(out / f"{sops['IM0001']}.sr.dcm")
    group = (sr.content.get_planar_roi_measurement_groups() or sr.content.get_image_measurement_groups())[0]
    m = {x.name.meaning: x.value for x in group.get_measurements()}
    q = {x.name.meaning: x.value.meaning for x in group.get_qualitative_evaluations()}
    assert m["Probability of cancer"] == pytest.approx(rec["probabilities"]["malignant"], abs=1e-6)
    assert "Probability of malignant" not in m  # one image: P(malignant) is the Probability of cancer
    for c in ("normal", "benign"):
        assert m[f"Probability of {c}"] == pytest.approx(rec["probabilities"][c], abs=1e-6)
    assert m["Threshold Value"] == pytest.approx(rec["threshold"], abs=1e-6)
    params = algorithm_parameters(sr)
    assert q["Pathology"] == rec["class"].capitalize() and "mask source auto" in params
    assert q["Malignant flag at the operating point"] == ("Yes" if rec["malignant"] else "No")
    assert q["Image unlike the training images (do not trust the class)"] == ("Yes" if rec["out_of_distribution"] else "No")
    assert m["Out-of-distribution score"] == pytest.approx(rec["ood_score"], rel=1e-5)
    assert f"out-of-distribution threshold {rec['ood_threshold']:.6g}" in params
    x, y, w, h = rec["lesion_box"]
    assert group.roi.value.tolist() == [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
    assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sops["IM0001"]
    sc = pydicom.dcmread(out / f"{sops['IM0001']}.sc.dcm")
    assert sc.pixel_array.ndim == 3 and sc.pixel_array.shape[2] == 3
    if rec["lesion_found"]:
        seg = pydicom.dcmread(out / f"{sops['IM0001']}.seg.dcm")
        assert seg.pixel_array.shape == (src.Rows, src.Columns) and seg.pixel_array.any()
        ys, xs = np.nonzero(seg.pixel_array)
        assert x <= xs.min() and xs.max() < x + w and y <= ys.min() and ys.max() < y + h  # the lesion is inside its box
    # the same input, model and options again: the same objects, replaced, not added, equal in every
    # attribute but when they were made (no UID drawn at random, the SEG's dimension organisation included)
    def content(p: Path) -> list:
        return [(e.tag, e.value) for e in pydicom.dcmread(p).iterall()
                if e.VR != "SQ" and not re.search(r"(Date|Time)$|^(Date|Time)Of", e.keyword or "")]

    first = {p.name: content(p) for p in files}
    before = {p.name: pydicom.dcmread(p).SOPInstanceUID for p in files}
    cli("busi-infer", *args)
    again = {p.name: content(p) for p in out.iterdir()}
    assert again.keys() == first.keys()
    for name in first:
        assert again[name] == first[name], (name, [a for a, b in zip(first[name], again[name]) if a != b][:3])
    # other options are other results: new objects beside them
    cli("busi-infer", tmp_path / "in", "--model", exported / "model.onnx", "--mask", "none", "--dicom-out", tmp_path / "other")
    other = {pydicom.dcmread(p).SOPInstanceUID for p in (tmp_path / "other").iterdir()}
    assert other and not other & set(before.values())
    # busi's own objects in a folder are skipped, not classified
    shutil.copytree(out, tmp_path / "in" / "derived")
    r = cli("busi-infer", tmp_path / "in", "--model", exported / "model.onnx", "--mask", "none")
    assert len(r.stdout.splitlines()) == 1 and f"({len(files)} busi's own DICOM outputs)" in r.stderr
    r = cli("busi-infer", out, "--model", exported / "model.onnx", check=False)
    assert r.returncode == 2 and f"{out}: is a directory without images ({len(files)} busi's own DICOM outputs)" in r.stderr


def test_a_dicom_image_is_parsed_once(exported, tmp_path, lesion_grey, monkeypatch):
    """Issue 30's DICOM seam: finding a file parses its header (up to the pixel data), decoding
    parses only what follows it, and the SR and SC reuse that dataset instead of reading the
    file again. The result is the one a whole parse gives; a file rewritten after it was found
    is parsed again, whole."""
    from busi.runtime import dicom_headers, dicom_out
    from busi.runtime.inputs import expand_inputs
    from busi.runtime.predictor import Predictor

    study(tmp_path / "in", {"IM0001": lesion_grey, "IM0002": np.ascontiguousarray(lesion_grey[::-1]),
                            "IM0003": np.ascontiguousarray(lesion_grey[:, ::-1])})
    predictor = Predictor(exported / "model.onnx")
    whole = {Path(p).name: predictor.predict(str(p), "none", keep_view=True) for p in sorted((tmp_path / "in").iterdir())}
    calls, real = [], pydicom.dcmread

    def counting(fp, *a, **kw):
        calls.append("header" if kw.get("stop_before_pixels") else "full")
        return real(fp, *a, **kw)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    dicom_headers.clear()
    files = expand_inputs([str(tmp_path / "in")]).files
    assert sorted(calls) == ["header"] * 3, calls
    rewritten = pydicom.dcmread(tmp_path / "in" / "IM0003")  # after the walk: another patient name, a longer header
    rewritten.PatientName = "Rewritten^After^The^Walk"
    rewritten.save_as(tmp_path / "in" / "IM0003")
    calls.clear()
    written, results = [], {}
    for r in predictor.iter_predict(files, "none", keep_view=True):
        results[Path(r.path).name] = r
        written += dicom_out.write(r, r.path, tmp_path / "out")
    assert len(written) == 6 and calls == ["full"], calls  # only the rewritten file parsed again
    assert str(results["IM0003"].extras["dicom_source"].PatientName) == "Rewritten^After^The^Walk"
    for name in ("IM0001", "IM0002"):
        a, b = results[name], whole[name]
        assert a.probabilities == b.probabilities and a.dicom == b.dicom
        assert a.extras["dicom_source"] == b.extras["dicom_source"]  # every element, the pixel data included


def test_a_whole_image_sr_and_png_inputs(exported, tmp_path, lesion_grey, phantoms):
    sops = study(tmp_path / "in", {"IM0001": lesion_grey})
    png = phantoms / "benign" / "benign (1).png"
    r = cli("busi-infer", tmp_path / "in", png, "--model", exported / "model.onnx", "--mask", "none",
            "--dicom-out", tmp_path / "out")
    assert r.stderr.count("PNG and JPEG inputs get no DICOM output") == 1
    sr_path = tmp_path / "out" / f"{sops['IM0001']}.sr.dcm"
    assert dciodvfy_errors(sr_path) == []
    sr = hd.sr.srread(sr_path)
    assert not sr.content.get_planar_roi_measurement_groups()
    assert len(sr.content.get_image_measurement_groups()) == 1
    assert "mask source none" in algorithm_parameters(sr)
    assert len(list((tmp_path / "out").iterdir())) == 2  # SR and SC for the DICOM; nothing for the PNG


def test_a_cine_loop_and_a_study_summary(exported, tmp_path, lesion_grey):
    g = lesion_grey
    cine = np.stack([np.roll(g, 15 * i, axis=1) for i in range(4)]).astype(np.uint8)
    sops = study(tmp_path / "in", {"IM0001": g, "CINE01": cine})
    model = exported / "model.onnx"
    r = cli("busi-infer", tmp_path / "in", "--model", model, "--roi", "120,100,90,70", "--frames", "all",
            "--by", "study", "--batch-size", "3", "--dicom-out", tmp_path / "out")
    recs = [json.loads(ln) for ln in r.stdout.splitlines()]
    images = [x for x in recs if x.get("record") != "study"]
    loop = next(x for x in images if x["path"].endswith("CINE01"))
    frames = [json.loads(cli("busi-infer", tmp_path / "in" / "CINE01", "--model", model, "--roi", "120,100,90,70",
                             "--frame", i).stdout) for i in range(4)]
    p_mal = [f["probabilities"]["malignant"] for f in frames]
    c = loop["cine"]
    assert c["frames"] == 4 and c["max_malignant_frame"] == int(np.argmax(p_mal))
    assert c["max_malignant"] == pytest.approx(max(p_mal), abs=1e-5)
    for k in loop["probabilities"]:
        assert loop["probabilities"][k] == pytest.approx(np.mean([f["probabilities"][k] for f in frames]), abs=1e-5)
    assert loop["malignant"] == (max(p_mal) >= loop["threshold"]) and loop["dicom"]["frames"] == 4
    assert loop["dicom"]["SOPInstanceUID"] == sops["CINE01"]
    (summary,) = [x for x in recs if x.get("record") == "study"]
    assert summary["images"] == 2 and summary["max_malignant"] == pytest.approx(
        max(max(p_mal), next(x for x in images if x["path"].endswith("IM0001"))["probabilities"]["malignant"]), abs=1e-5)
    sr = hd.sr.srread(tmp_path / "out" / f"{sops['CINE01']}.sr.dcm")
    group = sr.content.get_planar_roi_measurement_groups()[0]
    m = {x.name.meaning: x.value for x in group.get_measurements()}
    assert m["Probability of cancer"] == pytest.approx(max(p_mal), abs=1e-5)  # the frame behind the flag
    assert m["Probability of malignant"] == pytest.approx(loop["probabilities"]["malignant"], abs=1e-5)  # the mean
    assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber == c["max_malignant_frame"] + 1
    assert dciodvfy_errors(tmp_path / "out" / f"{sops['CINE01']}.sr.dcm") == []
    table = cli("busi-infer", tmp_path / "in", "--model", model, "--roi", "120,100,90,70", "--frames", "all", "--by",
                "study", "-f", "table").stdout
    assert "[cine: 4 frames, highest P(mal) in frame" in table and table.count("STUDY ") == 1


def test_a_dicom_study_gets_the_predictions_of_its_png_export(exported, tmp_path):
    """busi-train phantoms --dicom writes the same phantoms as a PACS study: 8-bit ultrasound
    DICOM is read as stored (no contrast stretch), so each file gets its PNG's prediction."""
    cli("busi-train", "phantoms", "--out", tmp_path / "png", "--per-class", 2, "--seed", 7, "--dicom", tmp_path / "dcm")
    model = exported / "model.onnx"
    dcm = [json.loads(ln) for ln in cli("busi-infer", tmp_path / "dcm", "--model", model, "--mask", "none").stdout.splitlines()]
    png = {json.loads(ln)["path"]: json.loads(ln) for ln in
           cli("busi-infer", tmp_path / "png", "--model", model, "--mask", "none").stdout.splitlines()}
    order = [str(tmp_path / "png" / c / f"{c} ({i}).png") for c in ("normal", "benign", "malignant") for i in (1, 2)]
    assert len(dcm) == 6 and len({d["dicom"]["StudyInstanceUID"] for d in dcm}) == 1
    for d, p in zip(sorted(dcm, key=lambda r: r["path"]), order):
        assert d["probabilities"] == pytest.approx(png[p]["probabilities"], abs=1e-6), (d["path"], p)


# ---- DICOM out from any source a PACS holds (issue 27) --------------------------------------

#: dciodvfy warnings that come from what a quirky source lacks, not from busi's content: values
#: a DICOMDIR would need (the source has none), a Laterality that is unknown because the source
#: has none; and busi's private codes, declared in the SR's Coding Scheme Identification
#: Sequence, which dciodvfy checks against its fixed list of designators only
SOURCE_CAUSED = ("would be needed to build DICOMDIR", "attribute <Laterality>")
DECLARED_PRIVATE = "Unrecognized defined term <99BUSI>"


def dciodvfy_lines(path: Path) -> tuple[list[str], list[str]]:
    exe = shutil.which("dciodvfy") or str(BIN / "dciodvfy")
    r = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (r.stdout + r.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def code_item(**values):
    item = pydicom.Dataset()
    for k, v in values.items():
        setattr(item, k, v)
    return item


def quirk_corpus(folder: Path, grey: np.ndarray) -> dict[str, Path]:
    """One file per quirk that real archives hold, each made from the same valid US image."""
    from hostile import patch_text_element
    from pydicom.uid import UltrasoundImageStorage

    base = dict(StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), PatientID="PH001",
                PatientName="Phantom^One", PatientBirthDate="19700101", PatientSex="F", StudyDate="20261125",
                StudyTime="120000", AccessionNumber="ACC1", StudyID="1", SeriesNumber=1, ReferringPhysicianName="",
                InstanceNumber=1, Laterality="L")
    folder.mkdir(parents=True)
    out = {}
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\..*)?$")  # the quirks are on purpose

    def make(name, frames=1, drop=(), **kw):
        px = np.stack([grey, 255 - grey]) if frames > 1 else grey
        p = make_dicom(folder / name, px, frames=frames, SOPInstanceUID=generate_uid(), **{**base, **kw})
        if drop:
            ds = pydicom.dcmread(p)
            for k in drop:
                delattr(ds, k)
            ds.save_as(p)
        out[name] = p
        return p

    make("valid")
    for k in ("PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "Modality"):
        make(f"no-{k}", drop=(k,))
    make("sex-0000", PatientSex="0000")
    make("sex-question", PatientSex="?")
    make("charset-empty-first", SpecificCharacterSet=["", "ISO 2022 IR 100"], PatientName="M\u00fcller^Anna")
    p = make("charset-ISO-IR-100", SpecificCharacterSet="ISO_IR 100", PatientName="M\u00fcller^Anna")
    patch_text_element(p, (0x0008, 0x0005), b"CS", b"ISO_IR 100", b"ISO-IR 100")
    make("da-0", StudyDate="0")
    make("year-0", PatientBirthDate="00000101")
    make("tm-colons", StudyTime="14:04:38")
    make("frames-on-single-frame-class", frames=2, SOPClassUID=UltrasoundImageStorage)
    make("unknown-sop-class", SOPClassUID="1.2.826.0.1.3680043.9.7433.99.1")
    make("retired-us-class", SOPClassUID="1.2.840.10008.5.1.4.1.1.6")
    from test_dicom import insert_before_pixels, nested_sequence

    insert_before_pixels(make("deep-sequence"), nested_sequence(3000))  # decodes; too deep to copy into the outputs
    make("empty-type3-sequences", ReferencedStudySequence=[], ProcedureCodeSequence=[])  # not copied empty
    # as two PACS exports in the public corpus have them: a code without its meaning, one without its scheme
    make("incomplete-procedure-codes", ProcedureCodeSequence=[
        code_item(CodeValue="0FINGN", CodingSchemeDesignator="medneo"), code_item(CodeValue="028", CodeMeaning="CT"),
        code_item(CodeValue="45036003", CodingSchemeDesignator="SCT", CodeMeaning="Ultrasonography of breast")],
        ReferringPhysicianIdentificationSequence=[code_item(PersonIdentificationCodeSequence=[code_item(CodeValue="7060")])])
    for p in out.values():  # the file meta says what the dataset says
        ds = pydicom.dcmread(p)
        if ds.file_meta.MediaStorageSOPClassUID != ds.SOPClassUID:
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.save_as(p)
    return out


@pytest.mark.parametrize("mask", ["roi", "auto"])
def test_dicom_out_from_quirky_sources(exported, tmp_path, lesion_grey, mask):
    """Every quirk gets its SR and SC (and SEG where auto found a lesion) with no dciodvfy error
    and no warning from busi's own content; what was done to a value is a note in the record."""
    corpus = quirk_corpus(tmp_path / "in", lesion_grey)
    out = tmp_path / "out"
    how = ["--roi", "120,100,90,70"] if mask == "roi" else ["--mask", "auto"]
    r = cli("busi-infer", tmp_path / "in", "--model", exported / "model.onnx", *how, "--dicom-out", out, check=False)
    assert r.returncode in (0, 3), r.stderr
    assert "Traceback" not in r.stderr and "UserWarning" not in r.stderr and "site-packages" not in r.stderr
    recs = {Path(x["path"]).name: x for x in map(json.loads, r.stdout.splitlines())}
    assert set(recs) == set(corpus)
    for name, rec in recs.items():
        assert "error" not in rec and "dicom_output_error" not in rec, (name, rec)
        sop = str(pydicom.dcmread(corpus[name]).SOPInstanceUID)
        kinds = ["sr"] if rec.get("needs_roi") else ["sr", "sc"] + (["seg"] if rec.get("lesion_found") else [])
        for k in kinds:
            f = out / f"{sop}.{k}.dcm"
            errors, warns = dciodvfy_lines(f)
            busi_warns = [w for w in warns if not any(s in w for s in SOURCE_CAUSED) and DECLARED_PRIVATE not in w]
            assert errors == [] and busi_warns == [], (name, k, errors, busi_warns)
            ds = pydicom.dcmread(f)
            assert ds.StudyInstanceUID == pydicom.dcmread(corpus[name]).StudyInstanceUID
        if "charset" in name:
            sr = pydicom.dcmread(out / f"{sop}.sr.dcm")
            assert str(sr.PatientName) == "M\u00fcller^Anna" and sr.SpecificCharacterSet == "ISO_IR 192"
        if "sc" in kinds:
            sc = pydicom.dcmread(out / f"{sop}.sc.dcm")
            assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == sop and sc.Laterality == "L"
            assert sc.SourceImageSequence[0].ReferencedSOPClassUID == pydicom.dcmread(corpus[name]).SOPClassUID
    notes = {name: " ".join(rec["notes"]) for name, rec in recs.items()}
    assert "PatientSex '0000' is not M, F or O; left empty" in notes["sex-0000"]
    assert "StudyDate '0' is not a valid DA; left empty" in notes["da-0"]
    assert "StudyTime '14:04:38' written as '140438'" in notes["tm-colons"]
    assert "referenced as a single-frame image" in notes["frames-on-single-frame-class"]
    assert "ContentSequence: sequences nested more than 32 deep; left out" in notes["deep-sequence"]
    assert "ProcedureCodeSequence: 2 item(s) without a code value, coding scheme or meaning; left out" \
        in notes["incomplete-procedure-codes"]
    assert "ReferringPhysicianIdentificationSequence: holds a code without its code value, coding scheme or meaning; " \
        "left out" in notes["incomplete-procedure-codes"]
    kept = pydicom.dcmread(out / f"{pydicom.dcmread(corpus['incomplete-procedure-codes']).SOPInstanceUID}.sr.dcm")
    assert [c.CodeValue for c in kept.ProcedureCodeSequence] == ["45036003"]  # the complete one stays
    sr = hd.sr.srread(out / f"{pydicom.dcmread(corpus['retired-us-class']).SOPInstanceUID}.sr.dcm")
    refs = [x for x in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence]
    assert refs[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.6"  # referenced by its own UID
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99BUSI"


def test_an_output_that_cannot_be_written_keeps_the_class(exported, tmp_path, lesion_grey):
    """A source without a SOP Instance UID is classified, but no output can reference it: the
    record keeps its class and says dicom_output_error, the summary counts it, exit 1."""
    p = make_dicom(tmp_path / "IM0001", lesion_grey, StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())
    ds = pydicom.dcmread(p)
    del ds.SOPInstanceUID
    ds.save_as(p, enforce_file_format=False)
    r = cli("busi-infer", p, "--model", exported / "model.onnx", "--mask", "none", "--dicom-out", tmp_path / "out",
            check=False)
    rec = json.loads(r.stdout)
    assert r.returncode == 1 and rec["class"] and "error" not in rec
    assert "DICOM output not written: the source has no SOPInstanceUID" in rec["dicom_output_error"]
    import jsonschema

    from busi.runtime.schema import record_schema

    jsonschema.validate(rec, record_schema())  # the record's reference (busi-infer --schema) knows the field
    assert "1/1 images classified" in r.stderr and "DICOM output failed for 1" in r.stderr
