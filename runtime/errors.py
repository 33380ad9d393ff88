"""Error types of the runtime: each carries a one-line message naming the file."""

from __future__ import annotations

from pathlib import Path


class BusiError(Exception):
    """Base class for errors that the CLI turns into one line and an exit code."""

    exit_code = 1


class InputError(BusiError):
    """A bad input file (image, mask, DICOM): one line naming the file and the problem."""

    exit_code = 2

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ModelError(BusiError):
    """A model file that cannot be used (missing, corrupt, tampered, without the contract)."""

    exit_code = 2

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class DeviceError(BusiError):
    """The requested execution device cannot be used."""

    exit_code = 1


def run_cli(app) -> None:
    """Run a typer app as a console script: a usage error is one line on stderr (exit 2), not a
    boxed panel; Ctrl-C exits 130; a closed stdout pipe (`| head`) exits 1 quietly."""
    import os
    import sys

    import typer

    # typer >= 0.20 vendors click; older versions use click itself: find the classes either way.
    click_errors = {c.__name__: c for c in typer.BadParameter.__mro__}
    try:
        rv = app(standalone_mode=False)
    except click_errors["UsageError"] as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            app()  # typer's own help page (exit 2)
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        sys.stderr.write(f"error: {e.format_message()}{hint}\n")
        sys.exit(e.exit_code)
    except click_errors["ClickException"] as e:
        sys.stderr.write(f"error: {e.format_message()}\n")
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    except BrokenPipeError:
        os._exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
