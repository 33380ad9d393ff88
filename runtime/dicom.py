"""DICOM -> RGB uint8 with pydicom: VOI LUT / windowing, MONOCHROME1, YBR, PALETTE COLOR,
multi-frame; hostile metadata turned into one-line errors that name the tag.

Deflated files are inflated incrementally with a byte cap derived from the pixel limit, so a
1 MB file cannot inflate to gigabytes before its size is checked; the declared Rows x Columns
x frames are checked against the pixel data before any pixel is decoded.
"""

from __future__ import annotations

import io
import zlib
from contextlib import contextmanager

import numpy as np

from . import dicom_headers
from .errors import InputError, first_line
from .log import native_stderr_captured
from .pixels import check_pixel_limit, to_uint8

#: a deflated dataset may inflate to at most this many bytes per allowed pixel (+ headroom):
#: one 16-bit, 3-sample frame at the pixel limit
INFLATE_BYTES_PER_PIXEL = 6
INFLATE_HEADROOM = 16 << 20


def _tag_name(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    t = tag_for_keyword(keyword) or 0
    return f"({t >> 16:04X},{t & 0xFFFF:04X}) {keyword}"


def _raw(ds, keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    try:
        v = ds.get_item(tag_for_keyword(keyword)).value
    except Exception:
        return "?"
    if isinstance(v, bytes):
        v = v.decode("latin-1", "replace").strip("\x00 ")
    return str(v)[:40]


def _int(path, ds, keyword: str, default: int | None = None) -> int:
    """An integer attribute; InputError naming the tag when it is absent (without default),
    malformed or negative."""
    try:
        v = ds.get(keyword, default)
        if v is None:
            raise InputError(path, f"{_tag_name(keyword)} is missing")
        if not isinstance(v, (str, bytes)) and hasattr(v, "__len__"):  # a multi-valued element
            v = list(v)[0]
        v = int(v)
    except InputError:
        raise
    except Exception:
        raise InputError(path, f"{_tag_name(keyword)}: invalid value {_raw(ds, keyword)!r}") from None
    if v < 0:
        raise InputError(path, f"{_tag_name(keyword)}: invalid value {v}")
    return v


def read_dataset(path, data: bytes, max_pixels: int):
    """The whole dataset of a DICOM file's bytes, parsed once (a deflated one inflated with the
    cap that `max_pixels` allows); nothing checked or decoded yet: `DicomImage(dataset=...)`
    takes it from here, so a caller that must look at the header first (busi-node) does not
    parse the file twice."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    if data[128:132] != b"DICM":  # no preamble (a bare dataset, or file meta at offset 0)
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):  # the encoding it was read with
            from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

            implicit, little = ds.original_encoding
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        return ds
    fp = io.BytesIO(data)
    fp.seek(132)
    meta = FileMetaDataset(read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                                        stop_when=lambda tag, vr, length: tag.group != 2))
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        header = dicom_headers.take(path, data)  # busi-infer's folder walk parsed it up to the pixel data
        return _completed(header, data) if header is not None else pydicom.dcmread(io.BytesIO(data))
    cap = INFLATE_BYTES_PER_PIXEL * max_pixels + INFLATE_HEADROOM if max_pixels else 0
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    body = inflater.decompress(data[fp.tell():], INFLATE_HEADROOM)
    try:  # the attributes before the pixel data: the declared size is checked before inflating it
        head = read_dataset(io.BytesIO(body), is_implicit_VR=False, is_little_endian=True,
                            stop_when=lambda tag, vr, length: tag >= 0x7FE00000)
    except Exception:
        head = None
    if head is not None and max_pixels:
        rows, cols = _int(path, head, "Rows", 0), _int(path, head, "Columns", 0)
        check_pixel_limit(path, cols, rows, max_pixels)
    if inflater.unconsumed_tail:
        body += inflater.decompress(inflater.unconsumed_tail, max(1, cap - len(body)) if cap else 0)
    if cap and inflater.unconsumed_tail:
        raise InputError(path, f"deflated DICOM inflates to more than {cap:,} bytes (the limit for "
                               f"{max_pixels:,} pixels); refused before decoding")
    ds = read_dataset(io.BytesIO(body), is_implicit_VR=False, is_little_endian=True)
    ds.file_meta = meta
    ds.set_original_encoding(False, True)
    return ds


def header_only(ds):
    """A dataset of `ds`'s elements before its pixel data, with its file meta and encoding (what
    `dcmread(stop_before_pixels=True)` would give), sharing their values: what busi-node keeps
    of an image for its study summary, without reading the file again."""
    from pydicom.dataset import Dataset

    head = Dataset()
    for tag in ds.keys():
        if tag < 0x7FE00008:
            head[tag] = ds.get_item(tag, keep_deferred=True)
    if hasattr(ds, "file_meta"):
        head.file_meta = ds.file_meta
    head.preamble = getattr(ds, "preamble", None)
    implicit, little = ds.original_encoding
    if implicit is not None:
        head.set_original_encoding(implicit, little, ds.original_character_set)
    return head


def _completed(header, data: bytes):
    """`header` (parsed from `data` up to its pixel data) with the elements after it parsed:
    the same dataset as a parse of all of `data`, without parsing the header again."""
    from pydicom.filereader import read_dataset as read_elements

    implicit, little = header.original_encoding
    fp = io.BytesIO(data)
    fp.seek(len(header.busi_prefix))
    rest = read_elements(fp, implicit, little)
    for tag in rest.keys():
        header[tag] = rest.get_item(tag, keep_deferred=True)
    return header


#: the photometric interpretations busi shows, with their samples per pixel (HSV, ARGB, CMYK are retired)
PHOTOMETRIC_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3,
                       "YBR_PARTIAL_420": 3, "YBR_PARTIAL_422": 3, "YBR_ICT": 3, "YBR_RCT": 3}
#: interpretations that only describe compressed data (JPEG 2000, JPEG 4:2:0)
COMPRESSED_ONLY = ("YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


def _check_photometric(path, ds) -> None:
    """PhotometricInterpretation present, one busi shows, matching SamplesPerPixel; HighBit
    where the standard puts it (BitsStored - 1): a mismatch would decode to wrong grey levels
    or colours without an error."""
    if "PhotometricInterpretation" not in ds:
        raise InputError(path, f"{_tag_name('PhotometricInterpretation')} is missing")
    pi = str(ds.PhotometricInterpretation).strip().upper()
    if pi not in PHOTOMETRIC_SAMPLES:
        raise InputError(path, f"{_tag_name('PhotometricInterpretation')} {pi!r} is not supported (busi shows MONOCHROME1/2, "
                               "PALETTE COLOR, RGB and YBR; HSV, ARGB and CMYK are retired)")
    samples = _int(path, ds, "SamplesPerPixel", 1)
    if samples != PHOTOMETRIC_SAMPLES[pi]:
        raise InputError(path, f"{_tag_name('SamplesPerPixel')} {samples} does not fit PhotometricInterpretation {pi} "
                               f"({PHOTOMETRIC_SAMPLES[pi]} expected)")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    native = ts is None or not getattr(ts, "is_compressed", False)
    if native and pi in COMPRESSED_ONLY:
        raise InputError(path, f"PhotometricInterpretation {pi} is only used with compressed (JPEG 2000 or JPEG) data; "
                               "this pixel data is not compressed")
    if native and "HighBit" in ds and "BitsStored" in ds:
        high, stored = _int(path, ds, "HighBit"), _int(path, ds, "BitsStored")
        if high != stored - 1:
            raise InputError(path, f"{_tag_name('HighBit')} {high} with BitsStored {stored}: values stored away from the "
                                   "low bits (a retired layout) are not supported")


def _check_declared_size(path, ds, rows: int, cols: int, frames: int) -> None:
    """Native pixel data must hold what Rows x Columns x frames x samples x bits declare."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and getattr(ts, "is_compressed", False) or "PixelData" not in ds:
        return
    samples = _int(path, ds, "SamplesPerPixel", 1)
    bits = _int(path, ds, "BitsAllocated", 8)
    if bits not in (1, 8, 16, 32, 64) or samples not in (1, 3, 4):
        raise InputError(path, f"unsupported pixel layout: BitsAllocated {bits}, SamplesPerPixel {samples}")
    if samples == 3 and str(ds.get("PhotometricInterpretation", "")).strip().upper() == "YBR_FULL_422":
        samples = 2  # chroma shared by pixel pairs: Y Y Cb Cr for every two pixels
    need = (rows * cols * frames * samples * bits + 7) // 8
    have = len(ds.PixelData)
    if have < need:
        raise InputError(path, f"pixel data is truncated: {have:,} bytes, Rows x Columns x frames declare {need:,}")


#: JPEG start-of-frame markers (baseline, extended, progressive, lossless; arithmetic) and JPEG-LS's SOF55
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def codestream_size(data: bytes) -> tuple[str, int, int] | None:
    """(kind, width, height) that an embedded JPEG, JPEG-LS or JPEG 2000 codestream (or JP2
    file) declares in its header, read without decoding; None when `data` starts as none of
    them or the header is cut short (the decoder then says what is wrong)."""
    import struct

    if data[:2] == b"\xff\xd8":  # JPEG / JPEG-LS: markers up to the first SOF
        i = 2
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # standalone markers
                i += 2
                continue
            (length,) = struct.unpack(">H", data[i + 2:i + 4])
            if marker in _SOF:
                if i + 9 > len(data):
                    return None
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return ("JPEG-LS" if marker == 0xF7 else "JPEG"), w, h
            i += 2 + length
        return None
    k = data.find(b"\xff\x4f\xff\x51", 0, 4096)  # J2K: SOC then SIZ (inside a JP2 file's jp2c box too)
    if k >= 0 and (data[:4] == b"\xff\x4f\xff\x51" or data[4:8] == b"jP  ") and k + 24 <= len(data):
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[k + 8:k + 24])
        return "JPEG 2000", xsiz - xo, ysiz - yo
    return None


def _check_encapsulated(path, ds, rows: int, cols: int, max_pixels: int) -> None:
    """Compressed pixel data: each frame's codestream must declare Rows x Columns (and so stay
    under the pixel limit) before anything is decoded; a 64x64 file whose JPEG declares
    40000x40000 is refused from its headers."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or not getattr(ts, "is_compressed", False) or "PixelData" not in ds:
        return
    from pydicom.encaps import generate_fragments

    try:
        fragments = generate_fragments(ds.PixelData)
        for fragment in fragments:
            size = codestream_size(fragment[:65536])
            if size is None:
                continue
            kind, w, h = size
            if w != cols or (h != rows and h != 0):  # a JPEG height of 0 is given later (DNL)
                raise InputError(path, f"embedded {kind} declares {w}x{h} pixels, the DICOM Rows x Columns {cols}x{rows}; "
                                       "refused before decoding")
            check_pixel_limit(path, w, h, max_pixels)
    except InputError:
        raise
    except Exception:  # damaged encapsulation: the decoder reports it
        return


def _check_transfer_syntax(path, ds) -> None:
    """A transfer syntax that pydicom does not know (JPEG XL, a private one) is named as
    unsupported, not as a corrupt file."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        return
    try:
        _ = ts.is_compressed  # raises for a UID pydicom does not know as a transfer syntax
    except ValueError:
        what = UNKNOWN_SYNTAX_NAMES.get(str(ts), "")
        raise InputError(path, f"transfer syntax {str(ts)!r}{f' ({what})' if what else ''} is not supported by busi's "
                               "decoders") from None


def _drop_unusable_luts(ds) -> list[str]:
    """A Modality or VOI LUT Sequence whose item is empty or malformed (no descriptor or data,
    too few entries, entries above the declared bits) is ignored when the pixels decode without it: removed from the dataset, with a note."""
    notes = []
    for keyword, tag in (("ModalityLUTSequence", "(0028,3000)"), ("VOILUTSequence", "(0028,3010)")):
        if keyword not in ds:
            continue
        items = ds[keyword].value or []
        problems = [p for p in map(_lut_problem, items) if p] if items else ["is empty"]
        if problems:
            del ds[keyword]
            notes.append(f"{tag} {keyword} {problems[0]}; ignored"
                         + (" (the rescale slope/intercept or the stored values are used)" if keyword.startswith("Mod")
                            else " (the window, or the full pixel range, is used)"))
    return notes


def _drop_empty_rescale(ds) -> list[str]:
    """An empty RescaleSlope or RescaleIntercept (written as present without a value, as some
    vendors' samples are) is ignored with a note: slope 1 and intercept 0, the stored values."""
    notes = []
    for keyword, tag, default in (("RescaleSlope", "(0028,1053)", 1), ("RescaleIntercept", "(0028,1052)", 0)):
        if keyword in ds and ds[keyword].value in (None, "", b"", []):
            del ds[keyword]
            notes.append(f"{tag} {keyword} is empty; ignored ({default} is used)")
    return notes


def _lut_problem(item) -> str | None:
    """What makes a LUT item unusable (None: nothing): no descriptor or data, fewer entries than
    declared, or entries above the bits per entry it declares (a 12-bit table declared 8-bit)."""
    try:
        desc = item.get("LUTDescriptor")
        data = item.get("LUTData")
        if desc is None or len(desc) != 3 or data is None or len(data) == 0:
            return "is empty or malformed (no LUT descriptor or data)"
        entries = int(desc[0]) or 65536  # 0 means 2^16
        have = len(data) // 2 if isinstance(data, bytes) else len(data)  # OW bytes, or values
        if have < entries:
            return f"is malformed ({have} LUT entries, {entries} declared)"
        bits = int(desc[2])
        if not isinstance(data, bytes) and 1 <= bits <= 16:
            values = np.asarray(data)
            if values.size and (values.max() >= 1 << bits or values.min() < 0):
                return f"is malformed (LUT entries up to {int(values.max())}, above its declared {bits} bits per entry)"
        return None
    except Exception:
        return "is empty or malformed"


def _voi_window_ok(ds) -> bool:
    try:
        widths = ds.WindowWidth
        widths = list(widths) if hasattr(widths, "__iter__") and not isinstance(widths, str) else [widths]
        centers = ds.WindowCenter
        centers = list(centers) if hasattr(centers, "__iter__") and not isinstance(centers, str) else [centers]
        return (all(np.isfinite(float(w)) and float(w) >= 1 for w in widths)
                and all(np.isfinite(float(c)) for c in centers))
    except Exception:
        return False


#: pydicom's decoder plugins, in the order busi tries them: GDCM (busi[dicom], BSD/Apache)
#: decodes every JPEG family syntax but 12-bit JPEG Extended; pylibjpeg with libjpeg
#: (busi[dicom-gpl], GPL-3) adds that; pyjpegls for JPEG-LS; Pillow (base install: 8-bit JPEG,
#: JPEG 2000) only where nothing else is installed, because its OpenJPEG prints to the
#: terminal on damaged JPEG 2000 data.
PLUGIN_ORDER = ("gdcm", "pylibjpeg", "pyjpegls", "pydicom", "pillow")
DECODER_EXTRA = "pip install 'busi[dicom]'"
GPL_EXTRA = "pip install 'busi[dicom-gpl]'"
#: the compressed syntaxes that busi[dicom] / busi[dicom-gpl] add decoders for (JPEG family, JPEG-LS, JPEG 2000)
EXTRA_SYNTAXES = {f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81, 90, 91)} | {"1.2.840.10008.1.2.5"}
#: transfer syntaxes pydicom 3.0 does not know, named for the error line
UNKNOWN_SYNTAX_NAMES = {"1.2.840.10008.1.2.4.110": "JPEG XL Lossless", "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
                        "1.2.840.10008.1.2.4.112": "JPEG XL"}
#: the DICOM identifiers a result carries
IDENTITY = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class DicomImage:
    """One parsed DICOM file: its frames decoded one at a time (a cine loop is not held in
    memory at full size), its identity (study, series, instance UIDs). Every problem is one
    InputError naming the file (and the tag, where one is at fault)."""

    def __init__(self, path, data: bytes | None = None, *, max_pixels: int, dataset=None):
        """From the file's bytes, or from the `dataset` `read_dataset` parsed from them."""
        self.path = path
        with _as_input_error(path):
            ds = self.ds = dataset if dataset is not None else read_dataset(path, data, max_pixels)
            if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
                raise InputError(path, "DICOM has no pixel data")
            pixels = next(ds[k].value for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds)
            if not pixels:
                raise InputError(path, "pixel data is empty (zero length)")
            _check_transfer_syntax(path, ds)
            self.notes = _drop_unusable_luts(ds) + _drop_empty_rescale(ds)
            self.rows, self.cols = _int(path, ds, "Rows", 0), _int(path, ds, "Columns", 0)
            if self.rows * self.cols == 0:
                raise InputError(path, "DICOM has no image size (Rows/Columns)")
            check_pixel_limit(path, self.cols, self.rows, max_pixels)
            _check_encapsulated(path, ds, self.rows, self.cols, max_pixels)
            self.n_frames = max(1, _int(path, ds, "NumberOfFrames", 1))
            _check_photometric(path, ds)
            _check_declared_size(path, ds, self.rows, self.cols, self.n_frames)
            self.identity = {k: str(ds.get(k)) for k in IDENTITY if ds.get(k)}

    def frame(self, index: int = 0) -> tuple[np.ndarray, list[str]]:
        """(RGB uint8 array, notes) of one frame (0-based)."""
        if not 0 <= index < self.n_frames:
            raise InputError(self.path, f"frame {index} requested, the DICOM has {self.n_frames} frame(s) (0-based)")
        with _as_input_error(self.path):
            # always one frame: NumberOfFrames 1 (or 0, or absent) over data for more frames would
            # otherwise decode as a stack of them
            rgb, notes = _to_rgb(self.path, self.ds, _decode(self.path, self.ds, index))
            return rgb, self.notes + notes


def dicom_problem(e: BaseException) -> str:
    """What an exception pydicom (or highdicom) raised on a file says is wrong with it, in
    words: never the exception's class name, which tells a PACS administrator nothing."""
    import re

    text = first_line(e, 200)
    if isinstance(e, RecursionError):
        return "its sequences are nested too deeply to be read"
    m = re.search(r"No tag to read at file position ([0-9a-fA-F]+)", text)
    if m or isinstance(e, EOFError) or "end of file" in text.lower():
        where = f" at byte {int(m.group(1), 16):,}" if m else ""  # pydicom gives the position in hex
        return (f"the data set cannot be parsed{where}: the data ends inside an element (the file is cut short, or "
                "an element's length or encoding is wrong)")
    m = re.search(r"Missing required element: \((\w{4}),(\w{4})\) '([^']+)'", text)
    if m:
        return f"({m.group(1)},{m.group(2)}) {m.group(3).replace(' ', '')} is missing"
    if isinstance(e, MemoryError):
        return "it needs more memory than is available to decode"
    return text or "it cannot be parsed"


@contextmanager
def _as_input_error(path):
    try:
        yield
    except InputError:
        raise
    except MemoryError:
        raise InputError(path, "DICOM needs more memory than is available to decode") from None
    except Exception as e:  # pydicom raises a zoo of types on hostile files
        raise InputError(path, f"corrupt DICOM: {dicom_problem(e)}") from None


def _plugins(ts) -> list[str]:
    """The decoder plugins installed for a compressed transfer syntax, in PLUGIN_ORDER."""
    from pydicom.pixels import get_decoder

    try:
        available = set(get_decoder(ts).available_plugins)
    except Exception:  # a syntax pydicom has no decoder for at all
        return []
    order = [p for p in PLUGIN_ORDER if p in available] + sorted(available - set(PLUGIN_ORDER))
    return order if order == ["pillow"] else [p for p in order if p != "pillow"]


def _decode(path, ds, index: int | None) -> np.ndarray:
    from pydicom.pixels import pixel_array

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or not getattr(ts, "is_compressed", False):
        try:
            return pixel_array(ds, index=index)
        except Exception as e:
            raise InputError(path, f"cannot decode DICOM pixel data: {dicom_problem(e)}") from None
    name = f"compressed transfer syntax '{getattr(ts, 'name', ts)}' ({ts})"
    plugins = _plugins(ts)
    errors = []
    for plugin in plugins:
        try:
            with native_stderr_captured() as said:  # GDCM's OpenJPEG complains on the terminal
                return pixel_array(ds, index=index, decoding_plugin=plugin)
        except Exception as e:
            native = first_line(said[0], 100) if said else ""
            said_ = native or (str(e).strip().splitlines()[-1][:100] if str(e).strip() else type(e).__name__)
            while said_.lower().startswith(f"{plugin}:"):  # the plugin's own message may name it already
                said_ = said_[len(plugin) + 1:].strip()
            errors.append((plugin, said_))
    bits = _int(path, ds, "BitsStored", 8)
    if str(ts) in ("1.2.840.10008.1.2.4.51",) and bits > 8 and "pylibjpeg" not in plugins:
        raise InputError(path, f"{name} with {bits}-bit samples needs the GPL-3 decoder: {GPL_EXTRA}")
    if not plugins and str(ts) not in EXTRA_SYNTAXES:
        raise InputError(path, f"{name} is not supported: no decoder for it is installed or known to busi")
    if not plugins or (plugins == ["pillow"] and errors):
        why = f" ({_said(errors)})" if errors else ""
        raise InputError(path, f"{name} cannot be decoded by this install{why}; {DECODER_EXTRA} adds the decoders")
    raise InputError(path, f"{name}: corrupt or unsupported compressed data ({_said(errors)[:200]})")


def _said(errors: list[tuple[str, str]]) -> str:
    """What the decoders said, each message once with the plugins that said it:
    'gdcm, pyjpegls: Found unexpected tag ...' rather than the same words twice."""
    by_message: dict[str, list[str]] = {}
    for plugin, message in errors:
        by_message.setdefault(message, []).append(plugin)
    return "; ".join(f"{', '.join(plugins)}: {message}" for message, plugins in by_message.items())


def _plain_8bit(path, ds, arr: np.ndarray) -> bool:
    """Stored values 0..255 with an identity modality LUT (no rescale)."""
    slope, intercept = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
    try:
        identity = float(slope) == 1 and float(intercept) == 0 and "ModalityLUTSequence" not in ds
    except (TypeError, ValueError):
        return False
    return (identity and arr.dtype.kind == "u" and _int(path, ds, "BitsStored", 8) <= 8
            and _int(path, ds, "PixelRepresentation", 0) == 0 and (arr.size == 0 or int(arr.max()) <= 255))


def _check_rescale_slope(path, ds) -> None:
    """RescaleSlope 0 maps every stored value to the intercept: a blank image, never classified."""
    if "RescaleSlope" not in ds or "ModalityLUTSequence" in ds:
        return
    try:
        slope = float(ds.RescaleSlope)
    except (TypeError, ValueError):
        raise InputError(path, f"{_tag_name('RescaleSlope')}: invalid value {_raw(ds, 'RescaleSlope')!r}") from None
    if slope == 0:
        raise InputError(path, f"{_tag_name('RescaleSlope')} is 0: every pixel would map to one value; not classified")
    try:
        float(ds.get("RescaleIntercept", 0))
    except (TypeError, ValueError):
        raise InputError(path, f"{_tag_name('RescaleIntercept')}: invalid value {_raw(ds, 'RescaleIntercept')!r}") from None


def _to_rgb(path, ds, arr: np.ndarray) -> tuple[np.ndarray, list[str]]:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    notes: list[str] = []
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip()
    samples = _int(path, ds, "SamplesPerPixel", 1)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(path, "pixel data holds NaN or infinite values; not classified")
    if photometric == "PALETTE COLOR":  # indices into the palette, not grey levels
        arr = to_uint8(apply_color_lut(arr, ds))  # 16-bit palette entries span 0..65535
        samples = 3
    if samples == 1:
        _check_rescale_slope(path, ds)
        x = apply_modality_lut(arr, ds)
        windowed = False
        if "VOILUTSequence" in ds:
            x, windowed = apply_voi_lut(x, ds, index=0), True
        elif "WindowCenter" in ds or "WindowWidth" in ds:
            if _voi_window_ok(ds):
                x, windowed = apply_voi_lut(x, ds, index=0), True
            else:
                notes.append(f"DICOM window (center {_raw(ds, 'WindowCenter')}, width {_raw(ds, 'WindowWidth')}) "
                             "is invalid; ignored, the full pixel range is shown")
        if not windowed and _plain_8bit(path, ds, arr):
            # an 8-bit grey image without window or rescale (ultrasound, as scanners store it) is
            # shown as stored, 0..255: the pixels its PNG export would have; no contrast stretch
            grey = arr.astype(np.uint8)
            return np.repeat((255 - grey if photometric == "MONOCHROME1" else grey)[:, :, None], 3, axis=2), notes
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            raise InputError(path, "pixel values are NaN or infinite after the modality LUT (RescaleSlope/Intercept); not classified")
        lo, hi = float(x.min()), float(x.max())
        grey = np.zeros(x.shape, np.uint8) if hi <= lo else ((x - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8)
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        return np.repeat(grey[:, :, None], 3, axis=2), notes
    # colour: pydicom's pixel_array already converts YBR_FULL(_422) to RGB (as_rgb=True)
    rgb = arr
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(path, f"unsupported DICOM pixel layout {rgb.shape} ({photometric})")
    if rgb.dtype != np.uint8:
        rgb = (rgb.astype(np.float64) / max(1.0, float(rgb.max())) * 255 + 0.5).astype(np.uint8)
    return rgb, notes
