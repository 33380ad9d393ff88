"""`busi-export MODEL_DIR`: model.keras -> model.onnx (+ INT8), with parity and accuracy gates."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from busi.runtime.cli_options import TYPER, quiet_option, verbose_option, version_option
from busi.runtime.errors import UsageError
from busi.runtime.log import verbosity_callback

app = typer.Typer(**TYPER)


@app.command()
def export(
    model_dir: Path = typer.Argument(..., help="Model folder written by `busi-train fit` (model.keras, card.json, manifest.csv)."),
    opset: int = typer.Option(17, "--opset", min=13, max=21, help="ONNX opset."),
    tolerance: float = typer.Option(1e-4, "--tolerance", min=0.0, help="Max abs difference of probabilities, Keras vs ONNX Runtime."),
    int8: bool = typer.Option(False, "--int8", help="Also write model.int8.onnx (static QDQ, per-channel), if it passes its gate."),
    calibration_images: int = typer.Option(0, "--calibration-images", min=0, help="Training-split images (with their masks) used to calibrate INT8; 0 = the whole training split."),
    allow_int8_refusal: bool = typer.Option(False, "--allow-int8-refusal", help="Exit 0 when only the INT8 gate refuses (FP32 written, figures in the card)."),
    triton: Optional[Path] = typer.Option(None, "--triton", help="Also write a Triton model repository here (busi_classifier, busi_segmenter)."),
    triton_only: bool = typer.Option(False, "--triton-only", help="With --triton: write the repository from the exported files, without converting again."),
    triton_max_batch: int = typer.Option(32, "--triton-max-batch", min=1, max=1024, help="max_batch_size in the Triton configs."),
    tensorrt: bool = typer.Option(False, "--tensorrt", help="With --triton: a TensorRT FP16 accelerator block in the GPU config."),
    verbose: int = verbose_option(),
    quiet: bool = quiet_option(),
    version: bool = version_option(),
):
    """Convert MODEL_DIR/model.keras to a self-describing ONNX file and prove parity.

    Exit 0 ok; 1 a gate failed (nothing written at the final path); 2 bad model folder.
    """
    from .convert import export as run_export

    verbosity_callback(verbose, quiet)
    if triton_only:
        if triton is None:
            raise UsageError("--triton-only needs --triton REPO")
        from .triton import write_repository

        for d in write_repository(model_dir, triton, triton_max_batch, tensorrt):
            typer.echo(f"{d}: Triton model (tritonserver --model-repository {triton})", err=True)
        return
    facts = run_export(model_dir, opset=opset, tolerance=tolerance, int8=int8, calibration_images=calibration_images,
                       int8_optional=allow_int8_refusal)
    p = facts["parity"]
    msg = f"{model_dir / facts['file']}: parity max abs diff {p['max_abs_diff']:.2e}, argmax agreement {p['argmax_agreement']:.4f}"
    if "file" in facts.get("int8", {}):
        msg += f"; {facts['int8']['file']}: argmax agreement {facts['int8']['argmax_agreement']:.4f}"
    if "segmenter" in facts:
        msg += f"; {facts['segmenter']['file']}: parity max abs diff {facts['segmenter']['parity']['max_abs_diff']:.2e}"
    typer.echo(msg, err=True)
    if triton is not None:
        from .triton import write_repository

        for d in write_repository(model_dir, triton, triton_max_batch, tensorrt):
            typer.echo(f"{d}: Triton model (tritonserver --model-repository {triton})", err=True)


def main() -> None:
    from busi.runtime.errors import run_cli

    run_cli(app)
