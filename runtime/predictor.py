"""`Predictor`: the embeddable API (ONNX file in, typed predictions out; no TensorFlow).

    from busi.runtime import Predictor, predict_breast_cancer
    p = Predictor("models/demo/model.onnx")
    r = p.predict("case.png", mask=(120, 80, 60, 40))   # ROI box x, y, w, h
    r.label, r.confidence, r.probabilities, r.malignant
    predict_breast_cancer("case.png", p)["class"]
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Union

import numpy as np

from .contract import CAM_WEIGHTS_NAME, FEATURES_NAME, INPUT_NAMES, OUTPUT_NAME, ModelInfo, check_graph_shape
from .errors import BusiError, InputError, ModelError
from .files import DEFAULT_MAX_BYTES
from .log import get as get_logger
from .imageio import Decoded, decode_image, read_image, read_mask, resize_mask, resize_rgb
from .pixels import DEFAULT_MAX_PIXELS, check_min_side, check_pixel_limit, to_uint8
from .masks import Box, box_mask, find_mask_files, model_mask
from .session import create_session
from .verify import verified_sha256

_LOG = get_logger(__name__)

if TYPE_CHECKING:
    from .segmenter import Segmenter

MaskArg = Union[None, str, os.PathLike, np.ndarray, tuple, list]
ImageArg = Union[str, os.PathLike, bytes, np.ndarray]
#: the most images one session.run gets; a larger batch_size is capped to it
MAX_BATCH = 256


@dataclass
class Prediction:
    path: str | None
    label: str
    confidence: float
    probabilities: dict[str, float]
    malignant: bool
    threshold: float
    mask_source: str
    lesion_box: Box | None
    provider: str
    model_sha256: str
    tta: bool = False
    lesion_found: bool | None = None  # mask source auto: did the segmenter find a lesion?
    notes: list[str] = field(default_factory=list)
    #: DICOM inputs: StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, frame and frames
    dicom: dict[str, Any] | None = None
    #: not serialized: "cam" (Grad-CAM map, feature-map size) with explain=True; "view"
    #: (thumbnail RGB), "mask" (what the classifier saw) and "lesion" (found/given lesion)
    #: with keep_view=True
    extras: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extras"}
        d["probabilities"] = dict(self.probabilities)
        d["notes"] = list(self.notes)
        d = {"class" if k == "label" else k: v for k, v in d.items()}
        d["lesion_box"] = list(self.lesion_box) if self.lesion_box else None
        if self.dicom is None:
            del d["dicom"]
        else:
            d["dicom"] = dict(self.dicom)
        return d

    def __getitem__(self, key: str):  # result["class"], result["confidence"] as in the seed
        return self.to_dict()[key]


@dataclass
class Failure:
    path: str | None
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error}


@dataclass
class Prepared:
    path: str | None
    image: np.ndarray  # (S, S, 3) float32
    mask: np.ndarray  # (S, S, 1) float32
    mask_source: str
    lesion_box: Box | None
    lesion_found: bool | None = None
    notes: list[str] = field(default_factory=list)
    view: dict[str, np.ndarray] | None = None
    dicom: dict[str, Any] | None = None


def parse_box(value: Any) -> Box:
    """(x, y, w, h) from a tuple/list or 'x,y,w,h' string; InputError when malformed."""
    try:
        parts = value.replace(" ", "").split(",") if isinstance(value, str) else list(np.ravel(value))
        if len(parts) != 4:
            raise ValueError
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise InputError(None, f"ROI must be x,y,w,h (four numbers), got {value!r}") from None
    if not all(math.isfinite(v) and abs(v) < 1e9 for v in numbers):
        raise InputError(None, f"ROI must be four finite pixel coordinates, got {value!r}")
    x, y, w, h = (int(round(v)) for v in numbers)
    return x, y, w, h


class Predictor:
    """A loaded busi ONNX model. Safe to share between threads."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "auto",
        verify: bool = True,
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        threshold: float | None = None,
        notice: Callable[[str], None] | None = None,
        segmenter: "str | os.PathLike | Segmenter | None" = None,
        require_sha256: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        self.path = Path(model_path)
        self._notice = notice or _LOG.warning  # the "busi" log, unless the caller takes the notices
        self._noticed: set[str] = set()
        self._lock = threading.Lock()
        self.sha256 = verified_sha256(self.path, verify, require_sha256, self._notice)
        self._threads, self._verify, self._require = threads, verify, require_sha256
        self._segmenter = segmenter
        self.session, self.provider = create_session(str(self.path), device, threads, self._notice)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(meta, str(self.path))
        ins = {i.name: i.shape for i in self.session.get_inputs()}
        outs = {o.name: o.shape for o in self.session.get_outputs()}
        if sorted(ins) != sorted(INPUT_NAMES) or OUTPUT_NAME not in outs:
            raise ModelError(self.path, f"model inputs {sorted(ins)} / outputs {list(outs)}, expected inputs image, mask and output probabilities")
        S, n = self.info.input.size, len(self.info.classes)
        check_graph_shape(self.path, "input image", ins["image"], (None, S, S, 3), "busi.input.size")
        check_graph_shape(self.path, "input mask", ins["mask"], (None, S, S, 1), "busi.input.size")
        check_graph_shape(self.path, "output probabilities", outs[OUTPUT_NAME], (None, n), "busi.classes")
        self.explainable = FEATURES_NAME in outs and CAM_WEIGHTS_NAME in outs
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.threshold = float(self.info.malignant_threshold if threshold is None else threshold)
        self.size = self.info.input.size

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
            if not hasattr(self._segmenter, "find"):  # a Segmenter (or anything with its find()) is used as given
                path = Path(self._segmenter) if self._segmenter is not None else ModelDir(self.path.parent).segmenter_onnx
                if not path.exists():
                    raise ModelError(path, "no lesion segmenter for --mask auto (train one: busi-train segmenter, then busi-export)")
                # the classifier's device choice holds for the segmenter too: no second probe or notice
                device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
                self._segmenter = Segmenter(path, device, self._verify, self._threads, self._notice, self._require)
            return self._segmenter

    def prepare(
        self, image: str | os.PathLike | np.ndarray, mask: MaskArg = None, frame: int = 0, keep_view: bool = False
    ) -> Prepared:
        """Decode, resize and build the model's mask; raises InputError naming the file.

        mask: None or "none" (whole image), "auto" (the lesion segmenter), a box (x, y, w, h)
        or "x,y,w,h", a bool/0-1/0-255 array, a mask file, or a folder of `<stem>_mask*.png`.
        The lesion is turned into the mask the model was trained with (its box with the
        trained margin, the mask itself, or the whole image)."""
        decoded = self.decode(image, frame)
        rgb = decoded.rgb
        path = None if isinstance(image, (np.ndarray, bytes, bytearray, memoryview)) else str(image)
        H, W = rgb.shape[:2]
        S = self.size
        spec = self.info.mask
        trained = spec.source
        lesion, found, notes = None, None, list(decoded.notes)
        if mask is None or (isinstance(mask, str) and mask == "none"):
            source = "none"
        elif isinstance(mask, str) and mask == "auto":
            source = "auto"
            lesion = self.segmenter.find(rgb)
            found = lesion is not None
            if not found:
                notes.append(
                    "the segmenter found no lesion; classified with "
                    + {"box": "a lesion-sized box in the image centre, as normal images were shown in training",
                       "gt": "an empty mask, as normal images were shown in training",
                       "none": "the whole image"}[trained]
                )
        elif (isinstance(mask, (tuple, list)) or (isinstance(mask, np.ndarray) and mask.ndim == 1)
              or (isinstance(mask, str) and "," in mask and not Path(mask).exists())):
            box = parse_box(mask)
            x, y, w, h = box
            if w <= 0 or h <= 0:
                raise InputError(path, f"ROI {box} has zero or negative size")
            if x < 0 or y < 0 or x + w > W or y + h > H:
                raise InputError(path, f"ROI {box} lies outside the {W}x{H} image")
            lesion = box_mask((H, W), box)
            source = "box"
        else:
            if isinstance(mask, np.ndarray):
                lesion = _mask_array(mask, spec.threshold)
                label = "mask array"
            else:
                lesion = self._mask_from_path(Path(mask), path, (H, W))
                label = str(mask)
            if lesion.shape != (H, W):
                self.notice_once(f"size:{label}", f"busi: {label}: mask is {lesion.shape[1]}x{lesion.shape[0]}, image is {W}x{H}; resized (nearest)")
                lesion = resize_mask(lesion, (H, W))
            if not lesion.any():
                raise InputError(path, f"mask {label} is empty (no lesion pixels); give --roi x,y,w,h or --mask none")
            source = "box" if trained == "box" else "gt"  # a box-trained model gets the mask's box
        if source == "none":
            m, lesion_box = np.ones((S, S), bool), None
        else:
            m, lesion_box = model_mask(lesion, (H, W), S, trained, spec.box_margin, spec.placeholder)
        self._notice_mismatch(source, trained)
        img = resize_rgb(rgb, S).astype(np.float32)
        view = _view(rgb, m, lesion) if keep_view else None
        dicom = None if decoded.identity is None else {
            **(decoded.identity or {}), "frame": frame, "frames": decoded.frames}
        return Prepared(path, img, m.astype(np.float32)[:, :, None], source, lesion_box, found, notes, view, dicom)

    def decode(self, image: ImageArg, frame: int = 0) -> Decoded:
        """An image path, encoded bytes (PNG, JPEG, DICOM) or an array -> `Decoded` RGB uint8."""
        if isinstance(image, np.ndarray):
            return Decoded(_check_array(image, self.max_pixels))
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
            if not data:
                raise InputError("<image bytes>", "empty (0 bytes)")
            if len(data) > self.max_bytes:
                raise InputError("<image bytes>", f"{len(data):,} bytes, above the limit of {self.max_bytes:,}")
            return decode_image(data, "<image bytes>", max_pixels=self.max_pixels, frame=frame)
        if isinstance(image, (str, os.PathLike)):
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

    def _mask_from_path(self, mask: Path, image_path: str | None, shape) -> np.ndarray:
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
        return out

    # ---- inference ------------------------------------------------------------------------
    def run(self, images: np.ndarray, masks: np.ndarray, tta: bool = False, explain: bool = False):
        """Raw batch inference: (N,S,S,3) float32, (N,S,S,1) float32 -> (N, classes).

        With `explain`, returns (probabilities, Grad-CAM maps (N, h, w) of each image's
        predicted class) from the unflipped pass."""
        if explain and not self.explainable:
            raise ModelError(self.path, "model has no Grad-CAM outputs (features, cam_weights); re-export it with busi-export")
        names = [OUTPUT_NAME, FEATURES_NAME, CAM_WEIGHTS_NAME] if explain else [OUTPUT_NAME]
        outs = self.session.run(names, {"image": images, "mask": masks})
        p = outs[0]
        if p.ndim != 2 or p.shape != (len(images), len(self.info.classes)):  # a symbolic width that lied
            raise ModelError(self.path, f"output probabilities has shape {p.shape}, expected ({len(images)}, {len(self.info.classes)})")
        if tta:
            p2 = self.session.run([OUTPUT_NAME], {"image": images[:, :, ::-1].copy(), "mask": masks[:, :, ::-1].copy()})[0]
            p = (p + p2) / 2
        if not explain:
            return p
        from .gradcam import grad_cam

        cams = np.stack([grad_cam(outs[1][i], outs[2][i], int(np.argmax(p[i]))) for i in range(len(p))])
        return p, cams

    def _result(self, prep: Prepared, proba: np.ndarray, threshold: float | None, tta: bool, cam=None) -> Prediction:
        t = self.threshold if threshold is None else float(threshold)
        classes = self.info.classes
        k = int(np.argmax(proba))
        extras = dict(prep.view or {})
        if cam is not None:
            extras["cam"] = cam
        return Prediction(
            path=prep.path,
            label=classes[k],
            confidence=float(proba[k]),
            probabilities={c: float(v) for c, v in zip(classes, proba)},
            malignant=bool(proba[classes.index("malignant")] >= t),
            threshold=t,
            mask_source=prep.mask_source,
            lesion_box=prep.lesion_box,
            provider=self.provider,
            model_sha256=self.sha256,
            tta=tta,
            lesion_found=prep.lesion_found,
            notes=list(prep.notes),
            dicom=prep.dicom,
            extras=extras,
        )

    def predict(
        self, image, mask: MaskArg = None, *, threshold: float | None = None, tta: bool = False, frame: int = 0,
        explain: bool = False, keep_view: bool = False,
    ) -> Prediction:
        prep = self.prepare(image, mask, frame, keep_view)
        out = self.run(prep.image[None], prep.mask[None], tta, explain)
        if explain:
            return self._result(prep, out[0][0], threshold, tta, out[1][0])
        return self._result(prep, out[0], threshold, tta)

    def iter_predict(
        self,
        items: Iterable[Any],
        mask: MaskArg = None,
        *,
        batch_size: int = 8,
        workers: int = 2,
        threshold: float | None = None,
        tta: bool = False,
        frame: int = 0,
        explain: bool = False,
        keep_view: bool = False,
    ) -> Iterator[Prediction | Failure]:
        """Predict many images in order; decoding runs ahead in a bounded thread pool while
        the session works. A bad file yields a `Failure` and the others go on.

        Each item is an image (path, encoded bytes or array) or an (image, mask) pair. A single
        path or bytes object is one item, not a sequence of characters. `batch_size` is capped
        at MAX_BATCH; a batch that the session cannot run is split, down to the one image that
        fails, which becomes a `Failure`."""
        if isinstance(items, (str, os.PathLike, bytes, bytearray, memoryview)):
            items = [items]
        batch_size = max(1, min(int(batch_size), MAX_BATCH))

        def prep(item):
            img, m = item if isinstance(item, tuple) and len(item) == 2 and not _is_box(item) else (item, mask)
            try:
                return self.prepare(img, m, frame, keep_view)
            except BusiError as e:
                return Failure(_label(img), str(e))
            except Exception as e:  # never let one odd file stop a batch
                return Failure(_label(img), f"{_label(img) or 'image'}: {type(e).__name__}: {e}")

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending: deque = deque()
            it = iter(items)
            window = max(2, batch_size * 2)
            exhausted = False
            batch: list[Prepared] = []
            out_queue: list = []

            def flush():
                if not batch:
                    return
                res = self._run_split(batch, threshold, tta, explain)
                for i, x in enumerate(out_queue):
                    if isinstance(x, Prepared):
                        out_queue[i] = res[id(x)]
                batch.clear()

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
                    batch.append(x)
                if len(batch) >= batch_size or (exhausted and not pending):
                    flush()
                    yield from out_queue
                    out_queue.clear()
            flush()
            yield from out_queue

    def _run_split(self, batch: list[Prepared], threshold, tta: bool, explain: bool) -> dict[int, Prediction | Failure]:
        """Results of a batch keyed by id(Prepared); a batch the session cannot run (memory,
        a graph that refuses this input) is halved until the failing image is alone."""
        try:
            out = self.run(np.stack([b.image for b in batch]), np.stack([b.mask for b in batch]), tta, explain)
        except BusiError:
            raise
        except Exception as e:
            if len(batch) > 1:
                half = len(batch) // 2
                return {**self._run_split(batch[:half], threshold, tta, explain),
                        **self._run_split(batch[half:], threshold, tta, explain)}
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            return {id(batch[0]): Failure(batch[0].path, f"{batch[0].path or 'image'}: inference failed "
                                                          f"({type(e).__name__}{': ' + msg if msg else ''})")}
        probs, cams = out if explain else (out, [None] * len(batch))
        return {id(b): self._result(b, p, threshold, tta, c) for b, p, c in zip(batch, probs, cams)}

    def predict_many(self, items: Iterable[Any], mask: MaskArg = None, **kw) -> list[Prediction | Failure]:
        return list(self.iter_predict(items, mask, **kw))


def _view(rgb: np.ndarray, model_mask_: np.ndarray, lesion: np.ndarray | None, max_side: int = 512) -> dict:
    """A thumbnail of the image with what the classifier saw and the lesion, for reports."""
    from .gradcam import thumbnail

    thumb = thumbnail(rgb, max_side)
    hw = thumb.shape[:2]
    out = {"view": thumb, "mask": resize_mask(model_mask_, hw)}
    if lesion is not None:
        out["lesion"] = resize_mask(lesion, hw)
    return out


def _is_box(item) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 4 and all(isinstance(v, (int, float)) for v in item)


def _label(img) -> str | None:
    """How a failure names its input: the path, or None for arrays and bytes."""
    return str(img) if isinstance(img, (str, os.PathLike)) else None


def _numeric(a: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
        raise InputError(None, f"{what} must be a numeric numpy array, got {getattr(a, 'dtype', type(a).__name__)}")
    if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
        raise InputError(None, f"{what} holds NaN or infinite values")
    if a.dtype.kind in "if" and a.size and a.min() < 0:
        raise InputError(None, f"{what} holds negative values")
    return a


def _check_array(a: np.ndarray, max_pixels: int = 0) -> np.ndarray:
    """An image array -> RGB uint8 (H, W, 3), by the rules files follow: uint8 as is, uint16
    like a 16-bit PNG (0..65535), bool as 0/255, floats in 0..1 or 0..255; NaN, inf, negative
    values and images under 8x8 are refused."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise InputError(None, f"image array must be HxW, HxWx3 (RGB) or HxWx4, got shape {a.shape}")
    check_min_side(None, a.shape[1], a.shape[0])
    check_pixel_limit(None, a.shape[1], a.shape[0], max_pixels)
    a = _numeric(a, "image array")[:, :, :3]
    if a.dtype in (np.uint8, np.uint16, bool):
        a = to_uint8(a)
    elif a.dtype.kind == "f":
        top = float(a.max())
        if top > 255.0:
            raise InputError(None, f"float image values must lie in 0..1 or 0..255, the maximum is {top:g}")
        a = np.clip(a * 255.0 if top <= 1.0 else a, 0, 255).round().astype(np.uint8)
    else:
        top = int(a.max())
        if top > 255:
            raise InputError(None, f"integer image values must lie in 0..255 (uint16 arrays are read as 16-bit), the maximum is {top}")
        a = a.astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def _mask_array(mask: np.ndarray, threshold: int) -> np.ndarray:
    """A lesion mask array (H, W) or (H, W, C): bool, 0/1 or 0..255 -> bool (H, W)."""
    m = _numeric(mask, "mask array")
    if m.ndim not in (2, 3) or min(m.shape[:2]) == 0:
        raise InputError(None, f"mask array must be HxW or HxWxC, got shape {m.shape}")
    lesion = m.astype(bool) if m.dtype == bool else m > (threshold if m.max() > 1 else 0.5)
    return lesion.any(axis=2) if lesion.ndim == 3 else lesion


_CACHE: dict[str, Predictor] = {}
_CACHE_LOCK = threading.Lock()


def predict_breast_cancer(image_path, model, mask: MaskArg = None, **kw) -> dict[str, Any]:
    """The seed's call shape: returns {"class", "confidence", "probabilities", ...}.

    `model` is a Predictor or a path to a busi .onnx file (loaded once and cached).
    """
    if not isinstance(model, Predictor):
        key = str(Path(model).resolve())
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = Predictor(model)
            model = _CACHE[key]
    return model.predict(image_path, mask, **kw).to_dict()
