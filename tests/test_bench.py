"""`bench/run.py --quick` (what `make bench` runs): a smoke test that the table and bench.json are produced and
well-formed. Speed is measured by `make bench`, never asserted here."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from helpers import bench

from busi.export.quantize import FLOAT_CONVS

ROWS = ["peak", "keras vs ort, batch 1", "keras vs ort, batch 8", "fp32 vs peak, batch 8", "end to end", "folder", "cold start", "memory",
        "training input", "node", "serve, 1 clients", "serve, 4 clients", "serve, 16 clients", "serve batching",
        "serve memory", "sizes"]


def test_bench_quick_writes_a_table_and_json(exported, tmp_path):
    out = tmp_path / "bench.json"
    r = bench(exported, "--quick", "--size", "0", "--out", out)
    res = json.loads(out.read_text())
    assert res["quick"] is True and res["input_size"] == 64
    assert res["machine"]["cpu"] and res["machine"]["cores"] >= 1 and res["machine"]["onnxruntime"]
    names = [row["row"] for row in res["rows"]]
    for name in ROWS:
        assert name in names, names
    assert any(n.startswith("int8 vs fp32") for n in names)  # timed, or skipped with a reason
    m = res["machine"]
    assert set(m["flags"]) >= {"avx512_vnni", "amx_int8", "avx512_bf16"} and m["fp32_gemm_gflops"] > 0 and m["u8s8_gemm_gops"] > 0
    assert m["model_gflop_per_image"] > 0
    by = {row["row"]: row for row in res["rows"]}
    assert by["fp32 vs peak, batch 8"]["ratio"] == pytest.approx(
        by["fp32 vs peak, batch 8"]["b"]["gflops_per_s"] / m["fp32_gemm_gflops"])
    for b in (1, 8):
        name = f"int8 vs fp32, batch {b}"
        if name in by:
            assert 0 < by[name]["b"]["fraction_of_u8s8_peak"]
            # the model's own convolutions as bare GEMMs: the speed-up the kernels allow, and
            # how close the INT8 session comes to its integer GEMMs
            limit = by[f"int8 limit, batch {b}"]
            assert limit["target"] is None and limit["ratio"] == pytest.approx(limit["a"]["ms"] / limit["b"]["ms"])
            assert by[name]["b"]["conv_gemms_over_int8"] == pytest.approx(limit["b"]["ms"] / by[name]["b"]["median_ms"])
            # the bound is the INT8 file's: convolutions export kept float count at FP32 time
            layout = json.loads((exported / "card.json").read_text())["export"]["int8"]["layout"]
            assert limit["b"]["float_convolutions"] == (0 if layout == "all-int8" else FLOAT_CONVS)
            # target: the session reaches 0.7 of the speed-up its kernels allow (issue 31)
            assert by[name]["of_limit"] == pytest.approx(by[name]["ratio"] / limit["ratio"])
            assert by[name]["met"] == (by[name]["ratio"] >= 0.7 * limit["ratio"])
    e2e, folder = by["end to end"], by["folder"]
    assert e2e["floor_ratio"] == pytest.approx((e2e["a"]["median_ms"] + e2e["b"]["prepare_ms"]) / e2e["a"]["median_ms"])
    assert 0 < folder["ceiling_ratio"] <= 1 and folder["b"]["prepare_ms"] == e2e["b"]["prepare_ms"]
    for c in (1, 4, 16):  # busi-serve under load: throughput and latency percentiles, both sides
        srv = by[f"serve, {c} clients"]
        assert srv["ratio"] == pytest.approx(srv["b"]["images_per_s"] / srv["a"]["images_per_s"])
        assert all(0 < side["p50_ms"] <= side["p99_ms"] for side in (srv["a"], srv["b"]))
    node = by["node"]  # the node against busi-infer --dicom-out: throughput and peak RSS of both
    assert node["ratio"] == pytest.approx(statistics.median(node["ratios"])) and len(node["ratios"]) == node["b"]["n"]
    assert node["ratios"] == pytest.approx([node["b"]["images_per_s"] / node["a"]["images_per_s"]])  # --quick: 1 pair
    assert node["a"]["peak_mb"] > 50 and node["b"]["peak_mb"] > 50 and node["met"] == (
        node["ratio"] >= 0.95 and node["b"]["peak_mb"] <= node["a"]["peak_mb"] + 100)
    assert 0 < node["sender_cpu_s"] and node["b"]["images_per_s"] == pytest.approx(40 / node["node_s"])  # --quick: 40
    batching = by["serve batching"]
    assert batching["b"] == {k: v for k, v in by["serve, 16 clients"]["b"].items()} | {"label": "max batch 8"}
    assert by["serve memory"]["a"]["peak_mb"] > 50
    for row in res["rows"]:
        if "skipped" in row:
            assert row["skipped"]
            continue
        if row["target"] is None:  # a context row: figures, no target to meet
            assert row["met"] is None
        else:
            assert isinstance(row["met"], bool) and row["target"]
        if row["ratio"] is not None:
            assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        numbers = [v for side in ("a", "b") for k, v in row[side].items() if k not in ("label", "n")]
        assert numbers and all(isinstance(v, (int, float)) and v >= 0 for v in numbers if v is not None)
    table = [ln for ln in r.stdout.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| row |") and len(table) == 1 + len(res["rows"])
    assert any(ln.startswith("| end to end |") and "(floor " in ln for ln in table)
    assert not [p for p in tmp_path.iterdir() if p.name != "bench.json"]
