"""The node's spool: what it has acknowledged and not yet finished survives a crash.

    SPOOL/incoming/<SOPInstanceUID>.dcm   received and acknowledged, waiting for the classifier
    SPOOL/outgoing/<SOPInstanceUID>.<sr|sc|seg>.dcm   results waiting for the destination
    SPOOL/done/<SOPInstanceUID>.json      what became of an instance (classified, skipped, failed)
    SPOOL/failed/<SOPInstanceUID>.dcm     instances that could not be classified, kept for a person
    SPOOL/studies/<StudyInstanceUID>/     the headers of its classified images and summary.json:
                                          what its last study summary covered

Every file is written to a temporary name in the same folder, flushed to disk and renamed, so
a reader sees a whole file or none. An instance is removed from incoming only after its
results are in outgoing and its record in done: a restart redoes at most the one in flight,
and the deterministic UIDs of the results make a redo replace, not duplicate.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

_SAFE = re.compile(r"^[0-9.]{1,64}$")


def safe_name(uid: str) -> str:
    """A UID as a file name; anything that is not a plain UID is refused (no path tricks)."""
    uid = str(uid).strip()
    if not _SAFE.match(uid):
        raise ValueError(f"{uid[:80]!r} is not a DICOM UID")
    return uid


def durable_write(path: Path, data: bytes) -> None:
    """Write, fsync, rename: all or nothing at `path` (OSError on a full disk, nothing left behind)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Spool:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.incoming, self.outgoing = self.root / "incoming", self.root / "outgoing"
        self.done, self.failed = self.root / "done", self.root / "failed"
        self.studies = self.root / "studies"
        for d in (self.incoming, self.outgoing, self.done, self.failed, self.studies):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.incoming, self.outgoing, self.done):  # temp files of a crash mid-write
            for t in d.glob(".*"):
                if t.is_file():
                    t.unlink(missing_ok=True)

    def receive(self, sop_uid: str, data: bytes) -> Path:
        path = self.incoming / f"{safe_name(sop_uid)}.dcm"
        durable_write(path, data)
        return path

    def waiting(self) -> list[Path]:
        """Received instances not finished yet, oldest first."""
        files = [p for p in self.incoming.glob("*.dcm") if not p.name.startswith(".")]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def to_send(self) -> list[Path]:
        return sorted(p for p in self.outgoing.glob("*.dcm") if not p.name.startswith("."))  # not temp files

    def is_done(self, sop_uid: str) -> bool:
        return (self.done / f"{safe_name(sop_uid)}.json").exists()

    def finish(self, incoming: Path, record: dict, keep: bool = False) -> None:
        """Record what became of an instance, then take it out of incoming (into failed/ with `keep`)."""
        durable_write(self.done / f"{incoming.stem}.json", (json.dumps(record) + "\n").encode())
        if keep:
            os.replace(incoming, self.failed / incoming.name)
        else:
            incoming.unlink(missing_ok=True)

    # ---- studies --------------------------------------------------------------------------
    def keep_header(self, study_uid: str, sop_uid: str, data: bytes) -> None:
        d = self.studies / safe_name(study_uid)
        d.mkdir(exist_ok=True)
        durable_write(d / f"{safe_name(sop_uid)}.dcm", data)

    def study_headers(self, study_uid: str) -> list[Path]:
        return sorted(p for p in (self.studies / safe_name(study_uid)).glob("*.dcm") if not p.name.startswith("."))

    def summary_state(self, study_uid: str) -> dict:
        p = self.studies / safe_name(study_uid) / "summary.json"
        return json.loads(p.read_text()) if p.is_file() else {"sops": [], "version": 0}

    def set_summary_state(self, study_uid: str, state: dict) -> None:
        durable_write(self.studies / safe_name(study_uid) / "summary.json", (json.dumps(state) + "\n").encode())

    def unsummarised(self) -> list[str]:
        """Studies with classified images that their last summary does not cover (after a restart)."""
        out = []
        for d in self.studies.iterdir():
            if d.is_dir() and sorted(p.stem for p in self.study_headers(d.name)) != self.summary_state(d.name)["sops"]:
                out.append(d.name)
        return out
