"""busi-infer's outputs as sinks with one interface: `add(result, record)` for each result in
order, `close()` at the end. `add` returns the one-line problem when this image's output could
not be written (the image keeps its class; its record says which output failed, and the run
goes on); `failed` counts them. The records sink comes last: the others add to the record
(`output_error`, `dicom_output_error`, the DICOM notes) before it is written."""

from __future__ import annotations

import sys
from pathlib import Path

from .atomic import atomic_write_text, output_target
from .errors import InputError, OutputError, UsageError, WriteError
from .log import get as get_logger
from .records import Format, json_line, render, study_summaries
from .results import NEEDS_ROI, PREDICTION

_LOG = get_logger(__name__)


class Sink:
    failed = 0

    def add(self, result, record: dict) -> str | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class RecordSink(Sink):
    """JSON lines (streamed to stdout as they come), CSV or a table; to stdout or, atomically,
    to --out; with `by_study`, one summary record per DICOM study after the images."""

    def __init__(self, fmt: Format, out: Path | None, final: Path | None, by_study: bool):
        self.fmt, self.out, self.final, self.by_study = fmt, out, final, by_study
        self.stream = out is None and fmt is Format.jsonl
        self.records: list[dict] = []

    def add(self, result, record: dict) -> None:
        self.records.append(record)
        if self.stream:
            emit(json_line(record))

    def close(self) -> None:
        if self.by_study:
            summaries = study_summaries(self.records)
            self.records += summaries
            if self.stream:
                emit("".join(json_line(x) for x in summaries))
        text = render(self.records, self.fmt)
        if self.final is not None:
            try:
                atomic_write_text(self.final, text)
            except OSError as e:
                raise WriteError(self.out, f"cannot write ({e.strerror or e})") from None
        elif not self.stream:
            emit(text)


class HtmlSink(Sink):
    """--report: the self-contained HTML case report, written at the end."""

    def __init__(self, report: Path, final: Path, model, predictor):
        from .html_report import HtmlReport

        self.report, self.final = report, final
        self.html = HtmlReport(report, model, predictor.info, predictor.threshold, predictor.provider)

    def add(self, result, record: dict) -> None:
        self.html.add(result)

    def close(self) -> None:
        try:
            self.html.write(self.final)
        except OSError as e:
            raise WriteError(self.report, f"cannot write ({e.strerror or e})") from None


class GradcamSink(Sink):
    """--explain: <stem>.gradcam.png (Grad-CAM of the predicted class over the image) per
    classified image, atomically; a second image with the same stem gets -2, -3, ..."""

    def __init__(self, folder: Path, sources=()):
        self.folder, self.sources = folder, sources
        self.written: set[str] = set()
        self.failed = 0

    def add(self, result, record: dict) -> str | None:
        if result.kind != PREDICTION:
            return None
        try:
            self._write(result)
            return None
        except OutputError as e:
            problem = str(e)
        except OSError as e:
            problem = f"{self.folder}: cannot write the Grad-CAM overlay of {result.path} ({e.strerror or e})"
        record["output_error"] = problem
        self.failed += 1
        return problem

    def _write(self, r) -> Path:
        import cv2

        from .atomic import atomic_write_bytes
        from .gradcam import mark_png, overlay
        from .outputs import GRADCAM_SUFFIX, safe_name

        stem = Path(r.path).stem if r.path else "image"
        name, k = safe_name(stem, GRADCAM_SUFFIX), 2
        while name in self.written:
            name, k = safe_name(f"{stem}-{k}", GRADCAM_SUFFIX), k + 1
        self.written.add(name)
        final = output_target(self.folder / name, self.sources)
        ok, png = cv2.imencode(".png", cv2.cvtColor(overlay(r.extras["view"], r.extras["cam"]), cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"cannot encode {final}")
        atomic_write_bytes(final, mark_png(png.tobytes()))
        return final


class DicomSink(Sink):
    """--dicom-out: SR, SC and SEG for each DICOM result (busi.runtime.dicom_out), an SR that
    says so for an abstained one; PNG and JPEG inputs get none, which is said once."""

    def __init__(self, folder: Path, options: str, strict: bool = False):
        """`strict` (busi-node): what keeps a result's objects from being written is raised, for
        the caller to decide (busi-node defers an image a full disk stopped and fails one whose
        source cannot have DICOM output); busi-infer's default records it with the result."""
        import importlib.util

        if importlib.util.find_spec("highdicom") is None:
            raise UsageError("--dicom-out needs highdicom: pip install 'busi[dicom]'")
        self.folder, self.options, self.strict = folder, options, strict
        self.written: list[Path] = []
        self.not_dicom = 0
        self.failed = 0

    def add(self, result, record: dict) -> str | None:
        if result.kind not in (PREDICTION, NEEDS_ROI):
            return None
        problem = self._write(result)
        record["notes"] = list(result.notes)
        if problem:
            record["dicom_output_error"] = problem
            self.failed += 1
        return problem

    def _write(self, r) -> str | None:
        """Write the objects for one result; the error line when its source cannot have any."""
        from .dicom_out import write

        if r.dicom is None:
            if not self.not_dicom:
                _LOG.warning("busi: PNG and JPEG inputs get no DICOM output (--dicom-out): they carry no patient or study")
            self.not_dicom += 1
            return None
        notes: list[str] = []
        try:
            self.written += write(r, r.path, self.folder, options=self.options, notes=notes)
        except Exception as e:
            if self.strict:
                raise
            return self._problem(r, e)
        finally:  # what was done to the source's values to write them (a value left empty, a date rewritten)
            r.notes.extend(f"DICOM output: {n}" for n in notes)
        return None

    def _problem(self, r, e: Exception) -> str:
        """The record's dicom_output_error: never let one source's output stop the batch."""
        if isinstance(e, (InputError, OutputError)):  # this source cannot have DICOM output, or it could not be written
            return str(e)
        if isinstance(e, OSError):
            return f"{self.folder}: cannot write the DICOM output of {r.path} ({e.strerror or e})"
        from .dicom import dicom_problem

        return f"{r.path}: DICOM output not written ({dicom_problem(e)})"

    def summary(self) -> str:
        kinds = {}
        for p in self.written:
            kinds[p.suffixes[-2][1:]] = kinds.get(p.suffixes[-2][1:], 0) + 1
        what = ", ".join(f"{n} {k.upper()}" for k, n in kinds.items()) or "nothing"
        return f"DICOM output in {self.folder}: {what}"


def emit(text: str) -> None:
    """Write machine-readable output to stdout now; a full, closed or broken stdout becomes
    one OutputError line instead of a traceback (results are not silently lost)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError, AttributeError) as e:
        reason = getattr(e, "strerror", None) or "closed"
        raise WriteError("stdout", f"cannot write the results ({reason}); use --out FILE") from None
