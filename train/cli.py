"""`busi-train`: phantoms, check-data, fit, evaluate, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from busi.runtime.cli_options import TYPER, quiet_option, verbose_option, version_option
from busi.runtime.contract import MASK_SOURCES
from busi.runtime.errors import DataError, UsageError
from busi.runtime.log import verbosity_callback
from busi.runtime.model_dir import ModelDir

app = typer.Typer(
    **TYPER,
    no_args_is_help=True,
    help="Train and evaluate the busi masked ResNet50 (research software, not a medical device).",
)


@app.callback()
def _options(
    verbose: int = verbose_option(),
    quiet: bool = quiet_option(),
    version: bool = version_option(),
):
    """Train and evaluate the busi masked ResNet50 (research software, not a medical device)."""
    verbosity_callback(verbose, quiet)


@app.command()
def phantoms(
    out: Path = typer.Option(..., "--out", help="Folder to write <class>/<class> (N).png and masks into."),
    per_class: int = typer.Option(40, "--per-class", min=1, help="Images per class."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed = same images)."),
    dicom: Optional[Path] = typer.Option(None, "--dicom", help="Also write them into this folder as one ultrasound study of a phantom patient, as a PACS exports it."),
    site: str = typer.Option("A", "--site", help="Scanner profile: A (the original phantoms) or B (another hospital's scanner: gain, dynamic range, speckle grain, attenuation, resolution, size, burned-in text, calipers, near-field artefacts)."),
    verbose: int = verbose_option(),  # -v/-q also after the subcommand
    quiet: bool = quiet_option(),
):
    """Write synthetic B-mode breast ultrasound phantoms in the BUSI layout."""
    from .phantoms import site_profile, write_dicom_study, write_phantoms

    try:
        site = site_profile(site).name
    except ValueError as e:
        raise UsageError(str(e)) from None
    counts = write_phantoms(out, per_class, seed, site)
    typer.echo(f"wrote {sum(counts.values())} site-{site} phantoms to {out} ({per_class} per class, seed {seed})", err=True)
    if dicom is not None:
        files = write_dicom_study(dicom, per_class, seed, site)
        typer.echo(f"wrote them as a DICOM study: {len(files)} files in {files[0].parent}", err=True)


@app.command("check-data")
def check_data(
    data: Path = typer.Argument(..., help="BUSI-layout folder: <data>/{benign,malignant,normal}/*.png"),
    as_json: bool = typer.Option(False, "--json", help="Print the full summary as JSON on stdout."),
    distance: int = typer.Option(4, "--distance", min=0, max=64, help="Perceptual-hash Hamming distance for duplicates."),
    verbose: int = verbose_option(),  # -v/-q also after the subcommand
    quiet: bool = quiet_option(),
):
    """Check a data folder: counts, multi-mask images, duplicates, conflicts, per-file problems."""
    from . import dataset as ds

    scan = ds.scan_folder(data)
    ds.inspect(scan)
    ds.group_duplicates(scan, distance)
    s = ds.summary(scan)
    if as_json:
        typer.echo(json.dumps(s, indent=2))
    else:
        out = [f"{s['root']}: {s['images']} images " + ", ".join(f"{k} {v}" for k, v in s["counts"].items())]
        out.append(f"multi-mask images ({len(s['multi_mask'])}): " + ", ".join(s["multi_mask"]))
        out.append(f"duplicate groups ({len(s['duplicate_groups'])}, distance <= {distance}):")
        out += ["  " + " | ".join(g) for g in s["duplicate_groups"]]
        out.append(f"label-conflicting groups ({len(s['conflicting_groups'])}), excluded from every split by default:")
        out += ["  " + " | ".join(g) for g in s["conflicting_groups"]]
        out.append(f"files with problems ({len(s['problems'])}):")
        out += [f"  {p}: {'; '.join(v)}" for p, v in s["problems"].items()]
        if s["orphan_masks"]:
            out.append(f"masks without image ({len(s['orphan_masks'])}): " + ", ".join(s["orphan_masks"]))
        typer.echo("\n".join(out))
    if s["unusable"]:
        typer.echo(f"error: {s['unusable']}", err=True)
        raise typer.Exit(1)  # the summary above is the answer; the verdict exits 1


@app.command()
def fit(
    data: Path = typer.Option(..., "--data", help="BUSI-layout folder (real BUSI or phantoms)."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (model.keras, card.json, report...)."),
    weights: str = typer.Option("imagenet", "--weights", help="imagenet | none | PATH.h5 (ResNet50 no-top weights)."),
    freeze: Optional[bool] = typer.Option(None, "--freeze/--no-freeze", help="Freeze the backbone (default: frozen when pretrained)."),
    mask_source: str = typer.Option("box", "--mask-source", help="box | gt | none: the mask the model is trained with."),
    image_size: int = typer.Option(224, "--image-size", min=32, max=1024, help="Input side in pixels."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Maximum epochs (default 20; 40 with --weights none)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    lr: Optional[float] = typer.Option(None, "--lr", min=0.0, help="Adam learning rate (default 1e-4; 1e-3 with --weights none)."),
    patience: Optional[int] = typer.Option(None, "--patience", min=1, help="Early-stopping patience (default 5; 12 with --weights none)."),
    seed: int = typer.Option(0, "--seed"),
    val_frac: float = typer.Option(0.15, "--val", min=0.01, max=0.5),
    test_frac: float = typer.Option(0.15, "--test", min=0.01, max=0.5),
    distance: int = typer.Option(4, "--distance", min=0, max=64, help="Duplicate grouping distance (bits)."),
    keep_conflicts: bool = typer.Option(False, "--keep-conflicts", help="Keep label-conflicting duplicate groups in train."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Switch augmentation off."),
    scanner_augment: bool = typer.Option(False, "--scanner-augment/--no-scanner-augment", help="Also augment how a scanner shows the tissue: gain, gamma, resolution, blur, noise (the image only)."),
    augment_extra: str = typer.Option("none", "--augment-extra", help="Add to the seed's augmentation: vflip (vertical "
                                      "flip), intensity (brightness, contrast), mixup (MixUp of masked images), comma-separated."),
    near_ood: str = typer.Option("phantoms", "--near-ood", help="Near-OOD set for the out-of-distribution guard's "
                                 "report: a BUSI-layout folder, 'phantoms' (generated; skipped when training on "
                                 "phantoms) or 'none'."),
    fine_tune: str = typer.Option("none", "--fine-tune", help="After the head has converged, also train these "
                                  "backbone stages (batch normalization kept frozen): none | conv5 | conv4,conv5."),
    fine_tune_lr: float = typer.Option(1e-5, "--fine-tune-lr", min=0.0, help="Adam learning rate of the fine-tuning phase."),
    fine_tune_epochs: int = typer.Option(10, "--fine-tune-epochs", min=1, help="Maximum epochs of the fine-tuning phase (same early stopping)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from the weights of a finished model folder trained on the same split "
                                        "(skips the first phase: fine-tune a frozen-recipe model with --fine-tune)."),
    cv: int = typer.Option(0, "--cv", min=0, max=20, help="Choose the operating point on K-fold out-of-fold "
                           "predictions over train + validation (K more fits; recommended for real data, e.g. 5)."),

    strategy: str = typer.Option("default", "--strategy", help="default | mirrored: tf.distribute.MirroredStrategy over this host's GPUs; --batch-size is the global batch (split across them)."),
    precision: str = typer.Option("float32", "--precision", help="float32 | mixed: mixed_float16 on GPU | bf16: mixed_bfloat16 on CPUs with AVX512-BF16/AMX (softmax kept float32); the saved model is float32 either way."),
    cpu_replicas: int = typer.Option(0, "--cpu-replicas", min=0, max=64, help="With --strategy mirrored: split the CPU into this many devices (to test the distributed path without GPUs)."),
    verbose: int = verbose_option(),  # -v/-q also after the subcommand
    quiet: bool = quiet_option(),
):
    """Split the data (duplicate-aware), train the masked ResNet50, evaluate it on the test split."""
    from .fit import FitConfig
    from .fit import fit as run_fit
    from .stages import parse_extra, parse_stages

    try:
        stages = parse_stages(fine_tune)
    except ValueError as e:
        raise UsageError(f"--fine-tune {fine_tune}: {e}") from None
    try:
        extra = parse_extra(augment_extra)
    except ValueError as e:
        raise UsageError(f"--augment-extra {augment_extra}: {e}") from None
    if stages and weights == "none":
        raise UsageError("--fine-tune needs pretrained --weights (imagenet or PATH.h5); --weights none trains the whole backbone already")
    if init is not None and not stages:
        raise UsageError("--init needs --fine-tune STAGES: it replaces the first phase of a fine-tuning run")

    cfg = FitConfig(
        data=str(data), out=str(out), weights=weights, freeze=freeze, mask_source=mask_source,
        image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed,
        val_frac=val_frac, test_frac=test_frac, dup_distance=distance, keep_conflicts=keep_conflicts,
        augment=not no_augment, scanner_augment=scanner_augment, augment_extra=",".join(extra) or "none",
        near_ood=near_ood, cv=cv, strategy=strategy, precision=precision, cpu_replicas=cpu_replicas, fine_tune=",".join(stages) or "none", fine_tune_lr=fine_tune_lr,
        fine_tune_epochs=fine_tune_epochs, init=str(init) if init else None,
    )
    if cv == 1:
        raise UsageError("--cv 1: give 0 (the validation split) or at least 2 folds")
    if near_ood not in ("phantoms", "none") and not Path(near_ood).is_dir():
        raise UsageError(f"--near-ood {near_ood}: not a folder (or 'phantoms', 'none')")
    if mask_source not in MASK_SOURCES:
        raise UsageError(f"--mask-source must be {', '.join(MASK_SOURCES)}, not {mask_source!r}")
    path = run_fit(cfg)
    md = ModelDir(path)
    report = json.loads(md.report_json.read_text())
    from .report import results_table

    typer.echo(results_table(report), err=True)
    typer.echo(f"model: {md.keras}\nreport: {md.report_md}", err=True)


@app.command()
def segmenter(
    data: Path = typer.Option(..., "--data", help="BUSI-layout folder (the classifier's --data)."),
    out: Path = typer.Option(..., "--out", help="Model folder: the classifier's (its split is reused), or a new one."),
    image_size: int = typer.Option(256, "--image-size", min=32, max=1024, help="Input side in pixels, divisible by 16 (128: a quarter of the cost, somewhat lower Dice; docs/model.md)."),
    epochs: int = typer.Option(60, "--epochs", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr", min=0.0),
    patience: int = typer.Option(30, "--patience", min=1, help="Early-stopping patience (best validation weights restored; 10 stopped the 256 px U-Net before its validation loss settled)."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Lesion probability threshold."),
    min_area: float = typer.Option(0.002, "--min-area", min=0.0, max=1.0, help="Smallest lesion, as a fraction of the image."),
    seed: int = typer.Option(0, "--seed"),
    no_augment: bool = typer.Option(False, "--no-augment", help="Switch augmentation off."),
    scanner_augment: bool = typer.Option(True, "--scanner-augment/--no-scanner-augment", help="Also augment how a scanner shows the tissue: gain, gamma, resolution, blur, noise (the image only). On by default: on site-B phantoms it raised the segmenter's Dice from 0.64 to 0.84."),

    strategy: str = typer.Option("default", "--strategy", help="default | mirrored: tf.distribute.MirroredStrategy over this host's GPUs; --batch-size is the global batch (split across them)."),
    precision: str = typer.Option("float32", "--precision", help="float32 | mixed: mixed_float16 on GPU | bf16: mixed_bfloat16 on CPUs with AVX512-BF16/AMX (softmax kept float32); the saved model is float32 either way."),
    cpu_replicas: int = typer.Option(0, "--cpu-replicas", min=0, max=64, help="With --strategy mirrored: split the CPU into this many devices (to test the distributed path without GPUs)."),
    verbose: int = verbose_option(),  # -v/-q also after the subcommand
    quiet: bool = quiet_option(),
):
    """Train the lesion segmenter for --mask auto (U-Net), report Dice/IoU, re-evaluate the classifier with auto."""
    from .fit_segmenter import SegConfig, train_segmenter

    if image_size % 16:
        raise UsageError(f"--image-size {image_size}: must be divisible by 16")
    cfg = SegConfig(data=str(data), out=str(out), image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr,
                    patience=patience, seed=seed, threshold=threshold, min_area_frac=min_area, augment=not no_augment,
                    scanner_augment=scanner_augment, strategy=strategy, precision=precision, cpu_replicas=cpu_replicas)
    path = train_segmenter(cfg)
    md = ModelDir(path)
    typer.echo(f"segmenter: {md.segmenter_keras} (card {md.segmenter_card})", err=True)
    if md.report_json.is_file():
        from .report import results_table

        typer.echo(results_table(json.loads(md.report_json.read_text())), err=True)


@app.command()
def evaluate(
    model_dir: Path = typer.Argument(..., help="Model folder written by `busi-train fit`."),
    data: Path = typer.Option(..., "--data", help="BUSI-layout folder to evaluate on (an external set)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the report (default MODEL_DIR/eval-<data name>)."),
    seed: int = typer.Option(0, "--seed"),
    verbose: int = verbose_option(),  # -v/-q also after the subcommand
    quiet: bool = quiet_option(),
):
    """Evaluate a trained model on every usable image of a BUSI-layout folder."""
    from .evaluate import evaluate_folder

    path = evaluate_folder(model_dir, data, out, seed)
    from .report import results_table

    typer.echo(results_table(json.loads(ModelDir(path).report_json.read_text())), err=True)
    typer.echo(f"report: {ModelDir(path).report_md}", err=True)


@app.command()
def report(
    model_dir: Path = typer.Argument(..., help="Model folder with report.json."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="Markdown file to update between the block's markers (docs/results.md holds the results blocks)."),
    block: str = typer.Option("results", "--block", help="Which block: 'results' (<!-- results:start -->) or another NAME (<!-- NAME:start --> ... <!-- NAME:end -->)."),
    verbose: int = verbose_option(),  # -v/-q also after the subcommand
    quiet: bool = quiet_option(),
):
    """Print the results table of a model folder or evaluation folder (and write it into a Markdown file)."""
    from .report import results_table, segmenter_line, update_readme

    rp = ModelDir(model_dir).report_json
    if not rp.is_file():
        raise DataError(f"{rp}: not found (train first: make train)")
    rep = json.loads(rp.read_text())
    typer.echo(results_table(rep) + "\n" + segmenter_line(rep))
    if readme is not None and not update_readme(readme, rep, str(model_dir), block):
        raise UsageError(f"{readme}: no {block} markers found")


@app.command()
def compare(
    model_dirs: list[Path] = typer.Argument(..., help="Model folders written by `busi-train fit` on the same split."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="Markdown file to write the table into, between <!-- BLOCK:start --> and <!-- BLOCK:end --> (docs/results.md)."),
    block: str = typer.Option("compare", "--block", help="The block's name."),
):
    """Recipes side by side: validation figures (where a recipe is chosen) and test figures."""
    from .report import compare_table, replace_block

    for d in model_dirs:
        for name in ("report.json", "card.json", "predictions.csv"):
            if not (d / name).is_file():
                raise DataError(f"{d / name}: not found (a folder written by busi-train fit)")
    fps = {json.loads((d / "report.json").read_text())["data_fingerprint"] for d in model_dirs}
    if len(fps) > 1:
        raise UsageError("the model folders were trained on different data or splits: their figures do not compare")
    table = compare_table(model_dirs)
    typer.echo(table)
    cmd = "busi-train compare " + " ".join(map(str, model_dirs)) + f" --readme {readme} --block {block}"
    if readme is not None and not replace_block(readme, block, f"_Written by `{cmd}`._\n\n{table}\n"):
        raise UsageError(f"{readme}: no {block} markers found")


def main() -> None:
    from busi.runtime.errors import run_cli

    run_cli(app)
