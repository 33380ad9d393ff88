"""The runtime as users embed and run it: Predictor API, busi-infer, devices, bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from helpers import PER_CLASS, ROOT, bench_module, cli

from busi.runtime import Predictor, predict_breast_cancer
from busi.runtime.errors import DeviceError, ModelError


def infer(*args, check=False, **kw):
    return cli("busi-infer", *args, check=check, **kw)


@pytest.fixture(scope="module")
def predictor(exported):
    return Predictor(exported / "model.onnx", device="cpu")


def lesion_images(phantoms, n=3):
    return [phantoms / c / f"{c} ({i})" for c in ("benign", "malignant") for i in range(1, n + 1)]


def test_predict_breast_cancer_matches_keras(exported, phantoms, predictor):
    from busi.train import model as _m  # noqa: F401
    from busi.train.backend import keras
    from busi.train.inputs import load_rows

    keras_model = keras.models.load_model(exported / "model.keras", compile=False)
    T = json.loads((exported / "card.json").read_text())["calibration"]["temperature"]
    for stem in lesion_images(phantoms, 2):
        img_path = stem.with_suffix(".png")
        mask_path = stem.parent / (stem.name + "_mask.png")
        prep = predictor.prepare(img_path, mask_path)
        arr = load_rows(phantoms, [{"path": img_path.relative_to(phantoms).as_posix(), "mask_paths": "", "label": "benign"}], 64)
        np.testing.assert_array_equal(arr.images[0].astype(np.float32), prep.image)  # one decode path
        k = keras_model.predict({"image": arr.images.astype(np.float32), "mask": prep.mask[None]}, verbose=0)[0]
        # the runtime reports calibrated probabilities: Keras' with the card's temperature applied
        z = np.log(np.clip(k.astype(np.float64), 1e-30, 1)) / T
        k = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        r = predict_breast_cancer(str(img_path), str(exported / "model.onnx"), mask=mask_path)
        assert r["class"] == ("normal", "benign", "malignant")[int(k.argmax())]
        assert abs(r["confidence"] - float(k.max())) <= 1e-5
        assert np.allclose([r["probabilities"][c] for c in ("normal", "benign", "malignant")], k, atol=1e-5)
        assert r["mask_source"] == "box" and r["provider"] == "CPUExecutionProvider"
        assert r["malignant"] == (r["probabilities"]["malignant"] >= r["threshold"])


def test_predictor_options_are_one_frozen_value_and_keywords_override_them(exported, phantoms):
    """What busi-infer and busi-node build (a PredictorOptions) and what an embedding tool writes
    (keywords) give the same predictor; keywords override the options; a wrong name or a bad
    value is refused before any model is loaded."""
    import dataclasses

    from busi.runtime import PredictorOptions
    from busi.runtime.errors import UsageError

    onnx_path = exported / "model.onnx"
    base = PredictorOptions(device="cpu", threshold=0.25, coverage=0.8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.threshold = 0.5
    by_options = Predictor(onnx_path, base)
    by_keywords = Predictor(onnx_path, device="cpu", threshold=0.25, coverage=0.8)
    overridden = Predictor(onnx_path, base, threshold=0.75)
    assert by_options.options == by_keywords.options == base and overridden.options == base.replace(threshold=0.75)
    img = lesion_images(phantoms, 1)[0].with_suffix(".png")
    a, b, c = (p.predict(img, mask=(40, 40, 60, 50)) for p in (by_options, by_keywords, overridden))
    assert a.probabilities == b.probabilities == c.probabilities
    assert (a.threshold, c.threshold) == (0.25, 0.75) and a.coverage == 0.8
    with pytest.raises(TypeError, match="thresold"):
        Predictor(onnx_path, base, thresold=0.5)
    with pytest.raises(UsageError, match="second argument is a PredictorOptions"):
        Predictor(onnx_path, "cpu")
    for bad, words in (({"threads": -1}, "threads must be a whole number"), ({"max_bytes": 1.5}, "max_bytes must"),
                       ({"threshold": 2}, "threshold must be a number in"), ({"coverage": 1}, "coverage must lie")):
        with pytest.raises(UsageError, match=words):
            PredictorOptions(**bad)


def test_same_predictor_from_8_threads_gives_serial_results(predictor, phantoms):
    items = [(s.with_suffix(".png"), s.parent / (s.name + "_mask.png")) for s in lesion_images(phantoms, 3)]
    serial = [predictor.predict(i, m).probabilities for i, m in items]
    results: dict = {}
    errors = []

    def work(t):
        try:
            for k in range(len(items)):
                j = (k + t) % len(items)
                results[(t, j)] = predictor.predict(*items[j]).probabilities
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    for (_, j), probs in results.items():
        assert probs == serial[j]
    assert len(results) == 8 * len(items)


def test_predict_many_batches_equal_single_predictions(predictor, phantoms, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    paths = [s.with_suffix(".png") for s in lesion_images(phantoms, 3)]
    out = predictor.predict_many(paths[:3] + [bad] + paths[3:], mask=(40, 60, 100, 80), batch_size=4)
    assert [type(o).__name__ for o in out] == ["Prediction"] * 3 + ["Failure"] + ["Prediction"] * 3
    assert str(bad) in out[3].error
    for p, o in zip(paths, [o for o in out if type(o).__name__ == "Prediction"]):
        single = predictor.predict(p, (40, 60, 100, 80))
        assert np.allclose(list(single.probabilities.values()), list(o.probabilities.values()), atol=1e-6)


# ---- device choice, with onnxruntime's provider list faked ---------------------------------

class FakeSession:
    def __init__(self, model, so=None, providers=None, fail=False, runs_on=None):
        if fail:
            raise RuntimeError("CUDA_PATH is set but CUDA wasn't able to be loaded")
        self._providers = runs_on if runs_on is not None else list(providers)

    def get_providers(self):
        return self._providers


def fake_ort(monkeypatch, available, cuda_runs=True, cuda_raises=False, driver=True):
    """A stand-in onnxruntime (CUDA cannot be made to fail on demand), on a machine with an
    NVIDIA driver unless `driver` is False."""
    import onnxruntime as ort

    from busi.runtime import session as s

    monkeypatch.setattr(s, "nvidia_driver", lambda: driver)

    calls = {"available": 0}

    def avail():
        calls["available"] += 1
        return available

    def make(model, so=None, providers=None):
        if "CUDAExecutionProvider" in providers:
            return FakeSession(model, so, providers, fail=cuda_raises, runs_on=None if cuda_runs else ["CPUExecutionProvider"])
        return FakeSession(model, so, providers)

    monkeypatch.setattr(ort, "get_available_providers", avail)
    monkeypatch.setattr(ort, "InferenceSession", make)
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: None, raising=False)
    return s, calls


def test_device_cuda_works(monkeypatch):
    s, _ = fake_ort(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    notes = []
    sess, prov = s.create_session("m.onnx", "auto", notice=notes.append)
    assert prov == "CUDAExecutionProvider" and not notes


@pytest.mark.parametrize("raises", [False, True])
def test_device_cuda_listed_but_failing_falls_back_once(monkeypatch, raises):
    s, _ = fake_ort(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"], cuda_runs=False, cuda_raises=raises)
    notes = []
    sess, prov = s.create_session("m.onnx", "auto", notice=notes.append)
    assert prov == "CPUExecutionProvider" and len(notes) == 1 and "CUDA provider is listed but cannot run" in notes[0]
    with pytest.raises(DeviceError, match="--device cuda"):
        s.create_session("m.onnx", "cuda", notice=notes.append)


def test_device_cuda_absent_and_cpu_never_probes(monkeypatch):
    s, calls = fake_ort(monkeypatch, ["CPUExecutionProvider"])
    notes = []
    _, prov = s.create_session("m.onnx", "auto", notice=notes.append)
    assert prov == "CPUExecutionProvider" and "no CUDA provider" in notes[0]
    n = calls["available"]
    _, prov = s.create_session("m.onnx", "cpu", notice=notes.append)
    assert prov == "CPUExecutionProvider" and calls["available"] == n and len(notes) == 1


@pytest.mark.parametrize("available", [["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]])
def test_device_auto_without_a_driver_neither_probes_nor_notices(monkeypatch, available):
    s, calls = fake_ort(monkeypatch, available, driver=False)
    notes = []
    sess, prov = s.create_session("m.onnx", "auto", notice=notes.append)
    assert prov == "CPUExecutionProvider" and sess.get_providers() == ["CPUExecutionProvider"] and not notes
    assert calls["available"] == 0  # decided before onnxruntime is asked anything


def test_real_auto_device_keeps_stdout_clean(exported, phantoms):
    img = phantoms / "benign" / "benign (1).png"
    r = infer(img, "--model", exported / "model.onnx", "--roi", "50,60,80,70")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)  # stdout is exactly one JSON line: no CUDA spam in it
    assert rec["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert r.stderr.count("running on CPU") <= 1 and "Failed to load" not in r.stderr
    m = re.search(r"cannot run here \((lib\S+\.so\S*) not found\)(.*)", r.stderr)
    if m:  # onnxruntime-gpu without NVIDIA's libraries (this CI): the notice says what to install
        assert "pip install 'busi[cuda]'" in m.group(2), r.stderr


# ---- the CLI ---------------------------------------------------------------------------------

def test_cli_formats_folder_glob_and_atomic_out(exported, phantoms, tmp_path):
    model = exported / "model.onnx"
    r = infer(phantoms / "benign", "--model", model, "--mask", phantoms, "--format", "csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == PER_CLASS and all(r_["class"] in ("normal", "benign", "malignant") for r_ in rows)
    assert not any("_mask" in r_["path"] for r_ in rows)
    r = infer(str(phantoms / "malignant" / "malignant (1*).png"), "--model", model, "--roi", "40,50,90,90", "-f", "table")
    assert r.returncode == 0 and "malignant (1).png" in r.stdout and "malignant (10).png" in r.stdout
    lines = r.stdout.splitlines()
    rows = lines[next(i for i, ln in enumerate(lines) if ln.startswith("class ")) + 1:]
    recs = [json.loads(ln) for ln in infer(str(phantoms / "malignant" / "malignant (1*).png"), "--model", model,
                                           "--roi", "40,50,90,90").stdout.splitlines()]
    # the table's flag column and its legend say what the JSON records say
    assert [row.split()[3] == "MALIGNANT" for row in rows] == [rec["malignant"] for rec in recs]
    legend = next(ln for ln in lines if ln.startswith("(flag"))
    assert float(legend.split(">= ")[1].split(";")[0]) == pytest.approx(recs[0]["threshold"], rel=1e-2)
    out = tmp_path / "res.jsonl"
    r = infer(phantoms / "normal" / "normal (1).png", "--model", model, "--mask", "none", "--out", out, "--tta")
    assert r.returncode == 0 and r.stdout == "" and json.loads(out.read_text())["tta"] is True
    assert "trained with 'box' masks" in r.stderr  # mode differs from training: said once
    assert [p.name for p in tmp_path.iterdir()] == ["res.jsonl"]


def test_cli_threshold_and_env_model(exported, phantoms):
    img = phantoms / "malignant" / "malignant (2).png"
    r = infer(img, "--roi", "40,50,90,90", "--threshold", "0", env={"BUSI_MODEL": str(exported / "model.onnx")})
    rec = json.loads(r.stdout)
    assert r.returncode == 0 and rec["malignant"] is True and rec["threshold"] == 0.0


def _make_bad_files(tmp, phantoms):
    good = phantoms / "benign" / "benign (1).png"
    grey = cv2.imread(str(good), cv2.IMREAD_GRAYSCALE)
    f = {}
    f["missing"] = tmp / "missing.png"
    f["directory"] = tmp / "adir.png"
    f["directory"].mkdir()
    f["zero"] = tmp / "zero.png"
    f["zero"].write_bytes(b"")
    data = good.read_bytes()
    f["trunc_png"] = tmp / "trunc.png"
    f["trunc_png"].write_bytes(data[: len(data) // 2])
    ok, jpg = cv2.imencode(".jpg", grey)
    f["trunc_jpg"] = tmp / "trunc.jpg"
    f["trunc_jpg"].write_bytes(jpg.tobytes()[: len(jpg) // 2])
    f["text"] = tmp / "text.png"
    f["text"].write_text("just text\n")
    from PIL import Image

    f["cmyk"] = tmp / "cmyk.jpg"
    Image.new("CMYK", (64, 64), (10, 20, 30, 0)).save(f["cmyk"])
    f["tiny"] = tmp / "tiny.png"
    cv2.imwrite(str(f["tiny"]), np.zeros((1, 1), np.uint8))
    f["huge"] = tmp / "huge.png"
    cv2.imwrite(str(f["huge"]), np.zeros((3000, 3000), np.uint8))
    return good, f


def test_bad_inputs_each_one_line_and_the_batch_goes_on(exported, phantoms, tmp_path):
    good, bad = _make_bad_files(tmp_path, phantoms)
    model = exported / "model.onnx"
    expect = {
        "missing": "file not found", "directory": "is a directory", "zero": "empty file",
        "trunc_png": "truncated", "trunc_jpg": "truncated", "text": "not a PNG, JPEG or DICOM",
        "cmyk": "CMYK", "tiny": "only 1x1", "huge": "above the limit",
    }
    args = [good] + [bad[k] for k in expect] + [good]
    r = infer(*args, "--model", model, "--roi", "10,10,50,50", "--max-pixels", "4000000")
    assert r.returncode == 1
    recs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(recs) == len(args) and "class" in recs[0] and "class" in recs[-1]
    for k, rec in zip(expect, recs[1:-1]):
        assert rec["path"] == str(bad[k]) and expect[k] in rec["error"] and str(bad[k]) in rec["error"], (k, rec)
    err_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == len(expect) and "Traceback" not in r.stderr
    # each alone: exit 1, one line
    r = infer(bad["text"], "--model", model)
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_png_modes_that_must_work(exported, phantoms, tmp_path):
    from PIL import Image

    good = phantoms / "benign" / "benign (1).png"
    im = Image.open(good).convert("L")
    im.save(tmp_path / "grey.png")
    im.convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.asarray(im).astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    r = infer(tmp_path, "--model", exported / "model.onnx", "--roi", "60,60,90,90")
    recs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert r.returncode == 0 and len(recs) == 3, r.stderr
    probs = [rec["probabilities"]["malignant"] for rec in recs]
    assert max(probs) - min(probs) < 1e-6  # same pixels whatever the storage


def test_mask_problems(exported, phantoms, tmp_path):
    model = exported / "model.onnx"
    img = phantoms / "malignant" / "malignant (1).png"
    h, w = cv2.imread(str(img)).shape[:2]
    small = tmp_path / "small_mask.png"
    m = cv2.imread(str(phantoms / "malignant" / "malignant (1)_mask.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(small), cv2.resize(m, (w // 2, h // 2), interpolation=cv2.INTER_NEAREST))
    r = infer(img, "--model", model, "--mask", small)
    assert r.returncode == 0 and "resized (nearest)" in r.stderr
    empty = tmp_path / "empty_mask.png"
    cv2.imwrite(str(empty), np.zeros((h, w), np.uint8))
    r = infer(img, "--model", model, "--mask", empty)  # as a normal image's: the trained placeholder, said in a note
    rec = json.loads(r.stdout)
    assert r.returncode == 0 and "class" in rec and rec["lesion_box"] is None
    assert any(f"mask {empty} is empty" in n for n in rec["notes"]), rec["notes"]
    for roi, problem in (("0,0,0,10", "zero or negative size"), (f"{w - 5},10,50,50", "outside"), ("1,2,3", "four numbers")):
        r = infer(img, "--model", model, "--roi", roi)
        assert r.returncode in (1, 2) and problem in r.stderr and "Traceback" not in r.stderr, (roi, r.stderr)


def test_bad_models(exported, phantoms, tmp_path):
    img = phantoms / "benign" / "benign (1).png"
    src = exported / "model.onnx"

    def check(model, problem):
        r = infer(img, "--model", model, "--roi", "10,10,50,50")
        errs = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and len(errs) == 1 and problem in errs[0] and str(model) in errs[0], r.stderr[-600:]
        assert "Traceback" not in r.stderr
        with pytest.raises(ModelError):
            Predictor(model, device="cpu")

    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(src.read_bytes()[:100_000])
    check(trunc, "cannot load ONNX model")
    tampered = tmp_path / "tampered.onnx"
    data = bytearray(src.read_bytes())
    data[-100] ^= 0xFF
    tampered.write_bytes(bytes(data))
    shutil.copy(exported / "model.onnx.sha256", tmp_path / "tampered.onnx.sha256")
    check(tampered, "sha256 mismatch")
    m = onnx.load(str(src))
    del m.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(m, str(bare))
    check(bare, "not a busi model: metadata lacks busi.classes")
    m = onnx.load(str(src))
    m.graph.input[1].name = "roi"
    for node in m.graph.node:
        node.input[:] = ["roi" if x == "mask" else x for x in node.input]
    other = tmp_path / "other.onnx"
    onnx.save(m, str(other))
    check(other, "expected inputs image, mask")
    check(tmp_path / "none.onnx", "model file not found")


def test_runtime_never_imports_tensorflow(exported, phantoms):
    code = (
        "import sys\n"
        "import busi.runtime\n"
        "from busi.runtime.cli import main\n"
        f"sys.argv = ['busi-infer', {str(phantoms / 'benign')!r}, '--model', {str(exported / 'model.onnx')!r}, '--mask', {str(phantoms)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'sklearn', 'tf2onnx'))\n"
        "print('LEAK', bad, code, file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "LEAK [] 0" in r.stderr, r.stderr[-1000:]
    assert len(r.stdout.splitlines()) == PER_CLASS


def test_base_install_in_a_fresh_venv_runs_busi_infer(exported, phantoms, tmp_path):
    """The runtime alone, as a scanner workstation installs it: no extras, no TensorFlow.

    Offline: busi is built into a wheel and installed with --no-index; its base dependencies
    are copied, file by file from their RECORDs, out of this environment. `pip check` then
    proves that they satisfy every requirement of the base install, and that nothing of the
    training side is among them."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    closure = bench_module().dist_closure()
    names = sorted(d.metadata["Name"].lower() for d in closure)
    assert not {"tensorflow", "keras", "tf2onnx", "scikit-learn", "onnx"} & set(names), names
    for dist in closure:
        for f in dist.files or []:
            src = Path(dist.locate_file(f)).resolve()
            rel = Path(str(f))
            if rel.parts[0] == ".." or not src.is_file():
                continue  # console scripts outside site-packages: not needed here
            dst = site / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    wheels, src = tmp_path / "wheels", tmp_path / "src"  # build from a copy: no build/ left in the checkout
    src.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, src / part)
    for part in ("busi", "runtime", "train", "export", "node", "serve"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", *map(str, wheels.glob("busi-*.whl"))],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([str(py), "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for mod in ("tensorflow", "keras", "sklearn"):
        assert subprocess.run([str(py), "-c", f"import {mod}"], capture_output=True).returncode != 0, mod
    r = subprocess.run(
        [str(venv / "bin" / "busi-infer"), str(phantoms / "malignant" / "malignant (1).png"), "--model",
         str(exported / "model.onnx"), "--mask", str(phantoms / "malignant")],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["class"] in ("normal", "benign", "malignant")
    # busi-node needs its extra: one line that says which, not a traceback
    r = subprocess.run([str(venv / "bin" / "busi-node"), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "pip install 'busi[node]'" in r.stderr and "Traceback" not in r.stderr


def test_quiet_verbose_and_the_exit_code_of_a_device_that_cannot_run(exported, phantoms):
    """-q leaves only the results (no notices, no summary); the default shows the summary
    through the busi log; --device cuda without a working CUDA is DeviceError, exit 1."""
    img = phantoms / "benign" / "benign (1).png"
    base = [img, "--model", exported / "model.onnx", "--roi", "10,10,30,20"]
    loud = infer(*base, "-v")
    quiet = infer(*base, "-q")
    assert loud.returncode == quiet.returncode == 0
    assert quiet.stderr == "" and json.loads(quiet.stdout) == json.loads(loud.stdout)
    assert "busi: 1/1 images classified" in loud.stderr
    r = infer(*base, "--device", "cuda")
    if r.returncode == 0:
        pytest.skip("CUDA runs on this machine")
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 1 and len(errs) == 1 and "--device cuda" in errs[0] and r.stdout == ""
