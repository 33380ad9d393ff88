"""The node: a Storage SCP (pynetdicom) in front of a spool, a worker that classifies what the
spool holds, and a Storage SCU that delivers the results to the destination.

Threads: pynetdicom's (one per association) only write to the spool and answer; one worker
runs the Predictor on batches of what waits (busi.node.batching: decoding and writing results
in threads of their own), so a slow model never holds an association open; one sender delivers,
with a backoff, whatever sits in `outgoing`. Everything between them is a file in the spool,
so a restart resumes where the last run stopped.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

from busi.runtime.dicom_identity import options as uid_options
from busi.runtime.errors import BusiError, UsageError, describe
from busi.runtime.log import get as get_logger
from busi.runtime.log import write_stderr
from busi.runtime.results import NEEDS_ROI
from busi.runtime.study import summarise_study

from .batching import BatchWorker, model_threads
from .config import NodeConfig
from .spool import Spool, durable_write, is_uid, safe_name

_LOG = get_logger(__name__)

# C-STORE statuses (PS3.4 B.2.3): 0xA7xx is "try again later", 0xCxxx (like 0xA9xx) "never"
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
#: SOP classes whose instances carry pixel data that the node checks before it acknowledges
IMAGE_CLASSES = {"1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.7",
                 "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4"}
#: what a PACS sends with a breast-ultrasound study: the images, and derived objects (busi's own
#: and others'), so that pushing a whole study never fails on them
STORAGE_CLASSES = (
    "UltrasoundImageStorage", "UltrasoundMultiFrameImageStorage", "SecondaryCaptureImageStorage",
    "MultiFrameTrueColorSecondaryCaptureImageStorage", "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
    "BasicTextSRStorage", "EnhancedSRStorage", "ComprehensiveSRStorage", "Comprehensive3DSRStorage",
    "SegmentationStorage", "GrayscaleSoftcopyPresentationStateStorage", "EncapsulatedPDFStorage",
)


def refusal(status: int, comment: str):
    """A C-STORE response with its status and a short reason (Error Comment, LO: 64 characters)."""
    from pydicom.dataset import Dataset

    rsp = Dataset()
    rsp.Status = status
    rsp.ErrorComment = comment[:64]
    return rsp


def pixel_problem(ds) -> str | None:
    """Why the pixel data of `ds` (as received) cannot be whole, or None: native
    data at least Rows x Columns x frames x samples x bits long, encapsulated data a complete
    fragment sequence with a fragment per frame. Nothing is decoded (that is the worker's)."""
    if "PixelData" not in ds:
        return "no pixel data (cut short?)" if str(ds.get("SOPClassUID", "")) in IMAGE_CLASSES or "Rows" in ds else None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as e:
        return f"pixel description incomplete ({describe(e)})"
    data = ds.PixelData
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_encapsulated:
        items, off = [], 0
        while off + 8 <= len(data):  # the item sequence (PS3.5 A.4), walked without decoding
            length = int.from_bytes(data[off + 4:off + 8], "little")
            if data[off:off + 4] != b"\xfe\xff\x00\xe0" or off + 8 + length > len(data):
                return f"encapsulated pixel data cut short ({len(data):,} bytes, an item runs past the end)"
            items.append(data[off + 8:off + 8 + length])
            off += 8 + length
        if off != len(data) or len(items) - 1 < frames:  # the first item is the offset table; a frame >= 1 fragment
            return f"encapsulated pixel data cut short ({max(0, len(items) - 1)} fragment(s) for {frames} frame(s))"
        if str(syntax).startswith("1.2.840.10008.1.2.4.") and b"\xff\xd9" not in items[-1][-3:]:
            return "encapsulated pixel data cut short (the last JPEG stream has no end marker)"
        return None
    expected = (rows * cols * frames * samples * bits + 7) // 8
    if len(data) < expected:
        return f"pixel data {len(data):,} bytes, {rows}x{cols}x{frames} frame(s)x{samples} sample(s)x{bits} bits need {expected:,}"
    return None


def encoded(ds) -> bytes:
    """A dataset as the bytes of a DICOM file (preamble, file meta, dataset)."""
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Node(BatchWorker):
    def __init__(self, cfg: NodeConfig, out=None):
        from busi.runtime.options import PredictorOptions
        from busi.runtime.predictor import Predictor
        from busi.runtime.session import cap_threads, low_peak_loading

        self.cfg = cfg
        self._out = out or sys.stdout
        self._out_lock = threading.Lock()
        self.spool = Spool(cfg.spool)
        threads = model_threads(cfg.threads)  # --threads above the cores: the session caps it and says so
        #: the model's threads as its session gets them (the cap applied): what the start line says
        self.threads = cap_threads(threads)
        with low_peak_loading():  # as busi-infer loads: what ORT frees while loading goes back (~150 MB here)
            self.predictor = Predictor(cfg.model, PredictorOptions(
                threads=threads, max_pixels=cfg.max_pixels, max_bytes=cfg.max_bytes, segmenter=cfg.segmenter,
                notice=lambda m: _LOG.warning(m), server=cfg.server, token=cfg.token, expect_sha256=cfg.expect_sha256))
            self.mask = cfg.mask or ("auto" if self._has_segmenter() else "none")
            if self.mask == "auto":
                _ = self.predictor.segmenter  # loaded now (not by the first image's decoding thread), checked at start
        #: the option string busi-infer uses for the same settings: the same deterministic UIDs
        self.options = uid_options(self.mask, None, False, "all")
        self.counts = {k: 0 for k in ("received", "refused", "classified", "needs_roi", "skipped", "failed", "sent",
                                      "summarised", "deferred")}
        self._stop = threading.Event()
        self._work = threading.Event()
        self._send = threading.Event()
        #: set when the worker or the sender died: the SCP refuses, the process exits non-zero
        self.died = threading.Event()
        self.death: str | None = None
        self._threads: list[threading.Thread] = []
        self._server = None
        self._lock = threading.Lock()
        self._waiting = len(self.spool.waiting())
        #: result file -> sends the destination refused with a transient status
        self._tries: dict[str, int] = {}
        #: study UID -> when it last got a classified image (studies waiting for their summary)
        self._studies = {uid: time.monotonic() for uid in self.spool.unsummarised()} if cfg.study_idle else {}

    # ---- log -------------------------------------------------------------------------------
    def _has_segmenter(self) -> bool:
        """A segmenter for mask auto: the one given, the one beside the model, or the server's."""
        from busi.runtime.model_dir import ModelDir

        if self.cfg.segmenter is not None or self.cfg.server is None:
            return Path(self.cfg.segmenter or ModelDir(Path(self.cfg.model).parent).segmenter_onnx).is_file()
        try:
            _ = self.predictor.segmenter  # busi_segmenter on the server
        except BusiError:
            return False
        return True

    def event(self, kind: str, **fields) -> None:
        """One JSON line per event on stdout (received, refused, classified, needs_roi, skipped,
        failed, deferred, sent, warning, fatal)."""
        if kind in self.counts:
            self.counts[kind] += 1
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": kind, **fields}, default=str)
        with self._out_lock:
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (OSError, ValueError):  # a log that cannot be written never stops the node
                pass

    def _warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        """Python warnings (pydicom's about invalid values, ...) as events, not raw lines."""
        self.event("warning", category=getattr(category, "__name__", str(category)), message=str(message),
                   source=f"{Path(filename).parent.name}/{Path(filename).name}:{lineno}")

    def status_line(self) -> str:
        c = self.counts
        return (f"busi-node {self.cfg.ae}: received {c['received']}, classified {c['classified']}, needs an ROI "
                f"{c['needs_roi']}, skipped "
                f"{c['skipped']}, failed {c['failed']}, refused {c['refused']}, sent {c['sent']}; waiting "
                f"{len(self.spool.waiting())}, to send {len(self.spool.to_send())}")

    # ---- receiving (pynetdicom's threads) -----------------------------------------------------
    def application_entity(self):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, sop_class

        ae = AE(ae_title=self.cfg.ae)
        for name in STORAGE_CLASSES:
            ae.add_supported_context(getattr(sop_class, name), ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(sop_class.Verification)
        ae.require_calling_aet = list(self.cfg.allow)
        ae.require_called_aet = self.cfg.check_called_ae
        ae.maximum_pdu_size = 0  # no limit on what a sender may put in one PDU
        return ae

    def on_open(self, event) -> None:
        host = event.address[0]
        if self.cfg.allow_hosts and host not in self.cfg.allow_hosts:
            self.event("refused", reason=f"host {host} is not in the allowed hosts")
            event.assoc.abort()

    def on_rejected(self, event) -> None:
        rq = event.assoc.requestor
        calling = str(rq.ae_title).strip()
        called = str(getattr(getattr(rq, "primitive", None), "called_ae_title", "") or "").strip()
        if self.cfg.allow and calling not in self.cfg.allow:
            reason = f"association rejected (calling AE {calling!r} is not allowed)"
        elif self.cfg.check_called_ae and called and called != self.cfg.ae:
            reason = f"association rejected (called AE {called!r} is not this node's {self.cfg.ae!r})"
        else:
            reason = "association rejected"
        self.event("refused", calling=calling, called=called, host=rq.address, reason=reason)

    def on_accepted(self, event) -> None:
        """Senders propose many SOP classes (storescu: every storage class); those busi-node does
        not take are refused here, in negotiation, and named in the debug log; an association
        with none that busi-node takes is logged as refused (the sender then aborts it)."""
        refused = [str(cx.abstract_syntax) for cx in event.assoc.rejected_contexts]
        if not event.assoc.accepted_contexts:
            self.event("refused", calling=str(event.assoc.requestor.ae_title).strip(), host=event.assoc.requestor.address,
                       reason=f"no proposed SOP class is one busi-node takes ({', '.join(sorted(set(refused))[:5])})")
        elif refused:
            _LOG.debug(f"busi-node: {len(refused)} proposed SOP class(es) refused: {', '.join(refused[:20])}")

    def on_echo(self, event) -> int:
        return SUCCESS

    def on_store(self, event):
        calling = str(event.assoc.requestor.ae_title).strip()
        if self.died.is_set():  # nobody would classify it: the sender keeps it and retries
            self.event("refused", calling=calling, reason=f"busi-node is stopping ({self.death})")
            return refusal(OUT_OF_RESOURCES, "busi-node is stopping; try again later")
        try:
            ds = event.dataset
            sop = safe_name(ds.SOPInstanceUID)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * frames
        except Exception as e:  # a dataset pydicom cannot decode, or without a usable UID
            self.event("refused", calling=calling, reason=f"malformed dataset ({describe(e)})")
            return refusal(CANNOT_UNDERSTAND, f"malformed dataset ({describe(e)})")
        if pixels > self.cfg.max_pixels:  # the same instance will never fit: a permanent refusal
            reason = f"{pixels:,} pixels, above the limit of {self.cfg.max_pixels:,}"
            self.event("refused", sop=sop, calling=calling, reason=reason)
            return refusal(CANNOT_UNDERSTAND, reason)
        with self._lock:
            if self._waiting >= self.cfg.queue:
                full = True
            else:
                full, self._waiting = False, self._waiting + 1
        if full:
            self.event("refused", sop=sop, calling=calling, reason=f"queue full ({self.cfg.queue} images waiting)")
            return refusal(OUT_OF_RESOURCES, "queue full; try again later")
        try:
            data = event.encoded_dataset(include_meta=True)
            ds.file_meta = event.file_meta
            problem, status = self.spool.receive(sop, data, lambda written: self.check_spooled(written, data, ds)), \
                CANNOT_UNDERSTAND
        except OSError as e:  # full disk, lost spool: the sender hears it, nothing is lost silently
            problem, status = f"cannot spool ({e.strerror or e})", OUT_OF_RESOURCES
        except Exception as e:  # not the instance's fault as far as anyone knows: the sender keeps it
            problem, status = f"cannot spool ({describe(e)})", OUT_OF_RESOURCES
        if problem:
            with self._lock:
                self._waiting -= 1
            self.event("refused", sop=sop, calling=calling, reason=problem)
            return refusal(status, problem)
        self.event("received", sop=sop, calling=calling, sop_class=str(ds.get("SOPClassUID", "")),
                   study=str(ds.get("StudyInstanceUID", "")), modality=str(ds.get("Modality", "")))
        self._work.set()
        return SUCCESS

    def check_spooled(self, path: Path, data: bytes, ds) -> str | None:
        """Why the instance cannot be whole, or None: the spool's copy read back is not the bytes
        received (a file the disk did not keep), or the dataset as received (`ds`, parsed once,
        by pynetdicom) was cut short on the wire. Pixel data are measured, not decoded."""
        try:
            if path.read_bytes() != data:
                return "the copy read back from the spool differs from what was received"
        except OSError as e:
            return f"cannot read it back from the spool ({e.strerror or e})"
        try:
            if "SOPInstanceUID" not in ds or "TransferSyntaxUID" not in ds.file_meta:
                return "the dataset received is incomplete (cut short?)"
            return pixel_problem(ds)
        except Exception as e:
            return f"the dataset received cannot be read ({describe(e)})"

    # ---- processing (the worker: busi.node.batching) ----------------------------------------
    def _commit(self, path: Path, sop: str, head, base: dict, pred, staged: Path) -> None:
        from busi.runtime.dicom import header_only
        from busi.runtime.sinks import DicomSink

        # busi-infer's DICOM output, driven the same way (add, close); strict: a full disk defers
        # the image (it waits in the spool), a source that cannot have outputs fails it
        sink = DicomSink(staged, self.options, strict=True)
        said: dict = {}
        sink.add(pred, said)
        sink.close()
        outputs = [p.name for p in sink.written]
        notes = {"notes": said["notes"]} if said.get("notes") else {}
        study = base["study"] if self.cfg.study_idle and is_uid(base["study"]) else None
        if self.cfg.study_idle and base["study"] and study is None:
            self.event("warning", sop=sop, message=f"StudyInstanceUID {base['study'][:80]!r} is not a UID: "
                                                   "no study summary for this image")
        if pred.kind == NEEDS_ROI:  # auto abstained: its SR says "not classified, ROI needed"; no class
            reason = pred.reason.replace(str(path), f"instance {sop}")
            record = {**base, "event": "needs_roi", "reason": reason, "lesion_presence": pred.lesion_presence,
                      "outputs": outputs, **notes}
            study = None
        else:
            record = {**base, "event": "classified", "class": pred.label, "p_malignant": pred.flag_probability,
                      "malignant": pred.malignant, "threshold": pred.threshold, "mask_source": pred.mask_source,
                      "out_of_distribution": pred.out_of_distribution, "outputs": outputs, **notes}
        # all of its results at once into outgoing, then its study header, then its record (which
        # takes it out of incoming): a crash or a full disk in between redoes it, the same UIDs
        self.spool.commit(sop, staged)
        if study:
            self.spool.keep_header(study, sop, encoded(header_only(head)))  # what a summary needs, without the pixels
        self.spool.finish(path, record)
        self.event(record["event"], **{k: v for k, v in record.items() if k != "event"})
        if study:
            self._studies[study] = time.monotonic()
        self._send.set()

    # ---- study summaries --------------------------------------------------------------------
    def summarise_idle(self) -> None:
        now = time.monotonic()
        for study, last in list(self._studies.items()):
            if now - last >= self.cfg.study_idle:
                del self._studies[study]
                try:
                    self.summarise(study)
                except Exception as e:  # a summary that cannot be made never stops the node
                    self.event("failed", study=study, reason=f"study summary: {describe(e)}")

    def summarise(self, study: str) -> None:
        """A study SR over every image of the study classified so far; a new one (same series,
        next instance number) when images came after the last summary."""
        import pydicom

        from busi.runtime import dicom_out

        heads = {p.stem: p for p in self.spool.study_headers(study) if (self.spool.done / f"{p.stem}.json").is_file()}
        state = self.spool.summary_state(study)
        if not heads or sorted(heads) == state["sops"]:
            return
        sources = [pydicom.dcmread(p) for p in heads.values()]
        p_mal = {sop: json.loads((self.spool.done / f"{sop}.json").read_text())["p_malignant"] for sop in heads}
        version = int(state["version"]) + 1
        ds = dicom_out.study_report(sources, p_mal, self.predictor.threshold, self.predictor.sha256, self.options, version)
        durable_write(self.spool.outgoing / f"{ds.SOPInstanceUID}.study.dcm", encoded(ds))
        self.spool.set_summary_state(study, {"sops": sorted(heads), "version": version, "sop": ds.SOPInstanceUID})
        self.event("summarised", study=study, images=len(heads), version=version, sop=ds.SOPInstanceUID,
                   p_malignant=summarise_study(p_mal, self.predictor.threshold).max_malignant, supersedes=state.get("sop"))
        self._send.set()

    def _fail(self, path: Path, sop: str, reason: str, base: dict | None = None) -> None:
        """A permanent failure: its record, the image into failed/ (OSError: the disk, tried again)."""
        base = base or {"sop": sop}
        self.spool.finish(path, {**base, "event": "failed", "reason": reason}, keep=True)
        self.event("failed", **base, reason=reason)

    # ---- sending (one sender) ---------------------------------------------------------------
    def deliver(self) -> None:
        """Send what waits in outgoing; after any failure (no answer, a refusal, a broken
        association) wait 2 s, doubling to 60 s, before the next try."""
        if self.cfg.dest is None:  # the results stay in the spool: nothing to send, so nothing to list (it
            self._stop.wait()      # listed the whole spool after every image, taking CPU from the writer)
            return
        delay = self.cfg.retry
        while not self._stop.is_set():
            files = self.spool.to_send()
            if not files:
                self._send.wait(1.0)
                self._send.clear()
                continue
            try:
                ok = self.send(files)
            except Exception as e:  # refused, unreachable, broken off: everything stays in the spool
                _LOG.warning(f"busi-node: cannot deliver {len(files)} object(s) to {self._dest()}: {describe(e)}; "
                             f"next try in {delay:.0f}s")
                ok = False
            if ok:
                delay = self.cfg.retry
            else:
                self._stop.wait(delay)
                delay = min(delay * 2, self.cfg.retry_max)

    def _dest(self) -> str:
        d = self.cfg.dest
        return f"{d.ae}@{d.host}:{d.port}"

    def _set_aside(self, f: Path, reason: str, status: int | None = None) -> None:
        """A result the destination will never take (or that cannot be read): into
        failed/results with the reason, and a `failed` event naming its image."""
        sop = f.parent.name if f.parent != self.spool.outgoing else f.name.rsplit(".", 2)[0]  # <UID>.<kind>.dcm
        record = {"event": "failed", "sop": sop, "file": f.name, "dest": self._dest(), "reason": reason,
                  "status": None if status is None else f"0x{status:04X}", "tries": self._tries.pop(f.name, 0)}
        try:
            self.spool.set_aside(f, record)
        except OSError as e:  # a full disk: it stays in outgoing and is tried again later
            _LOG.warning(f"busi-node: cannot set {f.name} aside ({describe(e)})")
            return
        self.event("failed", **{k: v for k, v in record.items() if k != "event"})

    def send(self, files: list[Path]) -> bool:
        """C-STORE `files` to the destination in one association; each one acknowledged is
        removed from the spool; one refused for good (0xCxxx, or any other failure status
        `send_tries` times) is set aside with its status; the others stay for the next try.
        True when every file was delivered or set aside."""
        import pydicom
        from pynetdicom import AE

        ae = AE(ae_title=self.cfg.ae)
        metas = {}
        for f in files[:100]:
            try:
                meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
                metas[f] = meta
                ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
            except FileNotFoundError:
                continue
            except Exception as e:
                self._set_aside(f, f"unreadable result ({describe(e)})")
        if not metas:
            return True
        d = self.cfg.dest
        assoc = ae.associate(d.host, d.port, ae_title=d.ae)
        if not assoc.is_established:
            raise ConnectionError("association rejected or no answer")
        ok = True
        try:
            for f in metas:
                status = assoc.send_c_store(f)
                code = getattr(status, "Status", None)
                if code is not None and (code == SUCCESS or 0xB000 <= code <= 0xBFFF):
                    self.spool.sent(f)
                    self._tries.pop(f.name, None)
                    self.event("sent", file=f.name, dest=self._dest())
                elif code is None:
                    raise ConnectionError("the association broke off")
                else:
                    ok = False
                    tries = self._tries[f.name] = self._tries.get(f.name, 0) + 1
                    comment = str(getattr(status, "ErrorComment", "") or "")
                    said = f"C-STORE status 0x{code:04X}" + (f" ({comment})" if comment else "")
                    if 0xC000 <= code <= 0xCFFF or tries >= self.cfg.send_tries:
                        self._set_aside(f, f"{said}; refused for good after {tries} tr{'y' if tries == 1 else 'ies'}",
                                        code)
                    else:
                        self.event("deferred", file=f.name, dest=self._dest(), status=f"0x{code:04X}", tries=tries,
                                   reason=f"{said}; kept for a retry")
        finally:
            if assoc.is_established:
                assoc.release()
        return ok

    # ---- life cycle -------------------------------------------------------------------------
    def _guarded(self, target):
        """A thread body that, should it die anyway, says so and stops the node (which then
        exits non-zero, for a service manager to restart it)."""

        def run():
            try:
                target()
            except BaseException as e:  # noqa: BLE001 - whatever it was, the node must not go on acknowledging
                self.death = f"the {target.__name__} thread died ({describe(e)})"
                self.event("fatal", reason=self.death, traceback=traceback.format_exc(limit=8))
                self.died.set()

        return run

    def start(self) -> None:
        from pynetdicom import evt

        warnings.showwarning = self._warning
        ae = self.application_entity()
        handlers = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_C_ECHO, self.on_echo), (evt.EVT_CONN_OPEN, self.on_open),
                    (evt.EVT_REJECTED, self.on_rejected), (evt.EVT_ACCEPTED, self.on_accepted)]
        try:
            self._server = ae.start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers,
                                           ssl_context=self.ssl_context())
        except OSError as e:
            raise UsageError(f"cannot listen on {self.cfg.host}:{self.cfg.port} ({e.strerror or e})") from None
        for target in (self.work, self.deliver):
            t = threading.Thread(target=self._guarded(target), name=f"busi-node-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self.report_status, name="busi-node-status", daemon=True)
        t.start()
        self._threads.append(t)
        model = f"model on {self.cfg.server}" if self.cfg.server else f"model on {self.threads} thread(s)"
        _LOG.warning(f"busi-node: {self.cfg.ae} listening on {self.cfg.host}:{self.cfg.port}, mask {self.mask}, {model}, "
                     f"results to {self._dest() if self.cfg.dest else 'the spool only (no --dest)'}; "
                     f"{len(self.spool.waiting())} waiting and {len(self.spool.to_send())} to send from the spool")

    def ssl_context(self):
        if self.cfg.tls_cert is None:
            return None
        import ssl

        node = self

        class LoggedContext(ssl.SSLContext):
            """A failed handshake is logged (pynetdicom's server drops it in silence)."""

            def wrap_socket(self, sock, *args, **kwargs):
                try:
                    peer = sock.getpeername()[0]
                except OSError:
                    peer = "?"
                try:
                    return super().wrap_socket(sock, *args, **kwargs)
                except (OSError, ValueError) as e:
                    node.event("refused", host=peer, reason=f"TLS handshake failed ({describe(e)})")
                    raise

        ctx = LoggedContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cfg.tls_cert), str(self.cfg.tls_key))
        if self.cfg.tls_ca is not None:
            ctx.load_verify_locations(str(self.cfg.tls_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def report_status(self) -> None:
        last = None
        while not self._stop.wait(2.0):
            try:  # files come and go under it: a status line is never worth a thread
                line = self.status_line()
                if line != last:
                    write_stderr(line + "\n")
                    last = line
            except Exception as e:
                _LOG.debug(f"busi-node: status line skipped ({describe(e)})")

    def shutdown(self) -> None:
        """Stop accepting, let the worker finish the instance in hand, stop the sender; what is
        left waits in the spool for the next start."""
        if self._server is not None:
            self._server.shutdown()
        self._stop.set()
        self._work.set()
        self._send.set()
        for t in self._threads:
            t.join(timeout=120)
        try:
            write_stderr(self.status_line() + " (stopped)\n")
        except Exception:
            pass
