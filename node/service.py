"""The node: a Storage SCP (pynetdicom) in front of a spool, a worker that classifies what the
spool holds, and a Storage SCU that delivers the results to the destination.

Threads: pynetdicom's (one per association) only write to the spool and answer; one worker
runs the Predictor, so a slow model never holds an association open; one sender delivers,
with a backoff, whatever sits in `outgoing`. Everything between them is a file in the spool,
so a restart resumes where the last run stopped.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import warnings
from pathlib import Path

from busi.runtime.errors import BusiError, UsageError, describe
from busi.runtime.log import get as get_logger, write_stderr
from busi.runtime.results import NeedsRoi

from .config import NodeConfig
from .spool import Spool, durable_write, safe_name

_LOG = get_logger(__name__)

# C-STORE statuses (PS3.4 B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
#: what a PACS sends with a breast-ultrasound study: the images, and derived objects (busi's own
#: and others'), so that pushing a whole study never fails on them
STORAGE_CLASSES = (
    "UltrasoundImageStorage", "UltrasoundMultiFrameImageStorage", "SecondaryCaptureImageStorage",
    "MultiFrameTrueColorSecondaryCaptureImageStorage", "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
    "BasicTextSRStorage", "EnhancedSRStorage", "ComprehensiveSRStorage", "Comprehensive3DSRStorage",
    "SegmentationStorage", "GrayscaleSoftcopyPresentationStateStorage", "EncapsulatedPDFStorage",
)


def encoded(ds) -> bytes:
    """A dataset as the bytes of a DICOM file (preamble, file meta, dataset)."""
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Node:
    def __init__(self, cfg: NodeConfig, out=None):
        from busi.runtime.predictor import Predictor

        self.cfg = cfg
        self._out = out or sys.stdout
        self._out_lock = threading.Lock()
        self.spool = Spool(cfg.spool)
        self.predictor = Predictor(cfg.model, threads=cfg.threads, max_pixels=cfg.max_pixels, max_bytes=cfg.max_bytes,
                                   segmenter=cfg.segmenter, notice=lambda m: _LOG.warning(m), server=cfg.server,
                                   token=cfg.token, expect_sha256=cfg.expect_sha256)
        self.mask = cfg.mask or ("auto" if self._has_segmenter() else "none")
        #: the option string busi-infer uses for the same settings: the same deterministic UIDs
        self.options = f"mask={self.mask} threshold=None tta=False frames=all"
        self.counts = {k: 0 for k in ("received", "refused", "classified", "needs_roi", "skipped", "failed", "sent",
                                      "summarised")}
        self._stop = threading.Event()
        self._work = threading.Event()
        self._send = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None
        self._waiting = len(self.spool.waiting())
        #: study UID -> when it last got a classified image (studies waiting for their summary)
        self._studies = {uid: time.monotonic() for uid in self.spool.unsummarised()} if cfg.study_idle else {}

    # ---- log -------------------------------------------------------------------------------
    def _has_segmenter(self) -> bool:
        """A segmenter for mask auto: the one given, the one beside the model, or the server's."""
        from busi.runtime.model_dir import ModelDir

        if self.cfg.segmenter is not None or self.cfg.server is None:
            return Path(self.cfg.segmenter or ModelDir(Path(self.cfg.model).parent).segmenter_onnx).is_file()
        try:
            self.predictor.segmenter  # busi_segmenter on the server
        except BusiError:
            return False
        return True

    def event(self, kind: str, **fields) -> None:
        """One JSON line per event on stdout (received, refused, classified, needs_roi, skipped, failed, sent)."""
        if kind in self.counts:
            self.counts[kind] += 1
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": kind, **fields})
        with self._out_lock:
            self._out.write(line + "\n")
            self._out.flush()

    def status_line(self) -> str:
        c = self.counts
        return (f"busi-node {self.cfg.ae}: received {c['received']}, classified {c['classified']}, needs an ROI "
                f"{c['needs_roi']}, skipped "
                f"{c['skipped']}, failed {c['failed']}, refused {c['refused']}, sent {c['sent']}; waiting "
                f"{len(self.spool.waiting())}, to send {len(self.spool.to_send())}")

    # ---- receiving (pynetdicom's threads) -----------------------------------------------------
    def application_entity(self):
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE
        from pynetdicom import sop_class

        ae = AE(ae_title=self.cfg.ae)
        for name in STORAGE_CLASSES:
            ae.add_supported_context(getattr(sop_class, name), ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(sop_class.Verification)
        ae.require_calling_aet = list(self.cfg.allow)
        ae.maximum_pdu_size = 0  # no limit on what a sender may put in one PDU
        return ae

    def on_open(self, event) -> None:
        host = event.address[0]
        if self.cfg.allow_hosts and host not in self.cfg.allow_hosts:
            self.event("refused", reason=f"host {host} is not in the allowed hosts")
            event.assoc.abort()

    def on_rejected(self, event) -> None:
        calling = str(event.assoc.requestor.ae_title).strip()
        self.event("refused", calling=calling, host=event.assoc.requestor.address,
                   reason=f"association rejected (calling AE {calling!r} is not allowed)" if self.cfg.allow
                   and calling not in self.cfg.allow else "association rejected")

    def on_accepted(self, event) -> None:
        """Senders propose many SOP classes (storescu: every storage class); those busi-node does
        not take are refused here, in negotiation, and named in the debug log."""
        refused = [str(cx.abstract_syntax) for cx in event.assoc.rejected_contexts]
        if refused:
            _LOG.debug(f"busi-node: {len(refused)} proposed SOP class(es) refused: {', '.join(refused[:20])}")

    def on_echo(self, event) -> int:
        return SUCCESS

    def on_store(self, event) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            ds = event.dataset
            sop = safe_name(ds.SOPInstanceUID)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * frames
        except Exception as e:  # a dataset pydicom cannot decode, or without a usable UID
            self.event("refused", calling=calling, reason=f"malformed dataset ({describe(e)})")
            return CANNOT_UNDERSTAND
        if pixels > self.cfg.max_pixels:
            self.event("refused", sop=sop, calling=calling,
                       reason=f"{pixels:,} pixels, above the limit of {self.cfg.max_pixels:,}")
            return OUT_OF_RESOURCES
        if self._waiting >= self.cfg.queue:
            self.event("refused", sop=sop, calling=calling, reason=f"queue full ({self.cfg.queue} images waiting)")
            return OUT_OF_RESOURCES
        try:
            data = event.encoded_dataset(include_meta=True)
            self.spool.receive(sop, data)
        except OSError as e:  # full disk, lost spool: the sender hears it, nothing is lost silently
            self.event("refused", sop=sop, calling=calling, reason=f"cannot spool ({e.strerror or e})")
            return OUT_OF_RESOURCES
        self._waiting += 1
        self.event("received", sop=sop, calling=calling, sop_class=str(ds.get("SOPClassUID", "")),
                   study=str(ds.get("StudyInstanceUID", "")), modality=str(ds.get("Modality", "")))
        self._work.set()
        return SUCCESS

    # ---- processing (one worker) ------------------------------------------------------------
    def work(self) -> None:
        while not self._stop.is_set():
            files = self.spool.waiting()
            self._waiting = len(files)
            if not files:
                self.summarise_idle()
                self._work.wait(1.0)
                self._work.clear()
                continue
            for f in files:
                if self._stop.is_set():
                    break
                self.process(f)
                self._waiting = max(0, self._waiting - 1)

    def process(self, path: Path) -> None:
        import pydicom

        from busi.runtime import dicom_out

        sop = path.stem
        if self.spool.is_done(sop):  # sent again, or finished just before a crash took it out of incoming
            path.unlink(missing_ok=True)
            self.event("skipped", sop=sop, reason="already processed (this SOP Instance UID was seen before; its results "
                                                  "were sent then)")
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                head = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception as e:
            self._fail(path, sop, f"cannot read ({describe(e)})")
            return
        base = {"sop": sop, "study": str(head.get("StudyInstanceUID", "")), "series": str(head.get("SeriesInstanceUID", ""))}
        reason = None
        if str(head.get("Manufacturer", "")).startswith(dicom_out.MANUFACTURER):
            reason = "busi's own output"
        elif str(head.get("Modality", "")).upper() != "US":
            reason = f"modality {head.get('Modality', 'missing')!s}, not ultrasound"
        if reason:
            self.spool.finish(path, {**base, "event": "skipped", "reason": reason})
            self.event("skipped", **base, reason=reason)
            return
        frames = int(head.get("NumberOfFrames", 1) or 1)
        try:
            pred = self.predictor.predict(str(path), mask=self.mask, frame="all" if frames > 1 else 0, keep_view=True)
            written = dicom_out.write(pred, str(path), self.spool.outgoing, options=self.options)
        except BusiError as e:
            self._fail(path, sop, str(e).replace(str(path), f"instance {sop}"), base)
            return
        except Exception as e:  # never let one instance stop the node
            self._fail(path, sop, f"{type(e).__name__}: {e}", base)
            return
        if isinstance(pred, NeedsRoi):  # auto abstained: its SR says "not classified, ROI needed"; no class
            reason = pred.reason.replace(str(path), f"instance {sop}")
            self.spool.finish(path, {**base, "event": "needs_roi", "reason": reason, "lesion_presence": pred.lesion_presence,
                                     "outputs": [p.name for p in written]})
            self.event("needs_roi", **base, reason=reason, outputs=[p.name for p in written])
            self._send.set()
            return
        record = {**base, "event": "classified", "class": pred.label, "p_malignant": pred.flag_probability,
                  "malignant": pred.malignant, "threshold": pred.threshold, "mask_source": pred.mask_source,
                  "out_of_distribution": pred.out_of_distribution, "outputs": [p.name for p in written]}
        if self.cfg.study_idle and base["study"]:
            self.spool.keep_header(base["study"], sop, encoded(head))
        self.spool.finish(path, record)
        self.event("classified", **{k: v for k, v in record.items() if k != "event"})
        if self.cfg.study_idle and base["study"]:
            self._studies[base["study"]] = time.monotonic()
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

        heads = {p.stem: p for p in self.spool.study_headers(study)}
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
                   p_malignant=max(p_mal.values()), supersedes=state.get("sop"))
        self._send.set()

    def _fail(self, path: Path, sop: str, reason: str, base: dict | None = None) -> None:
        base = base or {"sop": sop}
        self.spool.finish(path, {**base, "event": "failed", "reason": reason}, keep=True)
        self.event("failed", **base, reason=reason)

    # ---- sending (one sender) ---------------------------------------------------------------
    def deliver(self) -> None:
        delay = self.cfg.retry
        while not self._stop.is_set():
            files = self.spool.to_send()
            if not files or self.cfg.dest is None:
                self._send.wait(1.0)
                self._send.clear()
                continue
            try:
                self.send(files)
                delay = self.cfg.retry
            except Exception as e:  # refused, unreachable, broken off: everything stays in the spool
                _LOG.warning(f"busi-node: cannot deliver {len(files)} object(s) to {self._dest()}: {describe(e)}; "
                             f"next try in {delay:.0f}s")
                self._stop.wait(delay)
                delay = min(delay * 2, self.cfg.retry_max)

    def _dest(self) -> str:
        d = self.cfg.dest
        return f"{d.ae}@{d.host}:{d.port}"

    def send(self, files: list[Path]) -> None:
        """C-STORE `files` to the destination in one association; each one acknowledged is
        removed from the spool, the others stay for the next try."""
        import pydicom
        from pynetdicom import AE

        ae = AE(ae_title=self.cfg.ae)
        metas = {}
        for f in files[:100]:
            try:
                meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
            except Exception as e:
                self.event("failed", file=f.name, reason=f"unreadable result, left in the spool ({describe(e)})")
                continue
            metas[f] = meta
            ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
        d = self.cfg.dest
        assoc = ae.associate(d.host, d.port, ae_title=d.ae)
        if not assoc.is_established:
            raise ConnectionError("association rejected or no answer")
        try:
            for f in metas:
                status = assoc.send_c_store(f)
                code = getattr(status, "Status", None)
                if code is not None and (code == SUCCESS or 0xB000 <= code <= 0xBFFF):
                    f.unlink(missing_ok=True)
                    self.event("sent", file=f.name, dest=self._dest())
                elif code is None:
                    raise ConnectionError("the association broke off")
                else:
                    self.event("failed", file=f.name, dest=self._dest(), reason=f"C-STORE status 0x{code:04X}; kept for a retry")
        finally:
            if assoc.is_established:
                assoc.release()

    # ---- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        from pynetdicom import evt

        ae = self.application_entity()
        handlers = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_C_ECHO, self.on_echo), (evt.EVT_CONN_OPEN, self.on_open),
                    (evt.EVT_REJECTED, self.on_rejected), (evt.EVT_ACCEPTED, self.on_accepted)]
        try:
            self._server = ae.start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers,
                                           ssl_context=self.ssl_context())
        except OSError as e:
            raise UsageError(f"cannot listen on {self.cfg.host}:{self.cfg.port} ({e.strerror or e})") from None
        for target in (self.work, self.deliver, self.report_status):
            t = threading.Thread(target=target, name=f"busi-node-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        _LOG.warning(f"busi-node: {self.cfg.ae} listening on {self.cfg.host}:{self.cfg.port}, mask {self.mask}, "
                     f"results to {self._dest() if self.cfg.dest else 'the spool only (no --dest)'}; "
                     f"{len(self.spool.waiting())} waiting and {len(self.spool.to_send())} to send from the spool")

    def ssl_context(self):
        if self.cfg.tls_cert is None:
            return None
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cfg.tls_cert), str(self.cfg.tls_key))
        if self.cfg.tls_ca is not None:
            ctx.load_verify_locations(str(self.cfg.tls_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def report_status(self) -> None:
        last = None
        while not self._stop.wait(2.0):
            line = self.status_line()
            if line != last:
                write_stderr(line + "\n")
                last = line

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
        write_stderr(self.status_line() + " (stopped)\n")
