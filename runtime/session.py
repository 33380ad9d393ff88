"""ONNX Runtime session with honest device choice: CUDA when it really runs, else CPU."""

from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from .errors import DeviceError, ModelError, UsageError, describe
from .log import captured_output, native_stderr_captured
from .log import get as get_logger
from .verify import verified_sha256

_LOG = get_logger(__name__)

#: ANSI colour codes, and the timestamp/source prefix of ONNX Runtime's own log lines
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ORT_PREFIX = re.compile(r"^\S+ \S+ \[\w:onnxruntime:[^]]*\] ")


def _import_onnxruntime():
    """`import onnxruntime`, with what its native code prints meanwhile kept off the terminal:
    with a HOME that is not writable (a service account) it writes an ANSI-coloured telemetry
    warning ("Failed to persist telemetry device ID") to file descriptor 2 at import. Those
    lines are kept in IMPORT_MESSAGES and go through the busi logger when the first session is
    made (after the CLI has set the verbosity), so -q silences them."""
    with native_stderr_captured() as err:
        import onnxruntime
    text = err[0] if err else ""
    return onnxruntime, [_ORT_PREFIX.sub("", _ANSI.sub("", ln)).strip() for ln in text.splitlines() if ln.strip()]


ort, IMPORT_MESSAGES = _import_onnxruntime()


def _log_import_messages() -> None:
    """ONNX Runtime's import-time lines, once, through the busi logger: the telemetry notice
    (harmless: ORT then uses an in-memory identifier) at debug level, anything else as a warning."""
    while IMPORT_MESSAGES:
        line = IMPORT_MESSAGES.pop(0)
        level = 10 if "telemetry" in line else 30
        _LOG.log(level, f"busi: onnxruntime: {line}")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu", "openvino")


def _mallopt(param: int, value: int) -> bool:
    """glibc's mallopt; False where it is not available (not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(int(param), int(value)))


def _mmap_threshold(nbytes: int) -> bool:
    """glibc's M_MMAP_THRESHOLD: allocations of `nbytes` or more are served by mmap and go
    back to the system when freed. False where it is not available (not glibc)."""
    return _mallopt(-3, nbytes)  # -3 = M_MMAP_THRESHOLD


def few_malloc_arenas(n: int = 2) -> bool:
    """glibc's M_ARENA_MAX: a process with many threads (a server: its event loop, request
    workers, the batcher, ONNX Runtime's pool) otherwise gets up to 8 heaps per core, each
    keeping the memory its threads freed. Call it before the threads start."""
    return _mallopt(-8, n)  # -8 = M_ARENA_MAX


@contextmanager
def low_peak_loading(during: int = 1 << 20, after: int = 32 << 20):
    """Load models with a lower peak RSS: while the block runs, buffers of 1 MB or more are
    mmapped, so what ONNX Runtime frees while it builds a session (the file's bytes, the parsed
    protobuf, pre-packed weight copies) goes back to the system instead of staying in the heap
    for the next allocation to miss. `busi-infer` on the 98 MB model at 224 px peaked at
    389 MB without it, 324 MB with it (make bench measures it). Afterwards the threshold is
    32 MB, the ceiling glibc's own adaptive threshold would reach, so batches of images are
    not mmapped one by one. Process-wide: the CLI uses it; a tool that embeds the Predictor
    may wrap its own loading in it."""
    changed = _mmap_threshold(during)
    try:
        yield
    finally:
        if changed:
            _mmap_threshold(after)


def _first_error_line(text: str) -> str:
    """The gist of ORT's CUDA failure: the missing library, else the first error line."""
    m = re.search(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file", text)
    if m:
        return f"{m.group(1)} not found"
    for line in text.splitlines():
        if "rror" in line or "cannot" in line or "fail" in line.lower():
            return line.strip()[-160:]
    return text.strip().splitlines()[-1][-160:] if text.strip() else ""


#: what to install when the CUDA provider cannot load its libraries (onnxruntime-gpu's own
#: pip extras: NVIDIA's CUDA runtime, cuBLAS, cuFFT, cuRAND and cuDNN wheels, which
#: `onnxruntime.preload_dlls()` loads; the machine then needs only the NVIDIA driver)
CUDA_INSTALL = "pip install 'busi[cuda]'"


def cuda_hint(detail: str) -> str:
    """'; <what to install>' when a CUDA/cuDNN library is missing, else ''."""
    if re.search(r"lib(cu\w*|nv\w*)\.so[\w.]* not found", detail or ""):
        return (f"; {CUDA_INSTALL} brings NVIDIA's CUDA and cuDNN libraries for onnxruntime-gpu "
                "(the NVIDIA driver is then all the machine needs)")
    return ""


def cap_threads(threads: int | None, notice=None) -> int | None:
    """More intra-op threads than cores only adds contention (100000 ran for minutes): cap
    at the core count and say so once."""
    cores = os.cpu_count() or 1
    if threads and threads > cores:
        if notice is not None:
            notice(f"busi: {threads} threads requested; capped at the {cores} cores of this machine")
        return cores
    return threads


def session_options(threads: int | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's worker threads busy-wait between ops by default; on a 2-core workstation that
    # takes the CPU from the threads decoding the next images (a folder ran at 0.91x of bare
    # session.run with spinning, 0.95x without; batch-1 latency changed by about 2 %), and it
    # burns CPU inside the hospital tool that embeds us.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = int(threads)
    return so


def nvidia_driver() -> bool:
    """Whether the NVIDIA driver's CUDA library (libcuda) can be loaded: without it no CUDA
    session can run, and trying one costs hundreds of MB and a second of CPU time."""
    import ctypes
    import ctypes.util

    for name in ("libcuda.so.1", ctypes.util.find_library("cuda"), "nvcuda.dll"):
        if not name:
            continue
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def create_session(
    model: str | bytes, device: str = "auto", threads: int | None = None, notice=None
) -> tuple[ort.InferenceSession, str]:
    """Create a session; returns (session, provider that runs it).

    auto: CUDA when onnxruntime lists it, the NVIDIA driver (libcuda) loads and a session
    really runs on it, else CPU: without a driver silently (a debug line), where a driver is
    there but CUDA cannot run with one short `notice` saying why. cuda: the same, but failing
    with DeviceError. cpu: no probing. openvino: OpenVINO's CPU runtime instead of ONNX Runtime
    (a usage error naming the extra where it is not installed).
    """
    if device not in DEVICES:  # a usage error (exit 2), as the README's table says; DeviceError is CUDA failing
        raise UsageError(f"unknown device {device!r} (choose {', '.join(DEVICES)})")
    _log_import_messages()
    notice = notice or _LOG.warning
    if device == "openvino":  # the same file run by OpenVINO (busi[openvino]); see openvino_session
        from .openvino_session import PROVIDER, OpenVINOSession

        if not isinstance(model, str):
            raise UsageError("--device openvino runs a model file, not model bytes")
        return OpenVINOSession(model, cap_threads(threads, notice)), PROVIDER
    so = session_options(cap_threads(threads, notice))
    if device == "cpu":
        return _load(model, so, [CPU]), CPU
    reason = None
    if device == "auto" and not nvidia_driver():  # no GPU here: not a misconfiguration, and no CUDA probe to pay
        _LOG.debug("busi: running on CPU: no NVIDIA driver (libcuda) on this machine")
        return _load(model, so, [CPU]), CPU
    if CUDA not in ort.get_available_providers():
        reason = "this onnxruntime build has no CUDA provider"
    else:
        with captured_output() as err:
            try:
                if hasattr(ort, "preload_dlls"):
                    ort.preload_dlls()
                sess = ort.InferenceSession(model, so, providers=[CUDA, CPU])
            except Exception as e:  # ORT issue 21424: session creation itself can fail
                sess, exc = None, e
            else:
                exc = None
        if sess is not None and sess.get_providers() and sess.get_providers()[0] == CUDA:
            return sess, CUDA
        if exc is not None and _looks_like_model_error(exc):
            raise ModelError(model if isinstance(model, str) else None, f"cannot load ONNX model ({describe(exc)})")
        detail = _first_error_line(err[0] if err else "") or (describe(exc) if exc else "")
        reason = "CUDA provider is listed but cannot run here" + (f" ({detail})" if detail else "") + cuda_hint(detail)
    if device == "cuda":
        raise DeviceError(f"--device cuda: {reason}")
    notice(f"busi: running on CPU: {reason}")
    return _load(model, so, [CPU]), CPU



def _looks_like_model_error(e: Exception) -> bool:
    s = str(e)
    return "INVALID_PROTOBUF" in s or "NO_SUCHFILE" in s or "INVALID_GRAPH" in s or "Load model" in s


def _load(model, so, providers) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(model, so, providers=providers)
    except Exception as e:
        raise ModelError(model if isinstance(model, str) else None, f"cannot load ONNX model ({describe(e)})") from None


def open_model(path, device: str = "auto", verify: bool = True, threads: int | None = None, notice=None,
               require_sha256: bool = False, server: str | None = None, remote_name: str | None = None,
               token: str | None = None, expect_sha256: str | None = None):
    """A model to run, local or on an inference server: (label, session, provider, sha256).

    Local: `path`'s .sha256 sidecar is checked and an ORT session made (`create_session`).
    Remote (`server`): the model `remote_name` on a v2 server (`remote.RemoteSession`); its
    sha256 is the one the server's model config carries. Either way `expect_sha256` refuses a
    model with another digest."""
    if server:
        from .remote import RemoteSession

        sess = RemoteSession(server, remote_name, token)
        label, sha, provider = sess.label, sess.sha256, sess.get_providers()[0]
        if sha is None and (require_sha256 or expect_sha256):
            raise ModelError(label, "the server's model config carries no busi.sha256: its file cannot be identified")
    else:
        label = str(path)
        sha = verified_sha256(Path(path), verify, require_sha256, notice)
        sess, provider = create_session(str(path), device, threads, notice)
    if expect_sha256 and (sha or "").lower() != expect_sha256.strip().lower():
        raise ModelError(label, f"model sha256 is {sha}, not the {expect_sha256.strip().lower()} expected (--expect-sha256)")
    return label, sess, provider, sha
