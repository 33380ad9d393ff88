"""The node's spool: what it has acknowledged and not yet finished survives a crash.

    SPOOL/incoming/<SOPInstanceUID>.dcm   received and acknowledged, waiting for the classifier
    SPOOL/outgoing/<SOPInstanceUID>/<SOPInstanceUID>.<sr|sc|seg>.dcm   an image's results waiting
                                          for the destination (committed together: written into
                                          SPOOL/staging/, then the folder renamed into outgoing)
    SPOOL/outgoing/<UID>.study.dcm        study summaries waiting for the destination
    SPOOL/done/<SOPInstanceUID>.json      what became of an instance (classified, skipped, failed)
    SPOOL/failed/<SOPInstanceUID>.dcm     instances that could not be classified, kept for a person
    SPOOL/failed/results/<name>.dcm(.json)  results the destination refused for good, with its status
    SPOOL/studies/<StudyInstanceUID>/     the headers of its classified images and summary.json:
                                          what its last study summary covered

Every file is written to a temporary name in the same folder, flushed to disk and renamed, so
a reader sees a whole file or none. An instance is removed from incoming only after its
results are in outgoing and its record in done: a restart redoes what the worker had in hand
(a batch or two), and the deterministic UIDs of the results make a redo replace, not duplicate.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

_SAFE = re.compile(r"^[0-9.]{1,64}$")


def safe_name(uid: str) -> str:
    """A UID as a file name; anything that is not a plain UID is refused (no path tricks)."""
    uid = str(uid).strip()
    if not _SAFE.match(uid):
        raise ValueError(f"{uid[:80]!r} is not a DICOM UID")
    return uid


def is_uid(uid) -> bool:
    return bool(_SAFE.match(str(uid).strip()))


def durable_write(path: Path, data: bytes, check=None) -> str | None:
    """Write, fsync, rename: all or nothing at `path` (OSError on a full disk, nothing left
    behind). `check(written)`: why the file as written and read back must not take the place
    of `path` (then it does not, and that reason is returned), or None."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        problem = check(Path(tmp)) if check is not None else None
        if problem:
            os.unlink(tmp)
            return problem
        os.replace(tmp, path)
        return None
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
        self.studies, self.staging = self.root / "studies", self.root / "staging"
        self.refused = self.failed / "results"
        for d in (self.incoming, self.outgoing, self.done, self.failed, self.studies, self.staging, self.refused):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.incoming, self.outgoing, self.done, *self.outgoing.iterdir()):  # temp files of a crash mid-write
            if d.is_dir():
                for t in d.glob(".*"):
                    if t.is_file():
                        t.unlink(missing_ok=True)
        shutil.rmtree(self.staging, ignore_errors=True)  # results of a crash mid-write: redone with their image
        self.staging.mkdir(exist_ok=True)

    def receive(self, sop_uid: str, data: bytes, check=None) -> str | None:
        """Into incoming, unless `check` (on the copy read back from disk) says why not; a
        copy that fails it never replaces one received before."""
        return durable_write(self.incoming / f"{safe_name(sop_uid)}.dcm", data, check)

    def waiting(self) -> list[Path]:
        """Received instances not finished yet, oldest first."""
        files = []
        for p in self.incoming.glob("*.dcm"):
            if p.name.startswith("."):
                continue
            try:  # the worker may take it out between the listing and here
                files.append((p.stat().st_mtime_ns, p.name, p))
            except FileNotFoundError:
                continue
        return [p for *_, p in sorted(files)]

    def to_send(self) -> list[Path]:
        """Results waiting for the destination (not temp files), an image's together."""
        found = glob.glob(str(self.outgoing / "*.dcm")) + glob.glob(str(self.outgoing / "*" / "*.dcm"))
        return sorted(Path(p) for p in found)  # glob skips temp files (.name) and folders that vanish meanwhile

    def stage(self) -> Path:
        """An empty folder for an image's results, on the spool's file system."""
        return Path(tempfile.mkdtemp(dir=self.staging))

    def commit(self, sop_uid: str, staged: Path) -> None:
        """An image's results into outgoing, all of them or none: one rename of their folder (a
        redo of the same image replaces its files: the UIDs are deterministic)."""
        final = self.outgoing / safe_name(sop_uid)
        try:
            os.rename(staged, final)
        except OSError:
            if not final.is_dir():
                raise
            for f in staged.iterdir():
                os.replace(f, final / f.name)
            staged.rmdir()

    def sent(self, result: Path) -> None:
        """A result the destination acknowledged: out of the spool (and its image's folder when empty)."""
        result.unlink(missing_ok=True)
        if result.parent != self.outgoing:
            try:
                result.parent.rmdir()
            except OSError:
                pass

    def set_aside(self, result: Path, record: dict) -> None:
        """A result the destination refused for good: into failed/results with what it answered."""
        durable_write(self.refused / f"{result.name}.json", (json.dumps(record) + "\n").encode())
        os.replace(result, self.refused / result.name)
        if result.parent != self.outgoing:
            try:
                result.parent.rmdir()
            except OSError:
                pass

    def is_done(self, sop_uid: str) -> bool:
        return (self.done / f"{safe_name(sop_uid)}.json").exists()

    def finish(self, incoming: Path, record: dict, keep: bool = False) -> None:
        """Record what became of an instance, then take it out of incoming (into failed/ with `keep`)."""
        durable_write(self.done / f"{incoming.stem}.json", (json.dumps(record, allow_nan=False) + "\n").encode())
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
