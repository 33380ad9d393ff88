"""--device openvino: the same ONNX file run by OpenVINO (busi[openvino]), same outputs as ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import SAMPLE, cli

from busi.runtime import Predictor


def _images(phantoms):
    own = [phantoms / c / f"{c} ({i}).png" for c in ("benign", "malignant", "normal") for i in (1, 2)]
    return own + sorted(p for p in SAMPLE.glob("*/*.png") if "_mask" not in p.name)


def _run(pred, images):
    res = list(pred.iter_predict(images, mask="none", batch_size=8, explain=True))
    assert all(hasattr(r, "probabilities") for r in res), [getattr(r, "error", None) for r in res]
    p = np.array([[r.probabilities[c] for c in pred.info.classes] for r in res])
    return p, res


def test_openvino_matches_onnx_runtime(exported, phantoms):
    """FP32: probabilities within the export's parity tolerance of ONNX Runtime's, Grad-CAM and
    the out-of-distribution score alike; INT8: the same class for every image. busi-infer
    --device openvino says which runtime ran."""
    pytest.importorskip("openvino")
    images = _images(phantoms)
    for name in ("model.onnx", "model.int8.onnx"):
        path = exported / name
        if not path.is_file():
            continue
        ort_p, ort_r = _run(Predictor(path, device="cpu", notice=lambda m: None), images)
        ov = Predictor(path, device="openvino", notice=lambda m: None)
        assert ov.provider == "OpenVINO CPU"
        ov_p, ov_r = _run(ov, images)
        assert (ov_p.argmax(1) == ort_p.argmax(1)).all(), name
        if name == "model.onnx":
            assert np.abs(ov_p - ort_p).max() <= ov.info.parity.tolerance
            for a, b in zip(ort_r, ov_r):
                assert np.abs(a.extras["cam"] - b.extras["cam"]).max() <= 1e-4 * max(1.0, np.abs(a.extras["cam"]).max())
                if a.ood_score is not None:
                    assert abs(a.ood_score - b.ood_score) <= 1e-4 * abs(a.ood_score)
                    assert a.out_of_distribution == b.out_of_distribution
    r = cli("busi-infer", images[0], "--model", exported / "model.onnx", "--mask", "none", "--device", "openvino")
    assert json.loads(r.stdout)["provider"] == "OpenVINO CPU"


def test_device_openvino_without_the_extra_is_a_usage_error(exported, phantoms, tmp_path):
    """Without OpenVINO installed: one line naming the extra, exit 2, nothing on stdout."""
    shim = tmp_path / "shim" / "openvino"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'openvino'\")\n")
    img = _images(phantoms)[0]
    r = cli("busi-infer", img, "--model", exported / "model.onnx", "--mask", "none", "--device", "openvino",
            check=False, env={"PYTHONPATH": str(shim.parent)})
    errs = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert len(errs) == 1 and "pip install 'busi[openvino]'" in errs[0] and "Traceback" not in r.stderr, r.stderr
