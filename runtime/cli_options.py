"""What every busi command shares: `--version`, `-v/--verbose`, `-q/--quiet` (before or after
a subcommand), the help panels' names and typer's settings."""

from __future__ import annotations

import sys
from importlib import metadata

import typer

from .log import verbosity_callback

#: typer.Typer(**TYPER): shell completion on, one error line instead of a traceback panel
TYPER = dict(add_completion=True, pretty_exceptions_enable=False)

#: help panels (typer's rich_help_panel), in the order the commands use them
INPUT, MASK, OUTPUT, MODEL, DICOM, SERVER, LOG = "Input", "Mask", "Output", "Model", "DICOM", "Server", "Log and version"


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def version_text(prog: str) -> str:
    """'busi-infer 0.1.0 (model contract 5, onnxruntime 1.31.1)': what a bug report needs."""
    from .contract import CONTRACT_VERSION

    ort = _dist_version("onnxruntime-gpu", "onnxruntime", "onnxruntime-openvino", "onnxruntime-directml")
    return (f"{prog} {_dist_version('busi') or 'unknown'} (model contract {CONTRACT_VERSION}, "
            f"onnxruntime {ort or 'not installed'}, Python {sys.version.split()[0]})")


def _show_version(ctx: typer.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        typer.echo(version_text(ctx.find_root().info_name or "busi"))
        raise typer.Exit(0)


def version_option():
    return typer.Option(False, "--version", callback=_show_version, is_eager=True, rich_help_panel=LOG,
                        help="Show the busi, model-contract and onnxruntime versions and exit.")


def _verbose(ctx: typer.Context, value: int) -> int:
    if value and not ctx.resilient_parsing:  # after a subcommand it adds to what came before it
        verbosity_callback(value, False)
    return value


def _quiet(ctx: typer.Context, value: bool) -> bool:
    if value and not ctx.resilient_parsing:
        verbosity_callback(0, True)
    return value


def verbose_option():
    return typer.Option(0, "--verbose", "-v", count=True, callback=_verbose, rich_help_panel=LOG,
                        help="More detail in the log (debug).")


def quiet_option():
    return typer.Option(False, "--quiet", "-q", callback=_quiet, rich_help_panel=LOG,
                        help="Errors only: no notices, no summary line.")


def token_option(panel: str | None = None):
    """`--token` (or $BUSI_TOKEN): the bearer token for --server (busi-infer, busi-node)."""
    return typer.Option(None, "--token", envvar="BUSI_TOKEN", help="Bearer token for --server (default: $BUSI_TOKEN).",
                        rich_help_panel=panel)


def expect_sha256_option(panel: str | None = None):
    """`--expect-sha256`: the digest a model (local or served) must have (busi-infer, busi-node)."""
    return typer.Option(None, "--expect-sha256", help="Refuse a model (local or served) whose sha256 is another.",
                        rich_help_panel=panel)


def early_version(prog: str) -> None:
    """`--version` answered before a command checks for its extra (busi-node without pynetdicom)."""
    if "--version" in sys.argv[1:]:
        print(version_text(prog))
        raise SystemExit(0)
