"""`busi-export --triton REPO`: a Triton model repository, checked with Triton's own ModelConfig
protobuf (tests/vendor) against the ONNX files it carries."""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from helpers import ROOT, cli

_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", ROOT / "tests" / "vendor" / "triton_model_config_pb2.py")
mc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mc)
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: mc.TYPE_FP32}


def parse(path) -> "mc.ModelConfig":
    return text_format.Parse(path.read_text(), mc.ModelConfig())  # unknown or misspelled fields raise


def test_the_repository_is_what_triton_reads_and_matches_the_onnx_files(exported, tmp_path):
    repo = tmp_path / "repo"
    cli("busi-export", exported, "--triton", repo, "--triton-only", "--triton-max-batch", 16, "--tensorrt")
    names = {"busi_classifier": exported / "model.onnx", "busi_segmenter": exported / "segmenter.onnx"}
    assert sorted(p.name for p in repo.iterdir()) == sorted(n for n, f in names.items() if f.is_file())
    for name, src in names.items():
        if not src.is_file():
            continue
        served = repo / name / "1" / "model.onnx"
        assert served.read_bytes() == src.read_bytes()
        model = onnx.load(str(served))
        init = {i.name for i in model.graph.initializer}
        gpu, cpu = parse(repo / name / "config.pbtxt"), parse(repo / name / "configs" / "cpu.pbtxt")
        for cfg, kind in ((gpu, mc.ModelInstanceGroup.KIND_GPU), (cpu, mc.ModelInstanceGroup.KIND_CPU)):
            assert cfg.name == name and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
            assert [g.kind for g in cfg.instance_group] == [kind]
            assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16] and cfg.dynamic_batching.max_queue_delay_microseconds > 0
            for got, want in ((cfg.input, [i for i in model.graph.input if i.name not in init]), (cfg.output, model.graph.output)):
                assert [t.name for t in got] == [t.name for t in want]
                for t, w in zip(got, want):
                    shape = [d.dim_value or -1 for d in w.type.tensor_type.shape.dim]
                    assert list(t.dims) == shape[1:] and t.data_type == ONNX_TO_TRITON[w.type.tensor_type.elem_type]
            params = {k: v.string_value for k, v in cfg.parameters.items()}
            meta = {p.key: p.value for p in model.metadata_props if p.key.startswith("busi.")}
            assert params == {**meta, "busi.sha256": hashlib.sha256(served.read_bytes()).hexdigest()}
        accel = gpu.optimization.execution_accelerators.gpu_execution_accelerator
        assert [a.name for a in accel] == ["tensorrt"] and accel[0].parameters["precision_mode"] == "FP16"
        assert not cpu.optimization.execution_accelerators.gpu_execution_accelerator
    # dynamic batching is safe: batch 1 and batch N give the same outputs per image
    sess = ort.InferenceSession(str(repo / "busi_classifier" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    S = sess.get_inputs()[0].shape[1]
    rng = np.random.default_rng(0)
    x = {"image": rng.uniform(0, 255, (5, S, S, 3)).astype(np.float32), "mask": (rng.random((5, S, S, 1)) > 0.5).astype(np.float32)}
    together = sess.run(None, x)
    alone = [sess.run(None, {k: v[i:i + 1] for k, v in x.items()}) for i in range(5)]
    for j, out in enumerate(together):
        np.testing.assert_allclose(out, np.concatenate([a[j] for a in alone]), rtol=1e-4, atol=1e-5)


def test_a_misspelled_field_is_what_the_check_would_catch(tmp_path):
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nmax_batch: 8\n', mc.ModelConfig())


def test_triton_only_needs_an_export(tmp_path):
    r = cli("busi-export", tmp_path, "--triton", tmp_path / "repo", "--triton-only", check=False)
    assert r.returncode == 2 and "not found" in r.stderr
    r = cli("busi-export", tmp_path, "--triton-only", check=False)
    assert r.returncode == 2 and "--triton-only needs --triton" in r.stderr
