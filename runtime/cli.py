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
import sys
import time
import warnings
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from .atomic import output_target
from .errors import InputError, OutputError, UsageError, WriteError
from .cli_options import (DICOM, INPUT, MASK, MODEL, OUTPUT, SERVER, TYPER, expect_sha256_option, quiet_option,
                          token_option, verbose_option, version_option)
from .log import verbosity_callback, write_stderr
from .log import get as get_logger
from .inputs import expand_inputs
from .outputs import check_outputs, model_files
from .records import Format, json_line, render, study_summaries

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


class DicomWriter:
    """--dicom-out: SR, SC and SEG for each DICOM result (busi.runtime.dicom_out); PNG and JPEG
    inputs get none, which is said once."""

    def __init__(self, folder: Path, options: str):
        import importlib.util

        if importlib.util.find_spec("highdicom") is None:
            raise UsageError("--dicom-out needs highdicom: pip install 'busi[dicom]'")
        self.folder, self.options = folder, options
        self.written: list[Path] = []
        self.not_dicom = 0

    def add(self, r) -> str | None:
        """Write the objects for one result; the error line when its source cannot have any."""
        from .dicom_out import write

        if r.dicom is None:
            if not self.not_dicom:
                _LOG.warning("busi: PNG and JPEG inputs get no DICOM output (--dicom-out): they carry no patient or study")
            self.not_dicom += 1
            return None
        notes: list[str] = []
        try:
            self.written += write(r, r.path, self.folder, options=self.options, notes=notes)
        except (InputError, OutputError) as e:  # this source cannot have DICOM output, or it could not be written
            return str(e)
        except OSError as e:
            return f"{self.folder}: cannot write the DICOM output of {r.path} ({e.strerror or e})"
        finally:  # what was done to the source's values to write them (a value left empty, a date rewritten)
            r.notes.extend(f"DICOM output: {n}" for n in notes)
        return None

    def summary(self) -> str:
        kinds = {}
        for p in self.written:
            kinds[p.suffixes[-2][1:]] = kinds.get(p.suffixes[-2][1:], 0) + 1
        what = ", ".join(f"{n} {k.upper()}" for k, n in kinds.items()) or "nothing"
        return f"DICOM output in {self.folder}: {what}"


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
    device: str = typer.Option("auto", "--device", help="auto (CUDA if it really works, else CPU) | cuda | cpu.", rich_help_panel=MODEL),
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
    from .predictor import Predictor
    from .session import low_peak_loading

    # pydicom warns (on stderr) about each malformed value it meets; the record says it once
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\..*)?$")
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
        pred = Predictor(model, device=device, verify=not no_verify, threads=threads, max_pixels=max_pixels,
                         threshold=threshold, segmenter=segmenter, require_sha256=require_sha256,
                         max_bytes=max_bytes, prevalence=prevalence, coverage=coverage, server=server, token=token,
                         expect_sha256=expect_sha256)
        model = model or pred.path
        if mask is None and roi is None:
            mask = pred.default_mask  # auto where the model has a segmenter, else the whole image (said once)
            if mask == "none":
                mask = None  # the Predictor says so, once, on the first image
        if mask == "auto":
            pred.segmenter  # load (and verify) it now: a missing segmenter is bad usage, not 100 failures
    if (explain or report) and not pred.explainable:
        raise UsageError(f"{model}: model has no Grad-CAM outputs (features, cam_weights); re-export it with busi-export")
    views = explain is not None or report is not None or dicom_out is not None
    if frames is not None and frame:
        raise UsageError("give either --frame N or --frames all, not both")
    html = None
    if report is not None:
        from .html_report import HtmlReport

        html = HtmlReport(report, model, pred.info, pred.threshold, pred.provider)
    written: set[str] = set()
    mask_arg = roi if roi is not None else mask
    if roi is not None:
        from .arrays import parse_box

        mask_arg = parse_box(roi)
    t0 = time.time()
    records: list[dict] = []
    n_fail = 0
    from .progress import Bar

    bar = Bar(len(files), "busi-infer", enabled=len(files) > 1)
    from .results import Failure, NeedsRoi, Prediction

    items = [Failure(f.path, str(f)) if isinstance(f, InputError) else f for f in files]
    it = pred.iter_predict(items, mask_arg, batch_size=batch_size, threshold=threshold, tta=tta,
                           frame="all" if frames is not None else frame,
                           explain=explain is not None or report is not None, keep_view=views)
    dicom_writer = DicomWriter(dicom_out, f"mask={mask_arg} threshold={threshold} tta={tta} frames={frames or frame}") \
        if dicom_out is not None else None
    stream = out is None and fmt is Format.jsonl
    n_roi = n_cam_failed = n_dicom_failed = 0
    for i, r in enumerate(it, 1):
        d = r.to_dict()
        if "error" in d:
            n_fail += 1
            write_stderr(f"error: {d['error']}\n")
        elif d.get("needs_roi"):
            n_roi += 1
            _LOG.warning(f"busi: {d['reason']}")
        records.append(d)
        if html is not None:
            html.add(r)
        problems = []  # an output of this image that could not be written: the batch goes on
        if explain is not None and isinstance(r, Prediction):
            try:
                _write_explanation(explain, r, written, sources)
            except OutputError as e:
                problems.append(str(e))
            except OSError as e:
                problems.append(f"{explain}: cannot write the Grad-CAM overlay of {r.path} ({e.strerror or e})")
            if problems:
                d["output_error"] = problems[0]
                n_cam_failed += 1
        if dicom_writer is not None and isinstance(r, (Prediction, NeedsRoi)):  # abstained: an SR that says so
            problem = dicom_writer.add(r)
            d["notes"] = list(r.notes)
            if problem:
                d["dicom_output_error"] = problem
                problems.append(problem)
                n_dicom_failed += 1
        for problem in problems:  # the image keeps its class (or its needs_roi); its record says which output failed
            write_stderr(f"error: {problem}\n")
        if stream:
            emit(json_line(d))
        bar.advance()
    bar.close()
    n_images = len(records)
    if by is not None:
        summaries = study_summaries(records)
        records += summaries
        if stream:
            emit("".join(json_line(x) for x in summaries))
    text = render(records, fmt)
    if out_final is not None:
        from .atomic import atomic_write_text

        try:
            atomic_write_text(out_final, text)
        except OSError as e:
            raise WriteError(out, f"cannot write ({e.strerror or e})") from None
    elif not stream:
        emit(text)
    if html is not None:
        try:
            html.write(report_final)
        except OSError as e:
            raise WriteError(report, f"cannot write ({e.strerror or e})") from None
    dt = time.time() - t0
    ok = n_images - n_fail - n_roi
    _LOG.info(
        f"busi: {ok}/{n_images} images classified in {dt:.2f}s on {pred.provider.replace('ExecutionProvider', '')}"
        + (f", {n_fail} failed" if n_fail else "")
        + (f", {n_roi} need an ROI (--mask auto abstained: give --roi or a mask)" if n_roi else "")
        + (f", DICOM output failed for {n_dicom_failed} (dicom_output_error in the record)" if n_dicom_failed else "")
        + (f", Grad-CAM overlay failed for {n_cam_failed} (output_error in the record)" if n_cam_failed else "")
        + (f"; output in {out}" if out else "")
        + (f"; Grad-CAM overlays in {explain}" if explain else "") + (f"; report {report}" if report else "")
        + (f"; {inputs.summary()}" if inputs.summary() else "")
        + (f"; {dicom_writer.summary()}" if dicom_writer is not None else "")
    )
    raise typer.Exit(1 if n_fail or n_cam_failed or n_dicom_failed else 3 if n_roi else 0)


def _check_mask_arg(mask: str | None) -> None:
    """--mask names a file, a folder, auto or none: a mask-source name (box, gt) or a path that
    does not exist is bad usage, with the option that gives a box."""
    from .mask_arg import MASK_SOURCE_NAMES, source_name_hint

    if mask is None or mask in ("auto", "none") or ("," in mask and not Path(mask).exists()):  # a box as x,y,w,h
        return
    if mask in MASK_SOURCE_NAMES and not Path(mask).exists():
        raise UsageError(source_name_hint(mask))
    if not Path(mask).exists():
        raise UsageError(f"--mask {mask}: no such file or folder; give a mask PNG, a folder of <stem>_mask*.png, "
                         "auto or none, or a lesion box with --roi x,y,w,h")


def emit(text: str) -> None:
    """Write machine-readable output to stdout now; a full, closed or broken stdout becomes
    one OutputError line instead of a traceback (results are not silently lost)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError, AttributeError) as e:
        reason = getattr(e, "strerror", None) or "closed"
        raise WriteError("stdout", f"cannot write the results ({reason}); use --out FILE") from None


def _write_explanation(folder: Path, r, written: set[str], sources=()) -> Path:
    """<stem>.gradcam.png (Grad-CAM of the predicted class over the image), atomically; a
    second image with the same stem gets -2, -3, ..."""
    import cv2

    from .atomic import atomic_write_bytes
    from .gradcam import mark_png, overlay
    from .outputs import GRADCAM_SUFFIX, safe_name

    stem = Path(r.path).stem if r.path else "image"
    name, k = safe_name(stem, GRADCAM_SUFFIX), 2
    while name in written:
        name, k = safe_name(f"{stem}-{k}", GRADCAM_SUFFIX), k + 1
    written.add(name)
    final = output_target(folder / name, sources)
    ok, png = cv2.imencode(".png", cv2.cvtColor(overlay(r.extras["view"], r.extras["cam"]), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode {final}")
    atomic_write_bytes(final, mark_png(png.tobytes()))
    return final


def main() -> None:
    from .errors import run_cli

    run_cli(app)
