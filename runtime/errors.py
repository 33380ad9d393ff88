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
