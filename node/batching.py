"""The node's worker: what waits in the spool, classified in batches.

Three stages, as busi-infer runs them: a pool of decoding threads reads and prepares the
next batch (`Predictor.prepare_item`) while the worker runs the model on this one
(`Predictor.classify`, one session run for the batch), and one writing thread makes each
image's results (SR, SC, SEG), commits them to outgoing and records the image, while the
worker goes on with the next batch. A batch is whatever waits in incoming, up to
`batch_size`; when nothing else is in hand the worker waits `batch_delay` seconds at most
for a burst to fill it.

The spool's promises do not change: an image leaves incoming only when its results are in
outgoing and its record in done (one image at a time, in the writing thread); each image of
a batch has its own outcome (a damaged one fails alone, with its reason); one that a
condition of this machine stopped (a full disk) stays in incoming and is tried again after
a backoff (2 s, doubling up to `retry_max`). A crash redoes what was in hand (at most two
batches being prepared and two being written); the results' UIDs are deterministic, so a
redo replaces them.
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from busi.runtime.dicom_identity import is_busi_output
from busi.runtime.errors import NOT_FINITE, BusiError, InputError, ModelError, WriteError, describe
from busi.runtime.results import FAILURE, Failure

#: batches written while the worker runs the next ones, at most (each holds its images' views)
WRITING = 2
#: decoding threads, as busi-infer's default
DECODERS = 2


def model_threads(requested: int | None) -> int:
    """The model's threads (ONNX Runtime intra-op) when --threads is not given: one core fewer
    than this process may use, at least one. busi-infer runs the model and then writes the
    results; the node writes one batch's results (highdicom, one core's work under the GIL)
    while the model runs on the next, and a model spread over every core waits at each op
    for the thread the writer displaced."""
    if requested:
        return int(requested)
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


class Transient(Exception):
    """A condition of this machine (a full disk, a lost spool), not of the instance: it waits
    in the spool and is tried again with a backoff."""


@dataclass
class Instance:
    """One instance of a batch, from incoming to its outcome."""

    path: Path
    sop: str
    #: its dataset, parsed once from the spool, and what every record of it names
    head: object = None
    base: dict | None = None
    #: why it is not classified (another modality, busi's own output); None: it is
    skip: str | None = None
    #: seen before (its record is in done): taken out of incoming, nothing else
    seen: bool = False
    #: taken out of incoming meanwhile (a redo found it done)
    gone: bool = False
    #: what reading its header raised
    error: BaseException | None = None
    #: Predictor.prepare_item's answer, then Predictor.classify's
    prepared: object = None
    result: object = None
    extra: dict = field(default_factory=dict)


class BatchWorker:
    """The worker of `busi.node.service.Node` (a mix-in: it uses the node's spool, predictor,
    events and `_commit`/`_fail`)."""

    def work(self) -> None:
        size = max(1, int(self.cfg.batch_size))
        self.batches = 0
        self._in_hand: set[Path] = set()  # taken from incoming, not finished
        self._retry_at: dict[Path, float] = {}  # deferred: not before this time
        self._delay = self.cfg.retry
        decode = ThreadPoolExecutor(DECODERS, thread_name_prefix="busi-node-decode")
        write = ThreadPoolExecutor(1, thread_name_prefix="busi-node-write")
        writing: deque[Future] = deque()
        ahead: list[Future] | None = None
        try:
            while not self._stop.is_set():
                self._check_written(writing, None)  # the finished ones, without waiting
                if ahead is None:
                    files = self._take(size, wait=True)
                    if not files:
                        if not self._in_hand and not writing:
                            self.summarise_idle()
                        self._work.wait(self._idle_wait())
                        self._work.clear()
                        continue
                    ahead = [decode.submit(self._admit, p) for p in files]
                batch = [f.result() for f in ahead]
                # the next batch decodes while this one runs: what waits now, without waiting for more
                files = self._take(size, wait=False)
                ahead = [decode.submit(self._admit, p) for p in files] if files else None
                self._classify_batch(batch)
                self._check_written(writing, WRITING - 1)
                writing.append(write.submit(self._settle_batch, batch))
            self._check_written(writing, 0)  # stopping: what is in hand is finished; `ahead` waits in incoming
        finally:
            decode.shutdown(wait=True, cancel_futures=True)
            write.shutdown(wait=True)

    # ---- the stages --------------------------------------------------------------------------
    def _take(self, size: int, wait: bool) -> list[Path]:
        """Up to `size` instances waiting in incoming (oldest first), not in hand and not
        deferred; with `wait`, up to `batch_delay` seconds for more while fewer wait."""
        deadline = time.monotonic() + float(self.cfg.batch_delay)
        while True:
            # listed under the lock: the writer takes a finished instance out of incoming and then out
            # of `_in_hand` under it, so a listing taken outside could still hold a file that is no
            # longer in hand, and the worker would take it a second time
            with self._lock:
                files = self.spool.waiting()
                now = time.monotonic()
                self._waiting = len(files)
                free = [p for p in files if p not in self._in_hand and self._retry_at.get(p, 0) <= now]
            if not wait or len(free) >= size or not free or now >= deadline or self._stop.is_set():
                break
            self._work.wait(deadline - now)
            self._work.clear()
        taken = free[:size]
        with self._lock:
            self._in_hand.update(taken)
            for p in taken:
                self._retry_at.pop(p, None)
        return taken

    def _idle_wait(self) -> float:
        """How long the worker waits for news with nothing to do: 1 s, or until a deferred
        instance is due."""
        with self._lock:
            due = min(self._retry_at.values(), default=None)
        return 1.0 if due is None else max(0.01, min(1.0, due - time.monotonic()))

    def _admit(self, path: Path) -> Instance:
        """(A decoding thread.) Its header, whether it is classified at all, and its pixels
        prepared for the model. Raises nothing: what went wrong is the instance's."""
        from busi.runtime.dicom import DicomImage, read_dataset
        from busi.runtime.files import read_regular

        one = Instance(path, path.stem)
        try:
            if self.spool.is_done(one.sop):  # sent again, or finished just before a crash took it out of incoming
                one.seen = True
                return one
            limits = self.predictor.options
            try:  # read and parsed once: the header decides, the pixels are decoded from the same dataset
                data = read_regular(path, limits.max_bytes)
            except InputError:
                if not path.exists():
                    one.gone = True
                    return one
                raise
            try:
                ds = read_dataset(path, data, limits.max_pixels)
            except BusiError:
                raise
            except Exception as e:
                raise InputError(None, f"cannot read ({describe(e)})") from None
            one.head = head = ds
            one.base = {"sop": one.sop, "study": str(head.get("StudyInstanceUID", "")),
                        "series": str(head.get("SeriesInstanceUID", ""))}
            if is_busi_output(head):
                one.skip = "busi's own output"
            elif str(head.get("Modality", "")).upper() != "US":
                one.skip = f"modality {head.get('Modality', 'missing')!s}, not ultrasound"
            else:  # every frame of a cine loop; a single frame as itself
                dcm = DicomImage(str(path), max_pixels=limits.max_pixels, dataset=ds)
                one.prepared = self.predictor.prepare_item(dcm, self.mask, "all", keep_view=True)
        except Exception as e:
            one.error = e
        return one

    def _classify_batch(self, batch: list[Instance]) -> None:
        """(The worker.) One session run for the batch's prepared images."""
        todo = [one for one in batch if one.prepared is not None]
        if not todo:
            return
        try:
            results = self.predictor.classify([one.prepared for one in todo])
        except BusiError:  # what the batch raised is found image by image: each its own outcome
            results = [self._classify_one(one) for one in todo]
        for one, r in zip(todo, results):
            one.result = r
        self.batches += 1
        self.event("batch", batch=len(batch), classified=len(todo))

    def _classify_one(self, one: Instance):
        try:
            return self.predictor.classify([one.prepared])[0]
        except BusiError as e:
            return Failure(str(one.path), str(e))

    def _settle_batch(self, batch: list[Instance]) -> None:
        """(The writing thread.) Each instance's outcome, one after the other; one deferred is
        tried again after the backoff."""
        deferred = 0
        for one in batch:
            ok = False
            try:
                ok = self._settle(one)
            finally:
                with self._lock:
                    self._in_hand.discard(one.path)
                    if ok:
                        self._waiting = max(0, self._waiting - 1)
                    else:
                        deferred += 1
                        self._retry_at[one.path] = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.cfg.retry_max) if deferred else self.cfg.retry
        self._work.set()

    def _settle(self, one: Instance) -> bool:
        """Everything one instance needs, each step inside its failure handling: True when it is
        finished (classified, skipped or failed for good), False when a condition of this machine
        (a full disk) stopped it: it stays in incoming, nothing of it in outgoing."""
        path, sop = one.path, one.sop
        try:
            try:
                self._outcome(one)
            except (Transient, WriteError, OSError):
                raise
            except BusiError as e:
                self._fail(path, sop, str(e).replace(str(path), f"instance {sop}"), one.base)
            except Exception as e:  # never let one instance stop the node
                self._fail(path, sop, describe(e), one.base)
            return True
        except (Transient, WriteError, OSError) as e:
            self.event("deferred", sop=sop, reason=f"{describe(e)}; the image waits in the spool and is tried again")
            return False

    def _outcome(self, one: Instance) -> None:
        path, sop = one.path, one.sop
        if one.seen:
            path.unlink(missing_ok=True)
            self.event("skipped", sop=sop, reason="already processed (this SOP Instance UID was seen before; its results "
                                                  "were sent then)")
            return
        if one.gone:
            return
        if one.error is not None:
            raise one.error
        if one.skip:
            self.spool.finish(path, {**one.base, "event": "skipped", "reason": one.skip})
            self.event("skipped", **one.base, reason=one.skip)
            return
        r = one.result
        if r.kind == FAILURE:  # the image's own fault (damaged pixels, a non-finite output)
            raise (ModelError if NOT_FINITE in r.error else InputError)(None, r.error)
        staged = self.spool.stage()
        try:
            self._commit(path, sop, one.head, one.base, r, staged)
        finally:
            shutil.rmtree(staged, ignore_errors=True)  # gone when committed; else what was half-written

    def _check_written(self, writing: deque, keep: int | None) -> None:
        """Collect the finished writes (an error that escaped the per-instance handling kills
        the worker, as it should); with `keep`, wait until at most `keep` are in progress."""
        while writing and (writing[0].done() or (keep is not None and len(writing) > keep)):
            writing.popleft().result()
