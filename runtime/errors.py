"""busi's errors: one root (`BusiError`), one line each, and the exit code the CLIs use.

| error | raised by | exit |
|---|---|---|
| `UsageError` | any CLI: options that contradict each other | 2 |
| `InputError` | an image, mask or DICOM that cannot be used | 2 |
| `ModelError` | a model file that cannot be used | 2 |
| `OutputError` | an output that busi refuses to write (a device, an input) | 2 |
| `WriteError` | an output that could not be written (disk full, stdout closed) | 1 |
| `DataError` | a training/evaluation data folder that cannot be used | 2 |
| `WeightsUnavailable` | backbone weights that cannot be loaded | 2 |
| `ExportUsageError` | a model folder that cannot be exported | 2 |
| `DeviceError` | `--device cuda` where CUDA does not work | 1 |
| `ServerError` | an inference server (`--server`) that cannot be reached or answers with an error | 1 |
| `ExportError` | a conversion or a parity gate that failed | 1 |
| `Int8GateRefused` | every INT8 calibration failed its accuracy gate | 1 |

`run_cli` prints `error: <message>` and exits with the error's code; a command that goes on
after a per-file error (busi-infer on a batch) exits 1.
"""

from __future__ import annotations

from pathlib import Path


def first_line(e: BaseException | str, limit: int = 160) -> str:
    """The first line of an exception's message, or of a text (at most `limit` characters); '' when it has none."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else ""


def describe(e: BaseException, limit: int = 160) -> str:
    """How busi names a library's exception in one line: 'TypeName: first line', or the type alone."""
    msg = first_line(e, limit)
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


#: what a NaN or infinity in a model's outputs means: that image's failure (or the model refused
#: at load when a fixed test input gives it), never a class
NOT_FINITE = "model output is not finite: the model file is damaged or was exported wrongly"


class BusiError(Exception):
    """Base class for errors that the CLI turns into one line and an exit code."""

    exit_code = 1


class PathError(BusiError):
    """An error about one file: one line, `path: problem`."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InputError(PathError):
    """A bad input file (image, mask, DICOM): one line naming the file and the problem."""

    exit_code = 2


class ModelError(PathError):
    """A model file that cannot be used (missing, corrupt, tampered, without the contract)."""

    exit_code = 2


class OutputError(PathError):
    """An output target that busi refuses to write (a device, a FIFO, a folder, an input)."""

    exit_code = 2


class WriteError(OutputError):
    """An output that could not be written (a full disk, a closed stdout): the run failed."""

    exit_code = 1


class UsageError(BusiError):
    """Options that cannot be used together, or a value that makes no sense (exit 2)."""

    exit_code = 2


class DeviceError(BusiError):
    """The requested execution device cannot be used."""

    exit_code = 1


class ServerError(BusiError):
    """An inference server (the remote backend) that cannot be reached or answered with an
    error: one line naming the server and the model."""

    exit_code = 1


class DataError(BusiError):
    """A data folder (training or evaluation) cannot be used: one line naming the folder or file."""

    exit_code = 2


class WeightsUnavailable(BusiError):
    """Backbone weights that cannot be downloaded or loaded."""

    exit_code = 2


class ExportError(BusiError):
    """Export failed (a conversion, a checker or a parity gate), with a one-line reason."""

    exit_code = 1


class ExportUsageError(ExportError):
    """A model folder that cannot be exported (missing, incomplete, unreadable)."""

    exit_code = 2


class Int8GateRefused(ExportError):
    """Every INT8 calibration failed its gate: model.onnx is written, model.int8.onnx is not.
    `figures` holds what each calibration measured."""

    def __init__(self, message: str, figures: list[dict]):
        super().__init__(message)
        self.figures = figures


class _ClosedStream:
    """Stands in for a standard stream that was closed when the process started (`>&-`):
    writing to it raises OSError, which the CLIs turn into one error line."""

    def __init__(self, name: str):
        self.name = name

    def write(self, _text):
        raise OSError(9, f"{self.name} is closed")

    def flush(self):
        pass

    def isatty(self):
        return False


def guard_standard_streams() -> None:
    """Before anything is opened: a closed descriptor 0, 1 or 2 is re-opened on /dev/null, so
    that no file we open later lands on it (results written into a temp file by a stray
    print). A closed stderr then swallows notices; a closed stdout fails loudly at the first
    result. File names that are not UTF-8 go to stdout as the bytes they were."""
    import os
    import sys

    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            if fd == 1:
                sys.stdout = _ClosedStream("stdout")
            elif fd == 2:
                sys.stderr = open(os.devnull, "w")
    if sys.stdout is None:
        sys.stdout = _ClosedStream("stdout")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")


def run_cli(app) -> None:
    """Run a typer app as a console script: a usage error is one line on stderr (exit 2), not a
    boxed panel; Ctrl-C exits 130; a closed stdout pipe (`| head`) exits 1 quietly; closed or
    full standard streams give one line, not a traceback."""
    import os
    import sys

    import typer

    guard_standard_streams()
    # typer >= 0.20 vendors click; older versions use click itself: find the classes either way.
    click_errors = {c.__name__: c for c in typer.BadParameter.__mro__}
    try:
        # the console script's own name (also under `python -m busi COMMAND`, which sets argv[0])
        rv = app(standalone_mode=False, prog_name=os.path.basename(sys.argv[0]) or None)
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
    except OutputError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.stderr.flush()
        os._exit(e.exit_code)  # no second flush into a full stdout at exit
    except BusiError as e:  # anything the command itself did not turn into a record
        sys.stderr.write(f"error: {e}\n")
        sys.exit(e.exit_code)
    except OSError as e:  # a file system error no command foresaw: one line, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"error: {where}{e.strerror or e}\n")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
