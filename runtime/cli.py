"""`busi-infer`: classify breast ultrasound images with a busi ONNX model (no TensorFlow).

Machine-readable output on stdout (or --out, written atomically), human notes on stderr.
Exit 0: every image succeeded; 1: some failed (each still a record), an output could not be
written (a classified image whose --dicom-out objects could not be built keeps its class and
gains `dicom_output_error`), or --device cuda cannot run; 2: bad usage or model (see busi.runtime.errors); 3: none
failed, but --mask auto abstained on some (`needs_roi` records: no class, give a box).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from .cli_options import (
    DICOM,
    INPUT,
    MASK,
    MODEL,
    OUTPUT,
    SERVER,
    TYPER,
    expect_sha256_option,
    quiet_option,
    token_option,
    verbose_option,
    version_option,
)
from .dicom_identity import options as uid_options
from .errors import InputError, UsageError
from .inputs import expand_inputs
from .log import get as get_logger
from .log import verbosity_callback, write_stderr
from .outputs import check_outputs, model_files
from .records import Format

_LOG = get_logger(__name__)

DEFAULT_MODEL = Path("models/demo/model.onnx")
app = typer.Typer(**TYPER)

EXAMPLES = """[bold]Examples[/bold]

busi-infer case.png                      [dim]# auto mask where the model has a segmenter[/dim]

busi-infer case.png --roi 120,80,60,40   [dim]# lesion box x,y,w,h in image pixels[/dim]

busi-infer scans/ --mask masks/ -f csv -o results.csv   [dim]# <stem>_mask.png files[/dim]

busi-infer pacs-export/ --frames all --by study --dicom-out results/

busi-infer scans/ --server http://gpu-host:8080   [dim]# the model on busi-serve/Triton[/dim]"""


class Frames(str, Enum):
    all = "all"


class By(str, Enum):
    study = "study"


def _print_schema(value: bool) -> None:
    if value:
        from .schema import record_schema

        typer.echo(json.dumps(record_schema(), indent=2))
        raise typer.Exit(0)


@app.command(epilog=EXAMPLES)
def infer(
    paths: List[str] = typer.Argument(..., help="Image files (PNG, JPEG, DICOM), folders (searched recursively) or globs."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", envvar="BUSI_MODEL", help="busi .onnx model (default: $BUSI_MODEL or models/demo/model.onnx).", rich_help_panel=MODEL),
    mask: Optional[str] = typer.Option(None, "--mask", help="Lesion mask: a mask PNG, a folder holding <stem>_mask*.png (an empty one, a normal image's, gets the trained placeholder), 'auto' (the lesion segmenter) or 'none' (whole image). Default: auto where segmenter.onnx is beside the model, else none (said once). A box: --roi.", rich_help_panel=MASK),
    roi: Optional[str] = typer.Option(None, "--roi", help="Lesion box x,y,w,h in image pixels (the trained margin is added).", rich_help_panel=MASK),
    fmt: Format = typer.Option(Format.jsonl, "--format", "-f", help="Output format.", rich_help_panel=OUTPUT),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the output to this file (atomically) instead of stdout.", rich_help_panel=OUTPUT),
    tta: bool = typer.Option(False, "--tta", help="Average with the horizontally flipped image.", rich_help_panel=MODEL),
    batch_size: int = typer.Option(8, "--batch-size", min=1, max=256, rich_help_panel=MODEL),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if it really works, else CPU) | cuda | cpu | openvino (OpenVINO's CPU runtime: pip install 'busi[openvino]').", rich_help_panel=MODEL),
    threshold: Optional[float] = typer.Option(None, "--threshold", min=0.0, max=1.0, help="P(malignant) flag threshold (default: the model's operating point).", rich_help_panel=OUTPUT),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="ONNX Runtime intra-op threads (default: all cores).", rich_help_panel=MODEL),
    max_pixels: int = typer.Option(50_000_000, "--max-pixels", min=1, help="Refuse images with more pixels (before decoding).", rich_help_panel=INPUT),
    frame: int = typer.Option(0, "--frame", min=0, help="Frame of a multi-frame DICOM (0-based).", rich_help_panel=DICOM),
    frames: Optional[Frames] = typer.Option(None, "--frames", help="'all': classify every frame of a cine loop (multi-frame DICOM), in batches of --batch-size; one result per loop, its malignant flag from the frame with the highest P(malignant).", rich_help_panel=DICOM),
    by: Optional[By] = typer.Option(None, "--by", help="'study': add one summary record per DICOM study (image count, highest P(malignant) and its image).", rich_help_panel=DICOM),
    prevalence: Optional[str] = typer.Option(None, "--prevalence", help="The site's case mix, e.g. 'malignant=0.02' (others share the rest as in training): adds probabilities adjusted by prior shift and bases the likelihood band on them; the malignant flag keeps the calibrated, unadjusted P(malignant).", rich_help_panel=OUTPUT),
    coverage: Optional[float] = typer.Option(None, "--coverage", min=0.5, max=0.999, help="Coverage of the conformal prediction sets (default: the model's, 0.9).", rich_help_panel=OUTPUT),
    allow_modality: bool = typer.Option(False, "--allow-modality", help="Classify DICOM images whose Modality is not US (CT, MR, ...) instead of refusing them; the model is for breast ultrasound.", rich_help_panel=DICOM),
    dicom_out: Optional[Path] = typer.Option(None, "--dicom-out", help="Write a DICOM SR, an overlay (Secondary Capture) and, with --mask auto, a SEG for every DICOM input into this folder.", rich_help_panel=DICOM),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the .sha256 check of the model file.", rich_help_panel=MODEL),
    require_sha256: bool = typer.Option(False, "--require-sha256", help="Refuse a model (or segmenter) without a .sha256 sidecar.", rich_help_panel=MODEL),
    max_bytes: int = typer.Option(1 << 30, "--max-bytes", min=1, help="Refuse input files larger than this (bytes).", rich_help_panel=INPUT),
    server: Optional[str] = typer.Option(None, "--server", envvar="BUSI_SERVER", help="Run the model on this inference server (http://host:port): busi-serve, or Triton serving busi-export --triton. Decoding, masks, the segmenter's decision and the reports stay here.", rich_help_panel=SERVER),
    token: Optional[str] = token_option(SERVER),
    expect_sha256: Optional[str] = expect_sha256_option(MODEL),
    segmenter: Optional[Path] = typer.Option(None, "--segmenter", help="Segmenter .onnx for --mask auto (default: segmenter.onnx beside the model).", rich_help_panel=MASK),
    explain: Optional[Path] = typer.Option(None, "--explain", help="Write a Grad-CAM overlay PNG of the predicted class per image into this folder.", rich_help_panel=OUTPUT),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a self-contained HTML case report (images, Grad-CAM, probabilities).", rich_help_panel=OUTPUT),
    schema: bool = typer.Option(False, "--schema", is_eager=True, callback=_print_schema, rich_help_panel=OUTPUT,
                                help="Print the JSON Schema of the output records (JSON lines) and exit."),
    verbose: int = verbose_option(),
    quiet: bool = quiet_option(),
    version: bool = version_option(),
):
    """Classify breast ultrasound images as normal / benign / malignant.

    Research software, not a medical device: results are not a diagnosis.
    """
    from .options import PredictorOptions
    from .predictor import Predictor
    from .session import low_peak_loading

    # pydicom warns (on stderr) about each malformed value it meets; the record says it once
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\..*)?$")
    # Pillow too (a malformed EXIF block, read for its orientation only): the pixels are fine
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\..*)?$")
    verbosity_callback(verbose, quiet)

    if mask is not None and roi is not None:
        raise UsageError("give either --mask or --roi, not both")
    _check_mask_arg(mask)
    if server and model is not None:
        raise UsageError("give either --model or --server, not both")
    model = None if server else (model or DEFAULT_MODEL)
    inputs = expand_inputs(paths, allow_modality=allow_modality)
    files = inputs.files
    if not files:
        raise UsageError("no images found in " + ", ".join(paths))
    if all(isinstance(f, InputError) and f.path and (os.path.isdir(f.path) or Path(f.path).name.upper() == "DICOMDIR")
           for f in files):  # nothing named holds an image: bad usage, not a batch with failures (os.path: a
        # name too long is no folder, where Path.is_dir raises)
        raise UsageError("; ".join(map(str, files)))
    # every output is checked before the model loads and the first image: writable, and colliding
    # neither with another output nor with what the run reads (images, masks, models, sidecars)
    seg = segmenter if segmenter is not None else (
        Path(model).parent / "segmenter.onnx" if model and (mask == "auto" or (mask is None and roi is None)) else None)
    models = [] if server else model_files(model, seg)
    images = [f for f in files if isinstance(f, str)]
    sources = [*images, *models, *([mask] if mask not in (None, "auto", "none") else [])]
    finals = check_outputs(out=out, report=report, explain=explain, dicom_out=dicom_out, args=paths, files=images,
                           models=models, mask=mask)
    out_final, report_final = finals.get("--out"), finals.get("--report")
    with low_peak_loading():
        pred = Predictor(model, PredictorOptions(
            device=device, verify=not no_verify, threads=threads, max_pixels=max_pixels, threshold=threshold,
            segmenter=segmenter, require_sha256=require_sha256, max_bytes=max_bytes, prevalence=prevalence,
            coverage=coverage, server=server, token=token, expect_sha256=expect_sha256))
        model = model or pred.path
        if mask is None and roi is None:
            mask = pred.default_mask  # auto where the model has a segmenter, else the whole image (said once)
            if mask == "none":
                mask = None  # the Predictor says so, once, on the first image
        if mask == "auto":
            _ = pred.segmenter  # load (and verify) it now: a missing segmenter is bad usage, not 100 failures
    if (explain or report) and not pred.explainable:
        raise UsageError(f"{model}: model has no Grad-CAM outputs (features, cam_weights); re-export it with busi-export")
    views = explain is not None or report is not None or dicom_out is not None
    if frames is not None and frame:
        raise UsageError("give either --frame N or --frames all, not both")
    mask_arg = roi if roi is not None else mask
    if roi is not None:
        from .arrays import parse_box

        mask_arg = parse_box(roi)
    from .sinks import DicomSink, GradcamSink, HtmlSink, RecordSink

    # the outputs, in the order each result reaches them: the records sink last (the others add to the record)
    html = HtmlSink(report, report_final, model, pred) if report is not None else None
    gradcam = GradcamSink(explain, sources) if explain is not None else None
    dicom = DicomSink(dicom_out, uid_options(mask_arg, threshold, tta, frames or frame)) \
        if dicom_out is not None else None
    results = RecordSink(fmt, out, out_final, by is not None)
    sinks = [s for s in (html, gradcam, dicom, results) if s is not None]
    t0 = time.time()
    from .progress import Bar
    from .results import FAILURE, NEEDS_ROI, Failure

    bar = Bar(len(files), "busi-infer", enabled=len(files) > 1)
    items = [Failure(f.path, str(f)) if isinstance(f, InputError) else f for f in files]
    it = pred.iter_predict(items, mask_arg, batch_size=batch_size, threshold=threshold, tta=tta,
                           frame="all" if frames is not None else frame,
                           explain=explain is not None or report is not None, keep_view=views)
    n_images = n_fail = n_roi = 0
    for r in it:
        n_images += 1
        d = r.to_dict()
        if r.kind == FAILURE:
            n_fail += 1
            write_stderr(f"error: {d['error']}\n")
        elif r.kind == NEEDS_ROI:
            n_roi += 1
            _LOG.warning(f"busi: {d['reason']}")
        problems = [p for p in (s.add(r, d) for s in sinks) if p]  # an output of this image could not be written
        for problem in problems:  # the image keeps its class (or its needs_roi); its record says which output failed
            write_stderr(f"error: {problem}\n")
        bar.advance()
    bar.close()
    for s in (results, html, gradcam, dicom):  # the records first, then the report
        if s is not None:
            s.close()
    dt = time.time() - t0
    ok = n_images - n_fail - n_roi
    n_cam_failed, n_dicom_failed = (gradcam.failed if gradcam else 0), (dicom.failed if dicom else 0)
    _LOG.info(
        f"busi: {ok}/{n_images} images classified in {dt:.2f}s on {pred.provider.replace('ExecutionProvider', '')}"
        + (f", {n_fail} failed" if n_fail else "")
        + (f", {n_roi} need an ROI (--mask auto abstained: give --roi or a mask)" if n_roi else "")
        + (f", DICOM output failed for {n_dicom_failed} (dicom_output_error in the record)" if n_dicom_failed else "")
        + (f", Grad-CAM overlay failed for {n_cam_failed} (output_error in the record)" if n_cam_failed else "")
        + (f"; output in {out}" if out else "")
        + (f"; Grad-CAM overlays in {explain}" if explain else "") + (f"; report {report}" if report else "")
        + (f"; {inputs.summary()}" if inputs.summary() else "")
        + (f"; {dicom.summary()}" if dicom is not None else "")
    )
    raise typer.Exit(1 if n_fail or n_cam_failed or n_dicom_failed else 3 if n_roi else 0)


def _check_mask_arg(mask: str | None) -> None:
    """--mask names a file, a folder, auto or none: a mask-source name (box, gt) or a path that
    does not exist is bad usage, with the option that gives a box."""
    from .mask_arg import MASK_SOURCE_NAMES, source_name_hint

    if mask is not None and not mask.strip():  # Path("") is "." and exists: an empty value is no mask
        raise UsageError("--mask: an empty value was given; give a mask PNG, a folder of <stem>_mask*.png, auto or none")
    if mask is None or mask in ("auto", "none") or ("," in mask and not Path(mask).exists()):  # a box as x,y,w,h
        return
    if mask in MASK_SOURCE_NAMES and not Path(mask).exists():
        raise UsageError(source_name_hint(mask))
    if not Path(mask).exists():
        raise UsageError(f"--mask {mask}: no such file or folder; give a mask PNG, a folder of <stem>_mask*.png, "
                         "auto or none, or a lesion box with --roi x,y,w,h")


def main() -> None:
    from .errors import run_cli

    run_cli(app)
