"""Where a model came from: the git commit of this code and the versions of the libraries."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> str:
    """UTC, to the second (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions(*modules: str) -> dict[str, str]:
    """{distribution: version} of the named, already importable modules, plus Python."""
    import importlib

    out = {}
    for name in modules:
        mod = importlib.import_module(name)
        out["scikit-learn" if name == "sklearn" else name] = getattr(mod, "__version__", "unknown")
    out["python"] = sys.version.split()[0]
    return out
