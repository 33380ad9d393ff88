"""`make bench` (`python bench/run.py MODEL_DIR`): speed, memory and size, side by side in one
run, as ratios.

Not part of the runtime package a scanner installs: it lives beside the project, needs the
`[train]` extra (it times Keras too) and a model folder from `make demo`. Every figure: median and spread (min, max)
over N runs after warm-up. Writes a Markdown table to stdout and `bench.json`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from busi.runtime.atomic import atomic_write_text
from busi.runtime.card import ModelCard
from busi.runtime.contract import InputSpec
from busi.runtime.errors import Int8GateRefused, UsageError, run_cli
from busi.runtime.log import get as get_logger
from busi.runtime.log import setup as log_setup
from busi.runtime.model_dir import ModelDir

_LOG = get_logger("busi.bench")

#: the INT8 session's speed-up over FP32 must reach this share of the `int8 limit` row's (the
#: model's convolutions as bare GEMMs, in the INT8 file's layout): issue 31's target
INT8_OF_LIMIT = 0.7

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def stats(ts: list[float]) -> dict:
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "n": len(ts)}


def throughput(ips: list[float]) -> dict:
    """Images per second over repeated runs: median and spread."""
    return {"images_per_s": statistics.median(ips), "min": min(ips), "max": max(ips), "n": len(ips)}


def timeit(fn, reps: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return stats(ts)


def paired(fn_a, fn_b, reps: int, warmup: int = 2) -> tuple[dict, dict, float]:
    """Time two functions alternately (a, b, a, b, ...) after warm-up: drift of a shared,
    noisy machine hits both alike. Returns both timings and the median of the per-pair
    ratios a/b."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    ta, tb = [], []
    for _ in range(reps):
        for fn, ts in ((fn_a, ta), (fn_b, tb)):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return stats(ta), stats(tb), statistics.median(a / b for a, b in zip(ta, tb))


def per_image_ms(t: dict, batch: int) -> dict:
    return {k.replace("_s", "_ms"): v * 1000 / batch for k, v in t.items() if k.endswith("_s")} | {"n": t["n"]}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dist_closure(extras: tuple[str, ...] = ()) -> list:
    """The installed distributions that busi needs (base, or with `extras`), recursively,
    busi itself excluded: what `pip install busi` or `busi[train]` brings."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    seen: set[str] = set()
    out = []
    stack = [("busi", tuple(extras))]
    while stack:
        name, ex = stack.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        if key != "busi":
            out.append(dist)
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (ex or ("",))):
                stack.append((req.name, tuple(req.extras)))
    return out


def dist_closure_size(extras: tuple[str, ...]) -> int:
    """Installed bytes of busi's dependency closure (base or with extras), from this venv."""
    return sum((f.size or 0) for d in dist_closure(extras) for f in (d.files or []) if f.size)


def peak_rss_mb(cmd: list[str], env=None, stderr: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a command run as a fresh process (its stderr into the
    file `stderr` when given)."""
    err = f"open({str(stderr)!r}, 'w')" if stderr is not None else "subprocess.DEVNULL"
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        f"r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr={err})\n"
        "dt = time.perf_counter() - t\n"
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r.returncode)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=env).stdout.split()
    if len(out) < 3 or out[2] != "0":
        raise RuntimeError(f"benchmark command failed: {' '.join(cmd)}")
    return float(out[0]), float(out[1])


def row(name, what, a_label, a, b_label, b, ratio, target, ok, unit="ms/image", extra=None):
    return {"row": name, "what": what, "a": {"label": a_label, **a}, "b": {"label": b_label, **b},
            "ratio": ratio, "target": target, "met": ok, "unit": unit, **(extra or {})}


def model_at_size(model_dir: Path, size: int | None, work: Path) -> tuple[Path, list[str]]:
    """MODEL_DIR itself when its classifier takes `size` px, else a copy at `size` px with the
    very same weights (conv and head weights do not depend on the input size), exported by
    the project's own exporter (parity gate, gated INT8). Speed depends on the input size,
    not on the weights: this is how the demo model (trained small) is timed at 224 px."""
    src_dir, dst_dir = ModelDir(model_dir), ModelDir(work)
    card = src_dir.read_card()
    trained = card.info.input.size
    if not size or size == trained:
        return model_dir, []
    from busi.export.convert import export
    from busi.train.backend import keras
    from busi.train.model import build_classifier

    log(f"bench: rebuilding {src_dir.keras} at {size} px (same weights) and exporting it ...")
    src = keras.models.load_model(src_dir.keras, compile=False)
    dst = build_classifier(size, weights="none", freeze=False)
    dst.set_weights(src.get_weights())
    work.mkdir(parents=True, exist_ok=True)
    dst.save(dst_dir.keras)
    replace(card, info=replace(card.info, input=InputSpec(size))).write(dst_dir.card)
    shutil.copy(src_dir.manifest, dst_dir.manifest)
    notes = [f"model: {model_dir.name}'s weights rebuilt at {size} px (trained at {trained} px)"]
    try:
        export(work, int8=True)
    except Int8GateRefused as e:
        notes.append(f"int8 at {size} px refused by its gate: {e}")
    return work, notes


def log(msg: str) -> None:
    _LOG.info(msg)


def run_bench(model_dir: Path, quick: bool, size: int | None = None) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import onnxruntime as ort

    from busi.runtime import Predictor
    from busi.runtime.contract import OUTPUT_NAME
    from busi.runtime.session import session_options

    reps = 3 if quick else 20
    work = Path(tempfile.mkdtemp(prefix="busi-bench-model-"))
    source_dir = model_dir
    model_dir, notes = model_at_size(model_dir, size, work)
    md = ModelDir(model_dir)
    fp32_path, int8_path = md.onnx, md.int8
    card = md.read_card()
    S = card.info.input.size
    rng = np.random.default_rng(0)
    x = {b: {"image": rng.uniform(0, 255, (b, S, S, 3)).astype(np.float32), "mask": np.ones((b, S, S, 1), np.float32)} for b in (1, 8)}
    sess = ort.InferenceSession(str(fp32_path), session_options(), providers=["CPUExecutionProvider"])
    rows = []

    # 1-2: Keras vs ORT
    from busi.train import model as _model  # noqa: F401  (registers the custom layer)
    from busi.train.backend import keras

    km = keras.models.load_model(md.keras, compile=False)
    run = {b: (lambda b=b: sess.run([OUTPUT_NAME], x[b])) for b in (1, 8)}
    # 0: what this CPU can do (the same thread count as the sessions below)
    from peak import conv_gemm_bound, cpu_flags, float_convolutions, gemm_peak, model_gflop

    peak = gemm_peak(1024 if quick else 2048, 3 if quick else 7)
    gflop = model_gflop(fp32_path)
    rows.append(row("peak", f"ONNX Runtime GEMM {peak['n']}^3 on this CPU: FP32 MatMul vs u8s8 MatMulInteger "
                    f"(the model: {gflop:.2f} GFLOP per image)", "fp32 MatMul", {"gflops_per_s": peak["fp32_gflops"]},
                    "u8s8 MatMulInteger", {"gops_per_s": peak["u8s8_gops"]}, peak["u8s8_gops"] / peak["fp32_gflops"],
                    None, None, unit="GFLOP/s"))

    def rate(ms_per_image: float) -> float:
        return gflop / (ms_per_image / 1000)

    ort_ms = {}
    for b in (1, 8):
        k, o, r = paired(lambda b=b: km.predict_on_batch(x[b]), run[b], reps)
        k, o = per_image_ms(k, b), per_image_ms(o, b)
        ort_ms[b] = o["median_ms"]
        # ORT must be no slower than Keras; how far it is from the CPU's limit is the next row
        rows.append(row(f"keras vs ort, batch {b}", "Keras predict_on_batch vs ORT FP32 session.run (timed alternately)",
                        "keras", k, "ort fp32", {**o, "gflops_per_s": rate(o["median_ms"])}, r, ">= 1.0x (no slower)",
                        r >= 1.0))
    frac = rate(ort_ms[8]) / peak["fp32_gflops"]
    rows.append(row("fp32 vs peak, batch 8", "ORT FP32 on the model vs ORT's own FP32 GEMM on this CPU", "fp32 GEMM peak",
                    {"gflops_per_s": peak["fp32_gflops"]}, "ort fp32 model", {"gflops_per_s": rate(ort_ms[8])}, frac,
                    ">= 0.85", frac >= 0.85, unit="GFLOP/s"))

    # 3: INT8 vs FP32
    if int8_path.is_file():
        s8 = ort.InferenceSession(str(int8_path), session_options(), providers=["CPUExecutionProvider"])
        agree = (card.export or {}).get("int8", {}).get("argmax_agreement")
        layout = float_convolutions(int8_path)  # the convolutions this file keeps float
        for b in (1, 8):
            # what the CPU's GEMM kernels allow on this model's own convolution shapes, in this file's layout
            bound = conv_gemm_bound(fp32_path, b, 2 if quick else 5, float_convs=layout)
            limit = bound["fp32_ms_per_image"] / bound["u8s8_ms_per_image"]
            kept = f", the {bound['float_convolutions']} the INT8 file keeps float at FP32 time" if any(layout) else ""
            rows.append(row(f"int8 limit, batch {b}", f"the model's {bound['convolutions']} convolutions as bare ORT GEMMs "
                            f"(im2col shapes, no im2col/requantization): FP32 MatMul vs u8s8 MatMulInteger{kept}",
                            "fp32 conv GEMMs", {"ms": bound["fp32_ms_per_image"]},
                            "u8s8 conv GEMMs", {"ms": bound["u8s8_ms_per_image"], "float_convolutions": bound["float_convolutions"]},
                            limit, None, None))
            o, q, r = paired(run[b], lambda b=b: s8.run([OUTPUT_NAME], x[b]), reps)
            q = per_image_ms(q, b)
            # the INT8 session against what its kernels allow on these shapes (any CPU, any layout);
            # a fixed multiple (once 2.8x and 3.2x, set on an all-INT8 file on a Xeon with AMX) is not
            # a target on a CPU whose FP32 is much faster, nor for a file that keeps layers float
            tgt = INT8_OF_LIMIT * limit
            rows.append(row(f"int8 vs fp32, batch {b}", "ORT INT8 (QDQ) vs FP32 (timed alternately)", "fp32", per_image_ms(o, b),
                            "int8", {**q, "gops_per_s": rate(q["median_ms"]),
                                     "fraction_of_u8s8_peak": rate(q["median_ms"]) / peak["u8s8_gops"],
                                     "conv_gemms_over_int8": bound["u8s8_ms_per_image"] / q["median_ms"]},
                            r, f">= {tgt:.2f}x ({INT8_OF_LIMIT} of the limit)", r >= tgt,
                            extra={"int8_argmax_agreement": agree, "of_limit": r / limit}))
    else:
        rows.append({"row": "int8 vs fp32", "skipped": "no model.int8.onnx (export --int8 refused or not run)"})

    # 3b: OpenVINO (busi[openvino]) on the same files, same threads
    rows.extend(openvino_rows(md, fp32_path, int8_path, x, reps))

    # 4: end to end on a 564x474 PNG
    import cv2

    tmp = Path(tempfile.mkdtemp(prefix="busi-bench-"))
    from busi.train.phantoms import make_phantom

    grey, _ = make_phantom(np.random.default_rng(1), "benign")
    img = cv2.resize(grey, (564, 474), interpolation=cv2.INTER_AREA)
    one = tmp / "case.png"
    cv2.imwrite(str(one), img)
    pred = Predictor(fp32_path, device="cpu", notice=lambda m: None)
    box = (200, 150, 120, 90)
    roi = ["--roi", ",".join(map(str, box)), "--device", "cpu"]
    o, e2e, inv = paired(run[1], lambda: pred.predict(one, box), reps)
    r = 1 / inv
    # the work predict adds before session.run, alone: read, decode, resize, mask (one core).
    # One image cannot overlap it with its own inference, so (run + prepare) / run is the
    # ratio's floor; in a folder it overlaps, but on all cores the session is using.
    prep = per_image_ms(timeit(lambda: pred.prepare(one, box), reps), 1)
    o1 = per_image_ms(o, 1)
    rows.append(row("end to end", "Predictor.predict (decode, resize, mask, run) vs bare session.run, batch 1 (timed alternately)",
                    "session.run", o1, "predict", {**per_image_ms(e2e, 1), "prepare_ms": prep["median_ms"]}, r, "<= 1.10x",
                    r <= 1.10, extra={"floor_ratio": (o1["median_ms"] + prep["median_ms"]) / o1["median_ms"]}))

    # 5: folder of 64 images through busi-infer vs bare session.run throughput
    n_folder = 16 if quick else 64
    folder = tmp / "folder"
    folder.mkdir()
    for i in range(n_folder):
        g, _ = make_phantom(np.random.default_rng(100 + i), "malignant")
        cv2.imwrite(str(folder / f"case ({i}).png"), cv2.resize(g, (564, 474), interpolation=cv2.INTER_AREA))
    infer = str(Path(sys.executable).parent / "busi-infer")
    cmd = [infer, str(folder), "--model", str(fp32_path), *roi, "--batch-size", "8", "--format", "csv"]
    runs = []
    for _ in range(1 if quick else 3):
        # bare throughput right before each busi-infer run, on the same number of images
        t = time.perf_counter()
        for _ in range(max(1, n_folder // 8)):
            run[8]()
        bare = 8 * max(1, n_folder // 8) / (time.perf_counter() - t)
        t = time.perf_counter()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
        wall = time.perf_counter() - t
        # busi-infer's own clock: from its session being ready to the last record
        m = re.search(r"(\d+)/(\d+) images classified in ([\d.]+)s", r.stderr)
        if not m or int(m.group(1)) != n_folder:
            raise RuntimeError(f"busi-infer did not classify the {n_folder} bench images: {r.stderr[-300:]}")
        runs.append((n_folder / float(m.group(3)), n_folder / wall, bare))
    ips = [a for a, _, _ in runs]
    cli_ips = {**throughput(ips), "with_process_start_images_per_s": statistics.median(b for _, b, _ in runs)}
    bare_ips = statistics.median(c for _, _, c in runs)
    r = statistics.median(a / c for a, _, c in runs)
    # the session keeps every core busy, so each image's prepare time comes off them: at best
    # busi-infer runs at run / (run + prepare / cores) of the bare throughput
    run8_ms, cores = 1000 / bare_ips, os.cpu_count() or 1
    rows.append(row("folder", f"busi-infer on {n_folder} PNGs 564x474 (decode overlapped with batch-8 inference; its own clock, "
                    "process start in the cold-start row) vs bare session.run batch 8 just before it", "session.run",
                    {"images_per_s": bare_ips}, "busi-infer", {**cli_ips, "prepare_ms": prep["median_ms"]}, r, ">= 0.95x",
                    r >= 0.95, unit="images/s",
                    extra={"ceiling_ratio": run8_ms / (run8_ms + prep["median_ms"] / cores)}))

    # 6-7: cold start and memory
    cold = [peak_rss_mb([infer, str(one), "--model", str(fp32_path), *roi]) for _ in range(1 if quick else 3)]
    tf_cold = [peak_rss_mb([sys.executable, "-c", "import tensorflow"]) for _ in range(1 if quick else 3)]
    c_wall = statistics.median(c[0] for c in cold)
    t_wall = statistics.median(c[0] for c in tf_cold)
    rows.append(row("cold start", "busi-infer one.png as a new process vs python -c 'import tensorflow'", "import tensorflow",
                    {"median_s": t_wall}, "busi-infer", {"median_s": c_wall}, c_wall / t_wall, "<= 0.5x", c_wall / t_wall <= 0.5, unit="s"))
    c_rss = max(c[1] for c in cold)
    t_rss = max(c[1] for c in tf_cold)
    extra = {}
    if int8_path.is_file():  # for the record: the same run with the INT8 file
        extra["int8_peak_mb"] = peak_rss_mb([infer, str(one), "--model", str(int8_path), *roi])[1]
    rows.append(row("memory", "peak RSS: busi-infer one.png (FP32 model); import tensorflow", "import tensorflow", {"peak_mb": t_rss},
                    "busi-infer", {"peak_mb": c_rss, **extra}, c_rss / t_rss, "busi-infer <= 400 MB", c_rss <= 400, unit="MB"))

    # 8: training input pipeline vs in-memory tensors; the frozen recipe's step, float32 vs bfloat16
    rows.append(training_input_row(card, model_dir, quick))
    rows.append(training_step_row(quick, size=64 if quick else 224, batch=8 if quick else 32))  # quick: a smoke test

    # 8b: busi-node throughput vs busi-infer on the same DICOM files
    rows.append(node_row(fp32_path, tmp, quick))

    # 8c: busi-serve under load, dynamic batching, memory
    rows.extend(serve_rows(fp32_path, one, box, tmp, quick))

    # 9: sizes
    base = dist_closure_size(())
    full = dist_closure_size(("train",))
    f32, i8 = fp32_path.stat().st_size, int8_path.stat().st_size if int8_path.is_file() else None
    rows.append(row("sizes", "model files; installed size of base (runtime) vs [train] dependencies", "fp32 / [train]",
                    {"model_mb": f32 / 1e6, "install_mb": full / 1e6}, "int8 / base", {"model_mb": (i8 or 0) / 1e6, "install_mb": base / 1e6},
                    (i8 / f32) if i8 else None, "INT8 <= 0.3x", bool(i8 and i8 / f32 <= 0.3), unit="MB",
                    extra={"install_ratio": base / full}))
    import onnxruntime

    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "model": str(source_dir),
        "notes": notes,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": {
            "cpu": cpu_model(), "cores": os.cpu_count(), "provider": "CPUExecutionProvider", "flags": cpu_flags(),
            "fp32_gemm_gflops": peak["fp32_gflops"], "u8s8_gemm_gops": peak["u8s8_gops"], "model_gflop_per_image": gflop,
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "tensorflow": __import__("tensorflow").__version__, "numpy": np.__version__,
        },
        "input_size": S,
        "rows": rows,
    }


def heldout(md: ModelDir, limit: int | None = None):
    """The model folder's held-out (test) split, decoded, with the masks of its trained source."""
    from types import SimpleNamespace

    from busi.export.quantize import split_arrays

    card = md.read_card()
    arr, masks = split_arrays(SimpleNamespace(dir=md, card=card, size=card.info.input.size), "test")
    return arr.images[:limit].astype(np.float32), masks[:limit]


def openvino_rows(md: ModelDir, fp32_path: Path, int8_path: Path, x: dict, reps: int) -> list[dict]:
    """OpenVINO vs ONNX Runtime on the same ONNX files (FP32 and the INT8 QDQ file), the same
    intra-op threads (the core count), batch 1 and 8, timed alternately; and argmax agreement
    of the two runtimes on the held-out split. Context rows: they decide whether OpenVINO is
    worth offering on this CPU."""
    from busi.runtime.openvino_session import INSTALL, OpenVINOSession, available

    if not available():
        return [{"row": "openvino", "skipped": f"openvino not installed ({INSTALL})"}]
    import onnxruntime as ort

    from busi.runtime.contract import OUTPUT_NAME
    from busi.runtime.session import session_options

    threads = os.cpu_count() or 1
    try:
        images, masks = heldout(md)
    except Exception as e:  # no data at the card's root (a copied model folder): speed rows only
        images, masks, why = None, None, str(e)[:120]
    rows = []
    for kind, path in (("fp32", fp32_path), ("int8", int8_path)):
        if not path.is_file():
            continue
        o = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        v = OpenVINOSession(str(path), threads)
        agree = None
        if images is not None:
            po = np.concatenate([o.run([OUTPUT_NAME], {"image": images[i:i + 8], "mask": masks[i:i + 8]})[0]
                                 for i in range(0, len(images), 8)])
            pv = np.concatenate([v.run([OUTPUT_NAME], {"image": images[i:i + 8], "mask": masks[i:i + 8]})[0]
                                 for i in range(0, len(images), 8)])
            agree = {"argmax_agreement": float((po.argmax(1) == pv.argmax(1)).mean()),
                     "max_abs_diff": float(np.abs(po - pv).max()), "heldout_images": len(images)}
        for b in (1, 8):
            a, c, r = paired(lambda o=o, b=b: o.run([OUTPUT_NAME], x[b]), lambda v=v, b=b: v.run([OUTPUT_NAME], x[b]), reps)
            a, c = per_image_ms(a, b), per_image_ms(c, b)
            rows.append(row(f"openvino {kind}, batch {b}", f"OpenVINO {kind.upper()} vs ONNX Runtime on the same file, "
                            f"{threads} threads (timed alternately)" + ("" if agree else f"; no held-out data ({why})"),
                            f"ort {kind}", {**a, "images_per_s": 1000 / a["median_ms"]}, f"openvino {kind}",
                            {**c, "images_per_s": 1000 / c["median_ms"]}, r, None, None, extra={"agreement": agree}))
    return rows


def node_row(model: Path, tmp: Path, quick: bool) -> dict:
    """busi-node: N ultrasound instances sent over 4 concurrent associations (pynetdicom), from
    the first C-STORE to the last image classified with its SR and overlay written, vs
    busi-infer --dicom-out on the same files (its own clock), in pairs (infer, node; 3 pairs,
    1 with --quick): the ratio is the median of the pairs' ratios, as `paired` does."""
    import importlib.util

    if importlib.util.find_spec("pynetdicom") is None:
        return {"row": "node", "skipped": "pynetdicom not installed (pip install 'busi[node]')"}
    from busi.train.phantoms import copy_instances, write_dicom_study

    n = 40 if quick else 200
    files = copy_instances(write_dicom_study(tmp / "node-study", per_class=2, seed=77), tmp / "node-in", n, "bench")
    bindir = Path(sys.executable).parent
    infer, node = [], []
    for i in range(1 if quick else 3):
        _, infer_mb = peak_rss_mb([str(bindir / "busi-infer"), str(tmp / "node-in"), "--model", str(model), "--mask",
                                   "none", "--device", "cpu", "--dicom-out", str(tmp / f"node-infer-out-{i}"), "--format",
                                   "csv"], stderr=tmp / "node-infer.err")
        m = re.search(r"(\d+)/(\d+) images classified in ([\d.]+)s", (tmp / "node-infer.err").read_text())
        infer.append({"images_per_s": int(m.group(1)) / float(m.group(3)), "peak_mb": infer_mb})
        node.append(node_run(model, files, tmp / f"node-{i}"))
    ratios = [y["images_per_s"] / x["images_per_s"] for x, y in zip(infer, node)]
    ratio = statistics.median(ratios)
    a, b = ({**throughput([r["images_per_s"] for r in runs]), "peak_mb": max(r["peak_mb"] for r in runs)}
            for runs in (infer, node))
    return row("node", f"busi-node: {n} US instances over 4 associations, first C-STORE to last classified (SR + SC "
               "written) vs busi-infer --dicom-out on the same files (its own clock), alternately; peak RSS of each",
               "busi-infer", a, "busi-node", b, ratio,
               ">= 0.95x busi-infer, peak RSS <= busi-infer's + 100 MB", ratio >= 0.95 and b["peak_mb"] <= a["peak_mb"] + 100,
               unit="images/s", extra={"associations": 4, "ratios": ratios,
                                       "sender_cpu_s": statistics.median(b["sender_cpu_s"] for b in node),
                                       "node_s": statistics.median(b["node_s"] for b in node)})


def node_run(model: Path, files: list[Path], work: Path) -> dict:
    """One busi-node (fresh spool in `work`, no destination) fed `files` over 4 associations:
    its throughput from the first C-STORE to the last image classified, its peak RSS, and the
    senders' CPU seconds (pynetdicom here, on the same cores; on another machine in a hospital)."""
    import threading

    from pynetdicom import AE
    from pynetdicom.sop_class import UltrasoundImageStorage, Verification

    from busi.serve.process import free_port

    n, port = len(files), free_port()
    work.mkdir()
    log_path, err_path = work / "node.jsonl", work / "node.err"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "busi-node"), "--model", str(model), "--spool",
                             str(work / "spool"), "--host", "127.0.0.1", "--port", str(port), "--mask", "none",
                             "--study-idle", "0"], stdout=open(log_path, "w"), stderr=open(err_path, "w"))

    def assoc(contexts):
        ae = AE(ae_title="BENCH")
        for c in contexts:
            ae.add_requested_context(c)
        return ae.associate("127.0.0.1", port, ae_title="BUSI")

    statuses: list = []

    def send(part):
        a = assoc([UltrasoundImageStorage])
        if not a.is_established:
            statuses.extend(["no association"] * len(part))
            return
        for f in part:
            s = a.send_c_store(f)
            statuses.append(s.Status if "Status" in s else "no answer")
            if "Status" not in s:  # aborted: the rest of this part is never sent
                statuses.extend(["not sent"] * (len(part) - part.index(f) - 1))
                return
        a.release()

    try:
        end = time.time() + 120
        while time.time() < end:
            a = assoc([Verification])
            if a.is_established:
                a.release()
                break
            time.sleep(0.5)
        t0, cpu0 = time.perf_counter(), time.process_time()
        senders = [threading.Thread(target=send, args=(files[i::4],)) for i in range(4)]
        for t in senders:
            t.start()
        done = ended = 0
        while done < n and time.perf_counter() - t0 < 600:
            time.sleep(0.2)
            events = [ln for ln in log_path.read_text().splitlines() if '"event": ' in ln]
            done = sum('"event": "classified"' in ln for ln in events)
            ended = sum(any(f'"event": "{e}"' in ln for e in ("classified", "failed", "skipped", "needs_roi"))
                        for ln in events)
            if ended >= n or len(statuses) == n and any(s != 0 for s in statuses):
                break  # every instance has its outcome, or some were not taken: no more will be classified
        node_s = time.perf_counter() - t0
        for t in senders:
            t.join()
        sender_cpu_s = time.process_time() - cpu0
        peak_kb = int(next(ln.split()[1] for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                           if ln.startswith("VmHWM")))
    finally:
        proc.terminate()
        proc.wait(60)
    if done < n:
        said = [ln for ln in log_path.read_text().splitlines()
                if not any(f'"event": "{e}"' in ln for e in ("classified", "received", "batch"))][-3:]
        refused = [s for s in statuses if s != 0]
        raise RuntimeError(f"busi-node classified {done} of {n} bench instances ({len(refused)} not acknowledged: "
                           f"{sorted(set(map(str, refused)))[:3]}); its last other events: {said}; stderr: "
                           f"{err_path.read_text()[-300:]!r}")
    return {"images_per_s": n / node_s, "node_s": node_s, "peak_mb": peak_kb / 1024, "sender_cpu_s": sender_cpu_s}


def serve_rows(model: Path, image: Path, box, tmp: Path, quick: bool) -> list[dict]:
    """busi-serve on loopback vs the local Predictor, each with 1, 4 and 16 client threads
    calling predict (PNG 564x474 with a box: decode, mask and the rest on the client, the
    classifier on the server); then dynamic batching on (max batch 8, 2 ms) vs off (max
    batch 1) at 16 clients; and the server's peak RSS. Client and server share this
    machine's cores: on 2 cores the client's decoding takes CPU from the server."""
    import importlib.util

    if importlib.util.find_spec("kserve") is None or importlib.util.find_spec("tritonclient") is None:
        return [{"row": "serve", "skipped": "kserve/tritonclient not installed (pip install 'busi[serve]')"}]
    import threading

    from busi.runtime import Predictor
    from busi.serve.process import running

    n = 48 if quick else 192

    def load(pred, clients: int) -> dict:
        lat: list[float] = []
        per = max(1, n // clients)

        def client():
            for _ in range(per):
                t = time.perf_counter()
                pred.predict(image, box)
                lat.append(time.perf_counter() - t)

        pred.predict(image, box)  # warm
        threads = [threading.Thread(target=client) for _ in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        ms = np.array(lat) * 1000
        return {"images_per_s": per * clients / wall, "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99))}

    rows = []
    local = Predictor(model, device="cpu", notice=lambda m: None)
    with running(model, "--max-batch", 8, "--max-delay-ms", 2, log=tmp / "serve.log") as server:
        remote = Predictor(server=server.url, notice=lambda m: None)
        for c in (1, 4, 16):
            a, b = load(local, c), load(remote, c)
            rows.append(row(f"serve, {c} clients", f"{c} client threads x predict(PNG 564x474, box): local Predictor vs "
                            "busi-serve on loopback (remote backend; max batch 8, 2 ms)", "local", a, "busi-serve", b,
                            b["images_per_s"] / a["images_per_s"], None, None, unit="images/s"))
        batched = b
        peak = server.peak_rss_mb()
    with running(model, "--max-batch", 1, log=tmp / "serve1.log") as server:
        single = load(Predictor(server=server.url, notice=lambda m: None), 16)
    rows.append(row("serve batching", "busi-serve, 16 clients: dynamic batching (max batch 8, 2 ms) vs off (max batch 1)",
                    "max batch 1", single, "max batch 8", batched, batched["images_per_s"] / single["images_per_s"],
                    None, None, unit="images/s"))
    rows.append(row("serve memory", "peak RSS of busi-serve after the loads above (classifier, its batcher, kserve)",
                    "busi-serve", {"peak_mb": peak}, "per replica", {"images_per_s": batched["images_per_s"]}, None,
                    None, None, unit="MB"))
    return rows


def training_input_row(card: ModelCard, model_dir: Path, quick: bool) -> dict:
    from busi.train.backend import keras
    from busi.train.dataset import read_manifest
    from busi.train.inputs import eval_masks, lesion_sizes, load_rows
    from busi.train.model import build_classifier
    from busi.train.pipeline import train_dataset

    S = card.info.input.size
    rows = [r for r in read_manifest(ModelDir(model_dir).manifest) if r["split"] == "train"][: 32 if quick else 64]
    arr = load_rows(card.data.root, rows, S)
    sizes = lesion_sizes(arr.gt)
    bs = 16
    m = build_classifier(S, "none", freeze=False)
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    ds = train_dataset(arr, "box", sizes, bs, 0, augment=True)
    xs = {"image": arr.images.astype(np.float32), "mask": eval_masks(arr, "box", sizes)}
    ys = np.eye(3, dtype=np.float32)[arr.labels]
    m.fit(ds, epochs=1, verbose=0, shuffle=False)  # warm-up / graph build
    m.fit(xs, ys, batch_size=bs, epochs=1, verbose=0)
    epochs = 1 if quick else 3
    tp = timeit(lambda: m.fit(ds, epochs=1, verbose=0, shuffle=False), epochs, warmup=0)
    tm = timeit(lambda: m.fit(xs, ys, batch_size=bs, epochs=1, verbose=0), epochs, warmup=0)
    a = {"images_per_s": len(arr) / tm["median_s"]}
    b = {"images_per_s": len(arr) / tp["median_s"]}
    r = b["images_per_s"] / a["images_per_s"]
    return row("training input", f"fit, tf.data with augmentation vs in-memory tensors ({len(arr)} images, {S} px, batch {bs})",
               "in-memory", a, "tf.data+aug", b, r, ">= 0.9x", r >= 0.9, unit="images/s")


def training_step_row(quick: bool, size: int = 224, batch: int = 32) -> dict:
    """One training step of the seed's recipe (frozen ResNet50 at 224 px, batch 32; the weights'
    values do not change the time, so no ImageNet file is needed), float32 against
    `--precision bf16`, and how much of the float32 step is the frozen backbone's forward pass
    (what an epoch mostly is, with a frozen backbone)."""
    from busi.train.backend import keras
    from busi.train.distribute import cpu_has_bf16, precision
    from busi.train.model import build_classifier

    rng = np.random.default_rng(0)
    x = {"image": rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32),
         "mask": np.ones((batch, size, size, 1), np.float32)}
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, batch)]

    def compiled(policy):
        with precision(policy):
            m = build_classifier(size, "none", freeze=True)
            m.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
        return m

    f32, b16 = compiled("float32"), compiled("bf16")
    reps = 2 if quick else 5
    a, b, r = paired(lambda: f32.train_on_batch(x, y), lambda: b16.train_on_batch(x, y), reps, warmup=1)
    fwd = timeit(lambda: f32.predict_on_batch(x), reps, warmup=1)
    extra = {"forward_share": fwd["median_s"] / a["median_s"], "cpu_bf16": cpu_has_bf16(),
             "note": "forward_share: the float32 model's inference on the batch / its training step"}
    per = lambda t: {"images_per_s": batch / t["median_s"], **t}  # noqa: E731
    return row("training step", f"the frozen recipe's train_on_batch ({size} px, batch {batch}): float32 vs --precision bf16",
               "float32", per(a), "bf16", per(b), r, ">= 1.2x where the CPU has bf16", r >= 1.2 if cpu_has_bf16() else None,
               unit="images/s", extra=extra)


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"busi bench of {res['model']}: {m['cpu']}, {m['cores']} cores, {m['provider']}, onnxruntime {m['onnxruntime']}, "
             f"tensorflow {m['tensorflow']}, input {res['input_size']} px, {res['time']}" + (" (quick)" if res["quick"] else ""), "",
             *[f"Note: {n}" for n in res.get("notes", [])], *([""] if res.get("notes") else []),
             "| row | A | B | ratio | target | met |", "|---|---|---|---|---|---|"]

    def fmt(d):
        parts = []
        for k, v in d.items():
            if k in ("label", "n") or v is None:
                continue
            parts.append(f"{k.replace('_', ' ')} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
        return f"{d['label']}: " + ", ".join(parts)

    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['row']} | skipped: {r['skipped']} | | | | |")
            continue
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        for key, word in (("floor_ratio", "floor"), ("ceiling_ratio", "ceiling")):  # what the CPU work allows
            if r.get(key) is not None:
                ratio += f" ({word} {r[key]:.2f}x)"
        met = "context" if r["target"] is None else "yes" if r["met"] else "**MISSED**"
        lines.append(f"| {r['row']} | {fmt(r['a'])} | {fmt(r['b'])} | {ratio} | {r['target'] or 'none'} | {met} |")
    return "\n".join(lines) + "\n"


@app.command()
def bench(
    model_dir: Path = typer.Argument(Path("models/demo"), help="Model folder with model.keras, model.onnx (make demo)."),
    out: Path = typer.Option(None, "--out", help="bench.json path (default: MODEL_DIR/bench.json)."),
    quick: bool = typer.Option(False, "--quick", help="Few repetitions (a smoke test)."),
    size: Optional[int] = typer.Option(224, "--size", min=0, max=1024, help="Input size to time at (the model's weights rebuilt at this size if it was trained at another); 0 = the model's own."),
):
    """Benchmark Keras vs ONNX Runtime, INT8, end to end, folder, cold start, memory, sizes."""
    md = ModelDir(model_dir)
    for f in (md.keras, md.onnx, md.card, md.manifest):
        if not f.is_file():
            raise UsageError(f"{f}: not found (run make demo first)")
    log_setup(0)
    res = run_bench(model_dir, quick, size)

    out = out or model_dir / "bench.json"
    atomic_write_text(out, json.dumps(res, indent=2) + "\n")
    typer.echo(markdown(res))
    typer.echo(f"wrote {out}", err=True)


def main() -> None:
    run_cli(app)


if __name__ == "__main__":
    main()
