"""`Predictor`: the embeddable API (ONNX file in, typed predictions out; no TensorFlow).

    from busi.runtime import Predictor, predict_breast_cancer
    p = Predictor("models/demo/model.onnx")
    r = p.predict("case.png", mask=(120, 80, 60, 40))   # ROI box x, y, w, h
    r = p.predict("case.png")   # "auto" where segmenter.onnx is beside the model, else the whole image
    r.label, r.confidence, r.probabilities, r.malignant
    predict_breast_cancer("case.png", p)["class"]
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Union

import numpy as np

from .arrays import check_array, check_threshold, frame_index, is_box, mask_array
from .assemble import ResultAssembler
from .contract import SERVED_NAMES
from .dicom import DicomImage
from .errors import NOT_FINITE, BusiError, InputError, ModelError, ServerError, UsageError, describe
from .files import read_regular
from .imageio import Decoded, decode_image, is_dicom, read_image, read_mask, resize_mask, resize_rgb
from .log import get as get_logger
from .mask_arg import MaskArg
from .masks import bbox, box_mask, find_mask_files, model_mask
from .options import PredictorOptions
from .pixels import check_min_side
from .results import Failure, NeedsRoi, Prediction, Prepared
from .runner import ModelRunner
from .session import open_model
from .trust import parse_prevalence

_LOG = get_logger(__name__)

if TYPE_CHECKING:
    from .segmenter import Segmenter

#: what `mask=` accepts (see `MaskArg.of`), read once into a `MaskArg`
MaskInput = Union[None, str, os.PathLike, np.ndarray, tuple, list, MaskArg]
ImageArg = Union[str, os.PathLike, bytes, np.ndarray]
#: the most images one session.run gets; a larger batch_size is capped to it
MAX_BATCH = 256


class Predictor:
    """A loaded busi ONNX model. Safe to share between threads."""

    def __init__(self, model_path: str | os.PathLike | None = None, options: PredictorOptions | None = None,
                 **overrides):
        """`options` (a `PredictorOptions`: device, verify, threads, max_pixels, max_bytes,
        threshold, prevalence, coverage, segmenter, server, token, expect_sha256,
        require_sha256, notice; each documented there), with `overrides` by the same names:
        `Predictor(path, device="cpu")`.

        `server` ("http://host:port") is the remote backend: the classifier (and, for mask
        "auto", the segmenter) run on that v2 inference server (busi-serve, or Triton serving
        `busi-export --triton`), the rest runs here; `model_path` may then be None."""
        if options is not None and not isinstance(options, PredictorOptions):
            raise UsageError(f"Predictor's second argument is a PredictorOptions, got {options!r} (give the device as "
                             "device=...)")
        o = (options or PredictorOptions()).replace(**overrides)
        #: the options this predictor was built with
        self.options = o
        if model_path is None and o.server is None:
            raise UsageError("Predictor needs a model path or a server")
        self.server, self._token = o.server, o.token
        self._notice = o.notice or _LOG.warning  # the "busi" log, unless the caller takes the notices
        self._noticed: set[str] = set()
        self._lock = threading.Lock()
        self._threads, self._verify, self._require = o.threads, o.verify, o.require_sha256
        self._segmenter = o.segmenter
        label, session, self.provider, self.sha256 = open_model(
            model_path, o.device, o.verify, o.threads, self._notice, o.require_sha256, o.server, SERVED_NAMES["classifier"],
            o.token, o.expect_sha256)
        #: the model file, or the served model ("server URL model NAME") in messages
        self.path = label if o.server else Path(model_path)
        #: the session and the contract's post-processing (calibration, Grad-CAM, OOD score)
        self.runner = ModelRunner(session, self.path)
        self.info, self.explainable, self.guard = self.runner.info, self.runner.explainable, self.runner.guard
        self.max_pixels = o.max_pixels
        self.max_bytes = o.max_bytes
        self.threshold = float(self.info.malignant_threshold if o.threshold is None else check_threshold(o.threshold))
        missing = [what for what, have in (("calibration", self.info.calibration), ("training prevalence",
                   self.info.prevalence), ("conformal scores", self.info.conformal),
                   ("out-of-distribution guard", self.guard)) if have is None]
        if missing:
            self._notice(f"busi: {self.path}: this model carries no {', '.join(missing)} (exported by an older busi): "
                         + ("its probabilities are the network's own, and " if self.info.calibration is None else "")
                         + "what needs the missing parts is left out")
        self.site_prevalence = None
        if o.prevalence is not None:
            if self.info.prevalence is None:
                raise UsageError(f"{self.path}: the model does not record its training prevalence; --prevalence needs it")
            self.site_prevalence = (parse_prevalence(o.prevalence, self.info.prevalence) if isinstance(o.prevalence, str)
                                    else parse_prevalence(",".join(f"{k}={v}" for k, v in o.prevalence.items())))
        self.coverage = None if self.info.conformal is None else float(o.coverage or self.info.conformal.coverage)
        #: model outputs + prepared image -> Prediction (flag, OOD verdict, band, prediction set)
        self.assembler = ResultAssembler(self.runner, self.threshold, self.provider, self.sha256, self.site_prevalence,
                                         self.coverage)
        self.qhat = self.assembler.qhat
        self.size = self.info.input.size
        #: what mask=None means: "auto" where a lesion segmenter is at hand (given, or
        #: segmenter.onnx beside the model) and the model was trained with lesion masks, else "none"
        self.default_mask = "auto" if self.info.mask.source != "none" and (
            o.segmenter is not None or (not o.server and _segmenter_beside(self.path))) else "none"
        if not o.server:  # a served model is the server's to check (busi-serve loads it through this class)
            self.runner.probe()

    @property
    def session(self):
        """The classifier's session (the runner's)."""
        return self.runner.session

    # ---- notices -------------------------------------------------------------------------
    def notice_once(self, key: str, msg: str) -> None:
        with self._lock:
            if key in self._noticed:
                return
            self._noticed.add(key)
        self._notice(msg)

    # ---- preprocessing --------------------------------------------------------------------
    @property
    def segmenter(self) -> "Segmenter":
        """The lesion segmenter for mask="auto": the one given, else `segmenter.onnx` beside
        the model (loaded once, on first use)."""
        from .model_dir import ModelDir
        from .segmenter import Segmenter

        with self._lock:
            if not hasattr(self._segmenter, "assess") and self.server and self._segmenter is None:
                self._segmenter = Segmenter(None, notice=self._notice, require_sha256=self._require, server=self.server,
                                            token=self._token)  # the server's busi_segmenter
            if not hasattr(self._segmenter, "assess"):  # a Segmenter (or anything with its assess()) is used as given
                path = Path(self._segmenter) if self._segmenter is not None else ModelDir(self.path.parent).segmenter_onnx
                if not path.exists():
                    raise ModelError(path, "no lesion segmenter for --mask auto (train one: busi-train segmenter, then busi-export)")
                # the classifier's device choice holds for the segmenter too: no second probe or notice
                device = {"CUDAExecutionProvider": "cuda", "OpenVINO CPU": "openvino"}.get(self.provider, "cpu")
                self._segmenter = Segmenter(path, device, self._verify, self._threads, self._notice, self._require)
            return self._segmenter

    def prepare(
        self, image: str | os.PathLike | np.ndarray, mask: MaskInput = None, frame: int = 0, keep_view: bool = False
    ) -> Prepared | NeedsRoi:
        """Decode, resize and build the model's mask; raises InputError naming the file. With
        mask "auto", a `NeedsRoi` instead when the segmenter is unsure or what it found is not a
        plausible lesion (see `Segmenter.assess`).

        mask: None (`default_mask`: "auto" where the model has a segmenter, else "none"), "none"
        (whole image), "auto" (the lesion segmenter), a box (x, y, w, h) or "x,y,w,h", a
        bool/0-1/0-255 array, a mask file, or a folder of `<stem>_mask*.png` (an empty mask, a
        normal image's, gets what training gave normal images, with a note).
        The lesion is turned into the mask the model was trained with (its box with the
        trained margin, the mask itself, or the whole image)."""
        path = None if isinstance(image, (np.ndarray, bytes, bytearray, memoryview)) else str(image)
        return self._prepare(self.decode(image, frame), path, MaskArg.of(mask), frame, keep_view)

    def prepare_frames(self, image: ImageArg, mask: MaskInput = None, keep_view: bool = False) -> list[Prepared | NeedsRoi]:
        """Every frame of a multi-frame DICOM (a cine loop), decoded from one read of the file
        and prepared one by one; any other image is one item, as `prepare` gives it."""
        mask = MaskArg.of(mask)
        dcm, path = self._dicom_of(image)
        if dcm is None:
            return [self.prepare(image, mask, 0, keep_view)]
        out = []
        for i in range(dcm.n_frames):
            rgb, notes = dcm.frame(i)
            check_min_side(dcm.path, rgb.shape[1], rgb.shape[0])
            decoded = Decoded(np.ascontiguousarray(rgb), tuple(notes), dict(dcm.identity), dcm.n_frames, dcm.ds)
            out.append(self._prepare(decoded, path, mask, i, keep_view))
        return out

    def _dicom_of(self, image) -> tuple[DicomImage | None, str | None]:
        """(the DICOM, the path it was read from) for a DICOM file, DICOM bytes (no path) or a
        DicomImage parsed already (busi-node looked at its header); (None, None) for anything else."""
        if isinstance(image, DicomImage):
            return image, str(image.path)
        if isinstance(image, (str, os.PathLike)):
            path, data = str(image), read_regular(image, self.max_bytes)
        elif isinstance(image, (bytes, bytearray, memoryview)):
            path, data = None, bytes(image)
        else:
            return None, None
        if not (data and is_dicom(data)):
            return None, None
        return DicomImage(path or "<image bytes>", data, max_pixels=self.max_pixels), path

    def _prepare(self, decoded: Decoded, path: str | None, mask: MaskArg, frame: int, keep_view: bool) -> Prepared:
        """The one place where each form of the mask (`MaskArg.kind`) meets the image."""
        rgb = decoded.rgb
        H, W = rgb.shape[:2]
        S = self.size
        spec = self.info.mask
        trained = spec.source
        lesion, found, presence, notes = None, None, None, list(decoded.notes)
        if mask.kind == "default":
            mask = MaskArg(self.default_mask)
            if mask.kind == "none" and trained != "none":  # one line, instead of the mismatch notice
                self.notice_once("mode:none", f"busi: {self.path}: the model has no lesion segmenter (segmenter.onnx beside it), so the whole image is "
                                 f"classified, outside its training conditions ('{trained}' masks): give the lesion box with "
                                 "--roi x,y,w,h or a mask with --mask FILE|FOLDER (mask= in the Python API)")
        if mask.kind == "invalid":
            raise mask.problem(path)
        if mask.kind == "none":
            source = "none"
        elif mask.kind == "auto":
            source = "auto"
            try:
                finding = self.segmenter.assess(rgb)
            except ModelError as e:  # the segmenter's output is not finite: this image's failure, naming both
                raise ModelError(path or "image", f"{e.problem} (segmenter {e.path})") from None
            presence = finding.presence
            if finding.needs_roi:  # unsure, or not a plausible lesion: no class for a guessed box
                pr = self.segmenter.info.presence
                cand = None if finding.candidate is None else bbox(finding.candidate)
                return NeedsRoi(path, f"{path or 'image'}: needs an ROI: {finding.needs_roi}", presence,
                                (pr.low, pr.high), cand, self.provider, self.sha256, notes, self._dicom(decoded, frame),
                                extras=_view(rgb, np.zeros((S, S), bool), finding.candidate, decoded) if keep_view else {})
            lesion = finding.lesion
            found = lesion is not None
            if not found:
                notes.append("the segmenter found no lesion; classified with " + NO_LESION[trained])
        elif mask.kind == "box":
            box = mask.box
            x, y, w, h = box
            if w <= 0 or h <= 0:
                raise InputError(path, f"ROI {box} has zero or negative size")
            if x < 0 or y < 0 or x + w > W or y + h > H:
                raise InputError(path, f"ROI {box} lies outside the {W}x{H} image")
            lesion = box_mask((H, W), box)
            source = "box"
        else:  # a mask array, file or folder
            if mask.kind == "array":
                lesion = mask_array(mask.array, spec.threshold)
                label = "mask array"
            else:
                lesion, label = self._mask_from_path(mask.path, path, (H, W))
            if lesion.shape != (H, W):
                self.notice_once(f"size:{label}", f"busi: {label}: mask is {lesion.shape[1]}x{lesion.shape[0]}, image is {W}x{H}; resized (nearest)")
                lesion = resize_mask(lesion, (H, W))
            if not lesion.any():  # a normal image in a BUSI-style mask folder: shown as in training
                notes.append(f"mask {label} is empty (no lesion, as for a normal image); classified with {NO_LESION[trained]}")
                lesion = None
            source = "box" if trained == "box" else "gt"  # a box-trained model gets the mask's box
        if source == "none":
            m, lesion_box = np.ones((S, S), bool), None
        else:
            m, lesion_box = model_mask(lesion, (H, W), S, trained, spec.box_margin, spec.placeholder)
        self._notice_mismatch(source, trained)
        img = resize_rgb(rgb, S).astype(np.float32)
        view = _view(rgb, m, lesion, decoded) if keep_view else None
        return Prepared(path, img, m.astype(np.float32)[:, :, None], source, lesion_box, found, notes, view,
                        self._dicom(decoded, frame), presence)

    @staticmethod
    def _dicom(decoded: Decoded, frame: int) -> dict | None:
        return None if decoded.identity is None else {**(decoded.identity or {}), "frame": frame, "frames": decoded.frames}

    def decode(self, image: ImageArg, frame: int = 0) -> Decoded:
        """An image path, encoded bytes (PNG, JPEG, DICOM) or an array -> `Decoded` RGB uint8."""
        if isinstance(image, np.ndarray):
            return Decoded(check_array(image, self.max_pixels))
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
            if not data:
                raise InputError("<image bytes>", "empty (0 bytes)")
            if len(data) > self.max_bytes:
                raise InputError("<image bytes>", f"{len(data):,} bytes, above the limit of {self.max_bytes:,}")
            return decode_image(data, "<image bytes>", max_pixels=self.max_pixels, frame=frame)
        if isinstance(image, (str, os.PathLike)):
            if not os.fspath(image).strip():  # Path("") is "." (the current folder)
                raise InputError(None, "image path is empty")
            return read_image(image, max_pixels=self.max_pixels, frame=frame, max_bytes=self.max_bytes)
        raise InputError(None, f"image must be a file path, encoded image bytes or a numpy array, got {type(image).__name__}")

    def _notice_mismatch(self, source: str, trained: str) -> None:
        if source in (trained, "auto"):
            return
        if trained == "none":
            msg = "busi: model was trained on whole images (mask source none): the given mask or ROI is not applied"
        elif source == "none":
            msg = f"busi: model was trained with '{trained}' masks; this input uses 'none' (whole image), outside its training conditions"
        else:
            msg = f"busi: model was trained with '{trained}' masks (lesion outlines); a box is outside its training conditions"
        self.notice_once(f"mode:{source}", msg)

    def _mask_from_path(self, mask: Path, image_path: str | None, shape) -> tuple[np.ndarray, str]:
        """The lesion mask (OR of a BUSI image's mask files) and the file names, for messages."""
        if mask.is_dir():
            if image_path is None:
                raise InputError(None, "a mask folder needs an image path to look up <stem>_mask*.png")
            files = find_mask_files(image_path, mask) or find_mask_files(image_path, mask, recursive=True)
            if not files:
                raise InputError(image_path, f"no {Path(image_path).stem}_mask*.png in {mask}")
        else:
            files = [mask]
        out = None
        for f in files:
            m = read_mask(f, threshold=self.info.mask.threshold, max_pixels=self.max_pixels)
            if m.shape != shape:
                self.notice_once(f"size:{f}", f"busi: {f}: mask is {m.shape[1]}x{m.shape[0]}, image is {shape[1]}x{shape[0]}; resized (nearest)")
                m = resize_mask(m, shape)
            out = m if out is None else (out | m)
        return out, " + ".join(map(str, files))

    # ---- inference ------------------------------------------------------------------------
    def run(self, images: np.ndarray, masks: np.ndarray, tta: bool = False, explain: bool = False):
        """Deprecated: `Predictor.runner.run` gives (probabilities, Grad-CAM maps, features) of a
        prepared batch. Returns the calibrated probabilities, with `explain` (probabilities, maps)."""
        import warnings

        warnings.warn("Predictor.run is deprecated: use Predictor.predict/iter_predict, or Predictor.runner.run for "
                      "prepared arrays", DeprecationWarning, stacklevel=2)
        p, cams, _ = self.runner.run(images, masks, tta, explain)
        return (p, cams) if explain else p

    def predict(
        self, image, mask: MaskInput = None, *, threshold: float | None = None, tta: bool = False, frame: int | str = 0,
        explain: bool = False, keep_view: bool = False,
    ) -> Prediction | NeedsRoi:
        """One image; raises InputError for a bad one. `frame="all"`: every frame of a cine
        loop, aggregated (see `aggregate`). With mask "auto" it may abstain: a `NeedsRoi`
        (no class) with the reason."""
        if threshold is not None:
            check_threshold(threshold)
        if frame == "all":
            frames = self.prepare_frames(image, mask, keep_view)
            res = {}
            todo = [f for f in frames if isinstance(f, Prepared)]
            for i in range(0, len(todo), MAX_BATCH):
                res.update(self._run_split(todo[i:i + MAX_BATCH], threshold, tta, explain))
            out = self.aggregate([res[id(f)] if isinstance(f, Prepared) else f for f in frames])
            if isinstance(out, Failure):
                raise (ModelError if NOT_FINITE in out.error else InputError)(out.path, out.error.split(": ", 1)[-1])
            return out
        prep = self.prepare(image, mask, frame_index(frame), keep_view)
        if isinstance(prep, NeedsRoi):
            return prep
        p, cams, feats = self.runner.run(prep.image[None], prep.mask[None], tta, explain)
        return self.assembler.result(prep, p[0], threshold, tta, None if cams is None else cams[0],
                            None if feats is None else feats[0])

    def iter_predict(
        self,
        items: Iterable[Any],
        mask: MaskInput = None,
        *,
        batch_size: int = 8,
        workers: int = 2,
        threshold: float | None = None,
        tta: bool = False,
        frame: int | str = 0,
        explain: bool = False,
        keep_view: bool = False,
    ) -> Iterator[Prediction | NeedsRoi | Failure]:
        """Predict many images in order; decoding runs ahead in a bounded thread pool while
        the session works. A bad file yields a `Failure` and the others go on.

        Each item is an image (path, encoded bytes or array) or an (image, mask) pair. A single
        path or bytes object is one item, not a sequence of characters. `batch_size` is capped
        at MAX_BATCH; a batch that the session cannot run is split, down to the one image that
        fails, which becomes a `Failure`. `frame="all"` classifies every frame of a cine loop
        (multi-frame DICOM) and gives one aggregated result for it (`aggregate`)."""
        if isinstance(items, (str, os.PathLike, bytes, bytearray, memoryview)):
            items = [items]
        if not hasattr(items, "__iter__") or isinstance(items, np.ndarray) and items.ndim < 1:
            raise UsageError(f"items must be an image or a sequence of images (paths, bytes, arrays), got {type(items).__name__}")
        mask = MaskArg.of(mask)  # once for the call; a pair's own mask is read with its image
        if threshold is not None:
            check_threshold(threshold)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise UsageError(f"batch_size must be a whole number, got {batch_size!r}")
        batch_size = max(1, min(int(batch_size), MAX_BATCH))
        if frame != "all":
            frame = frame_index(frame)

        def prep(item):
            return self.prepare_item(item, mask, frame, keep_view)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending: deque = deque()
            it = iter(items)
            window = max(2, batch_size * 2)
            exhausted = False
            n_prepared = 0
            out_queue: list = []

            def flush():
                out_queue[:] = self.classify(out_queue, threshold=threshold, tta=tta, explain=explain,
                                             batch_size=batch_size)

            while True:
                while not exhausted and len(pending) < window:
                    try:
                        pending.append(pool.submit(prep, next(it)))
                    except StopIteration:
                        exhausted = True
                if not pending:
                    break
                x = pending.popleft().result()
                out_queue.append(x)
                if isinstance(x, Prepared):
                    n_prepared += 1
                elif isinstance(x, list):  # the frames of a cine loop
                    n_prepared += sum(isinstance(f, Prepared) for f in x)
                if n_prepared >= batch_size or (exhausted and not pending):
                    flush()
                    yield from out_queue
                    out_queue.clear()
                    n_prepared = 0
            flush()
            yield from out_queue

    def prepare_item(self, item: Any, mask: MaskArg = None, frame: int | str = 0,
                     keep_view: bool = False) -> "Prepared | list | NeedsRoi | Failure":
        """One item of `iter_predict` made ready for the model, without raising for a bad
        input: a `Prepared`, the list of a cine loop's frames (`frame="all"` on a multi-frame
        DICOM), a `NeedsRoi`, or a `Failure` naming the input. Thread-safe: `iter_predict`
        (and busi-node) run it in a pool of decoding threads while the session works."""
        if isinstance(item, Failure):  # already known to be unusable (busi-infer's folder walk)
            return item
        img, m = item if isinstance(item, tuple) and len(item) == 2 and not is_box(item) else (item, mask)
        try:
            if frame == "all":
                frames = self.prepare_frames(img, m, keep_view)
                return frames[0] if len(frames) == 1 else frames
            return self.prepare(img, m, frame_index(frame), keep_view)
        except BusiError as e:
            return Failure(_label(img), str(e))
        except Exception as e:  # never let one odd file stop a batch
            return Failure(_label(img), f"{_label(img) or 'image'}: {describe(e)}")

    def classify(self, items: list, *, threshold: float | None = None, tta: bool = False, explain: bool = False,
                 batch_size: int = MAX_BATCH) -> list["Prediction | NeedsRoi | Failure"]:
        """Results, in order, for items from `prepare_item`: every `Prepared` among them (a
        cine loop's frames included) goes through the model in runs of at most `batch_size`
        images; a cine loop is aggregated; NeedsRoi and Failure pass through. A run the
        session cannot do is split down to the image that fails, which becomes a Failure."""
        if threshold is not None:
            check_threshold(threshold)
        batch_size = max(1, min(int(batch_size), MAX_BATCH))
        batch = [f for x in items for f in (x if isinstance(x, list) else [x]) if isinstance(f, Prepared)]
        results: dict = {}
        for i in range(0, len(batch), batch_size):
            results.update(self._run_split(batch[i:i + batch_size], threshold, tta, explain))
        out = []
        for x in items:
            if isinstance(x, Prepared):
                x = results[id(x)]
            elif isinstance(x, list):  # the frames of one cine loop
                x = self.aggregate([results[id(f)] if isinstance(f, Prepared) else f for f in x])
            out.append(x)
        return out

    def aggregate(self, frames: list) -> Prediction | NeedsRoi | Failure:
        """One result for a cine loop classified frame by frame (`ResultAssembler.aggregate`)."""
        return self.assembler.aggregate(frames)

    def _run_split(self, batch: list[Prepared], threshold, tta: bool, explain: bool) -> dict[int, Prediction | Failure]:
        """Results of a batch keyed by id(Prepared); a batch the session cannot run (memory,
        a graph that refuses this input) is halved until the failing image is alone."""
        try:
            probs, cams, feats = self.runner.run(np.stack([b.image for b in batch]), np.stack([b.mask for b in batch]), tta, explain)
        except ServerError as e:  # the server is down or refused: each image of the batch fails, the run goes on
            return {id(b): Failure(b.path, f"{b.path or 'image'}: {e}") for b in batch}
        except BusiError:
            raise
        except Exception as e:
            if len(batch) > 1:
                half = len(batch) // 2
                return {**self._run_split(batch[:half], threshold, tta, explain),
                        **self._run_split(batch[half:], threshold, tta, explain)}
            return {id(batch[0]): Failure(batch[0].path, f"{batch[0].path or 'image'}: inference failed ({describe(e)})")}
        cams = [None] * len(batch) if cams is None else cams
        feats = [None] * len(batch) if feats is None else feats
        out = {}
        for b, p, c, f in zip(batch, probs, cams, feats):
            try:
                out[id(b)] = self.assembler.result(b, p, threshold, tta, c, f)
            except ModelError as e:  # this image's output is not finite: its failure, the batch goes on
                out[id(b)] = Failure(b.path, str(e))
        return out

    def predict_many(self, items: Iterable[Any], mask: MaskInput = None, **kw) -> list[Prediction | NeedsRoi | Failure]:
        return list(self.iter_predict(items, mask, **kw))


#: what a model is given where there is no lesion (a normal image), by its trained mask source
NO_LESION = {"box": "a lesion-sized box in the image centre, as normal images were shown in training",
             "gt": "an empty mask, as normal images were shown in training",
             "none": "the whole image"}
def _segmenter_beside(model: Path) -> bool:
    from .model_dir import ModelDir

    return ModelDir(model.parent).segmenter_onnx.is_file()


def _view(rgb: np.ndarray, model_mask_: np.ndarray, lesion: np.ndarray | None, decoded: Decoded | None = None,
          max_side: int = 512) -> dict:
    """A thumbnail of the image with what the classifier saw and the lesion, for reports; for a
    DICOM image the dataset it was decoded from ("dicom_source"), which the DICOM outputs reuse
    instead of parsing the file again."""
    from .gradcam import thumbnail

    thumb = thumbnail(rgb, max_side)
    hw = thumb.shape[:2]
    out = {"view": thumb, "mask": resize_mask(model_mask_, hw)}
    if lesion is not None:
        out["lesion"] = resize_mask(lesion, hw)
        out["lesion_mask"] = lesion  # at the image's own size (a DICOM SEG needs it)
    if decoded is not None and decoded.dataset is not None:
        out["dicom_source"] = decoded.dataset
    return out


def _label(img) -> str | None:
    """How a failure names its input: the path, or None for arrays and bytes."""
    if isinstance(img, DicomImage):
        return str(img.path)
    return str(img) if isinstance(img, (str, os.PathLike)) else None


_CACHE: dict[str, Predictor] = {}
_CACHE_LOCK = threading.Lock()


def predict_breast_cancer(image_path, model, mask: MaskInput = None, **kw) -> dict[str, Any]:
    """The seed's call shape: returns {"class", "confidence", "probabilities", ...}. With
    mask="auto" it may instead return {"needs_roi": True, "reason": ..., "lesion_presence": ...}
    and no class: the segmenter was unsure or found no plausible lesion; give a box.

    `model` is a Predictor or a path to a busi .onnx file (loaded once and cached).
    """
    if not isinstance(model, Predictor):
        if not isinstance(model, (str, os.PathLike)):
            raise UsageError(f"model must be a Predictor or the path of a busi .onnx file, got {type(model).__name__}")
        key = str(Path(model).resolve())
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = Predictor(model)
            model = _CACHE[key]
    return model.predict(image_path, mask, **kw).to_dict()
