"""`busi-export MODEL_DIR`: model.keras -> model.onnx (+ INT8), with parity and accuracy gates."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def export(
    model_dir: Path = typer.Argument(..., help="Model folder written by `busi-train fit` (model.keras, card.json, manifest.csv)."),
    opset: int = typer.Option(17, "--opset", min=13, max=21, help="ONNX opset."),
    tolerance: float = typer.Option(1e-4, "--tolerance", min=0.0, help="Max abs difference of probabilities, Keras vs ONNX Runtime."),
    int8: bool = typer.Option(False, "--int8", help="Also write model.int8.onnx (static QDQ, per-channel), if it passes its gate."),
    calibration_images: int = typer.Option(256, "--calibration-images", min=1, help="Training-split images (with their masks) used to calibrate INT8."),
    allow_int8_refusal: bool = typer.Option(False, "--allow-int8-refusal", help="Exit 0 when only the INT8 gate refuses (FP32 written, figures in the card)."),
):
    """Convert MODEL_DIR/model.keras to a self-describing ONNX file and prove parity.

    Exit 0 ok; 1 a gate failed (nothing written at the final path); 2 bad model folder.
    """
    from .convert import ExportError, Int8GateRefused, export as run_export

    try:
        facts = run_export(model_dir, opset=opset, tolerance=tolerance, int8=int8, calibration_images=calibration_images)
    except ExportError as e:
        if allow_int8_refusal and isinstance(e, Int8GateRefused):
            typer.echo(f"note: {e}", err=True)
            return
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code)
    except OSError as e:
        typer.echo(f"error: {model_dir}: {e}", err=True)
        raise typer.Exit(1)
    p = facts["parity"]
    msg = f"{model_dir / facts['onnx']}: parity max abs diff {p['max_abs_diff']:.2e}, argmax agreement {p['argmax_agreement']:.4f}"
    if "int8" in facts:
        msg += f"; {facts['int8']['file']}: argmax agreement {facts['int8']['argmax_agreement']:.4f}"
    if "segmenter" in facts:
        msg += f"; {facts['segmenter']['onnx']}: parity max abs diff {facts['segmenter']['parity']['max_abs_diff']:.2e}"
    typer.echo(msg, err=True)


def main() -> None:
    from busi.runtime.errors import run_cli

    run_cli(app)
