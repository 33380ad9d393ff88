"""The first five minutes with busi, as a new user meets them: the default mask keeps the model
inside its training conditions, mask mistakes are usage errors that say what to do, a BUSI
normal image with its empty mask is classified as in training, --device auto pays nothing for
a GPU that is not there, and the conventions (--version, python -m busi, help panels, the
record's JSON Schema, a progress bar only on a terminal)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import PROGRESS_MARKS, cli, on_a_terminal

from busi.runtime import Predictor
from busi.runtime.contract import CONTRACT_VERSION
from busi.runtime.session import nvidia_driver

COMMANDS = ("busi-infer", "busi-train", "busi-export", "busi-node", "busi-serve")


def infer(*args, check=False, **kw):
    return cli("busi-infer", *args, check=check, **kw)


@pytest.fixture
def no_segmenter(exported, tmp_path):
    """The classifier alone, as someone handed only model.onnx has it."""
    d = tmp_path / "handed"
    d.mkdir()
    for name in ("model.onnx", "model.onnx.sha256"):
        shutil.copy(exported / name, d / name)
    return d / "model.onnx"


def images(phantoms, n=2):
    return [phantoms / c / f"{c} ({i})" for c in ("benign", "malignant") for i in range(1, n + 1)]


def test_the_default_mask_is_auto_where_the_model_has_a_segmenter(exported, phantoms):
    imgs = [f"{p}.png" for p in images(phantoms, 1)]
    r = infer(*imgs, "--model", exported / "model.onnx")
    assert r.returncode in (0, 3), r.stderr  # 3: auto abstained on some (needs_roi records)
    recs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(recs) == 2 and all(x["mask_source"] == "auto" for x in recs), recs
    assert "outside its training conditions" not in r.stderr
    # the Predictor the same way
    res = Predictor(exported / "model.onnx", device="cpu").predict(imgs[0])
    assert res.mask_source == "auto"


def test_without_a_segmenter_the_whole_image_and_one_line_on_how_to_give_a_box(no_segmenter, phantoms):
    imgs = [f"{p}.png" for p in images(phantoms)]
    r = infer(*imgs, "--model", no_segmenter)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(recs) == 4 and all(x["mask_source"] == "none" and "class" in x for x in recs)
    told = [ln for ln in r.stderr.splitlines() if "--roi" in ln]
    assert len(told) == 1 and "no lesion segmenter" in told[0] and "--mask" in told[0], r.stderr
    assert "outside its training conditions" in told[0] and len(r.stderr.splitlines()) == 2  # that line + the summary
    notices = []
    p = Predictor(no_segmenter, device="cpu", notice=notices.append)
    assert p.default_mask == "none" and [x.mask_source for x in p.predict_many(imgs)] == ["none"] * 4
    assert len(notices) == 1 and "--roi" in notices[0]


@pytest.mark.parametrize("mask", ["box", "gt", "roi", "no-such-mask.png"])
def test_a_mask_source_name_or_a_missing_file_is_bad_usage_that_names_roi(exported, phantoms, mask):
    r = infer(phantoms / "benign" / "benign (1).png", "--model", exported / "model.onnx", "--mask", mask)
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and r.stdout == "" and len(errs) == 1, r.stderr
    assert f"--mask {mask}" in errs[0] and "--roi x,y,w,h" in errs[0]


def test_a_busi_normal_image_with_its_empty_mask_gets_the_trained_placeholder(exported, sample):
    from busi.runtime.imageio import read_image, resize_mask
    from busi.runtime.masks import box_mask, placeholder_box

    normal = sorted((sample / "normal").glob("normal (*).png"))
    normal = [p for p in normal if "_mask" not in p.name][:2]
    r = infer(*normal, "--model", exported / "model.onnx", "--mask", sample / "normal")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(ln) for ln in r.stdout.splitlines()]
    p = Predictor(exported / "model.onnx", device="cpu")
    S, frac = p.size, p.info.mask.placeholder
    for path, rec in zip(normal, recs):
        mask_file = sample / "normal" / f"{path.stem}_mask.png"
        assert "class" in rec and rec["mask_source"] == "box" and rec["lesion_box"] is None
        assert [n for n in rec["notes"] if f"mask {mask_file} is empty" in n and "lesion-sized box" in n], rec["notes"]
        # the same probabilities as the model given the placeholder box by hand
        rgb = read_image(path).rgb
        m = resize_mask(box_mask(rgb.shape[:2], placeholder_box(rgb.shape[:2], frac)), S).astype(np.float32)
        image = p.prepare(path, "none").image
        want = p.runner.run(image[None], m[None, :, :, None])[0][0]
        assert np.allclose([rec["probabilities"][c] for c in p.info.classes], want, atol=1e-5)


def test_device_auto_without_a_driver_makes_no_cuda_session_and_says_nothing(exported, phantoms, monkeypatch):
    if nvidia_driver():
        pytest.skip("this machine has an NVIDIA driver")
    import onnxruntime as ort

    made = []
    real = ort.InferenceSession

    def recording(*a, providers=None, **kw):  # the real session, its providers written down
        made.append(list(providers or []))
        return real(*a, providers=providers, **kw)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    p = Predictor(exported / "model.onnx", device="auto")
    assert p.provider == "CPUExecutionProvider" and made == [["CPUExecutionProvider"]]
    base = [phantoms / "benign" / "benign (1).png", "--model", exported / "model.onnx", "--roi", "10,10,30,20"]
    r = infer(*base)
    assert r.returncode == 0 and "CUDA" not in r.stderr and "running on CPU" not in r.stderr, r.stderr
    assert "no NVIDIA driver" in infer(*base, "-v").stderr  # said at debug level


def test_version_on_every_command_and_python_m_busi():
    for name in COMMANDS:
        r = cli(name, "--version")
        assert re.fullmatch(rf"{name} \d+\.\d+\.\d+\S* \(model contract {CONTRACT_VERSION}, onnxruntime \d\S+, "
                            r"Python \d\S+\)\n", r.stdout), r.stdout
    r = subprocess.run([sys.executable, "-m", "busi", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and all(f"  {c.removeprefix('busi-')} " in r.stdout for c in COMMANDS), r.stdout
    r = subprocess.run([sys.executable, "-m", "busi", "infer", "--help"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "120"})
    assert r.returncode == 0 and "Usage: busi-infer" in r.stdout
    for panel in ("Input", "Mask", "Model", "Output", "DICOM", "Server"):  # help grouped in panels
        assert f"─ {panel} ─" in r.stdout, panel
    assert "Examples" in r.stdout and "--install-completion" in r.stdout
    r = subprocess.run([sys.executable, "-m", "busi", "infer", "--version"], capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("busi-infer ")
    r = subprocess.run([sys.executable, "-m", "busi", "nonsense"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "infer, train, export, node, serve" in r.stderr


def test_verbosity_options_after_the_subcommand(tmp_path):
    cli("busi-train", "phantoms", "--out", tmp_path / "p", "--per-class", 1, "-q")
    r = cli("busi-train", "check-data", tmp_path / "p", "-v")
    assert "3 images" in r.stdout


def test_records_validate_against_the_schema_busi_infer_prints(exported, phantoms, tmp_path):
    import jsonschema

    schema = json.loads(cli("busi-infer", "--schema").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    imgs = [f"{p}.png" for p in images(phantoms)] + [phantoms / "normal" / "normal (1).png"]
    runs = [infer(*imgs, bad, "--model", exported / "model.onnx", "--mask", "auto", "--tta"),
            infer(*imgs, bad, "--model", exported / "model.onnx", "--roi", "10,10,40,30", "--prevalence", "malignant=0.05"),
            infer(*imgs, "--model", exported / "model.onnx", "--mask", phantoms, "--frames", "all")]
    kinds = set()
    for r in runs:
        assert "Traceback" not in r.stderr
        for ln in r.stdout.splitlines():
            rec = json.loads(ln)
            errors = sorted(v.iter_errors(rec), key=str)
            assert not errors, (rec, [e.message for e in errors][:3])
            kinds.add("error" if "error" in rec else "needs_roi" if rec.get("needs_roi") else "prediction")
    assert {"error", "prediction"} <= kinds
    rec = json.loads(runs[1].stdout.splitlines()[0])
    assert not v.is_valid({**rec, "unexplained_field": 1}) and not v.is_valid({**rec, "probabilities": "high"})
    from busi.runtime.records import study_summaries

    recs = [json.loads(ln) for ln in runs[1].stdout.splitlines() if "class" in ln]
    for x in recs:
        x["dicom"] = {"StudyInstanceUID": "1.2.3", "frame": 0, "frames": 1}
    for s in study_summaries(recs):
        assert v.is_valid(s), list(v.iter_errors(s))[:2]


@pytest.mark.parametrize("setup", ["empty", "only text"])
def test_a_folder_without_images_is_bad_usage(exported, tmp_path, setup):
    d = tmp_path / "scans"
    d.mkdir()
    if setup == "only text":
        (d / "notes.txt").write_text("no images here")
    r = infer(d, "--model", exported / "model.onnx")
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errs) == 1 and str(d) in errs[0] and r.stdout == "", r.stderr


def test_a_progress_bar_with_rate_and_eta_only_on_a_terminal(exported, phantoms):
    imgs = [f"{p}.png" for p in images(phantoms)]
    args = [*imgs, "--model", exported / "model.onnx", "--roi", "10,10,40,30"]
    piped = infer(*args)
    assert piped.returncode == 0 and not [m for m in PROGRESS_MARKS if m in piped.stderr], piped.stderr
    r, text = on_a_terminal("busi-infer", *args, timeout=300)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 4  # the records stay on stdout
    assert "images/s" in text and "ETA" in text and "4/4" in text, text[-2000:]
