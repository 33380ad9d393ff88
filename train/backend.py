"""Import TensorFlow/Keras once, quietly.

TensorFlow 2.21 writes its start-up chatter (oneDNN notes, "could not find cuda drivers",
cuInit failures on machines without a GPU) through absl before TF_CPP_MIN_LOG_LEVEL is read,
so the import and the first device query run with the process's stderr captured; lines
that are not that chatter are passed on.
"""

import os
import re
from contextlib import contextmanager

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from busi.runtime.log import get as get_logger  # noqa: E402
from busi.runtime.session import captured_output  # noqa: E402

_LOG = get_logger(__name__)

_CHATTER = re.compile(r"^(WARNING: All log messages before absl|[IW]\d{4} |E\d{4} .*(cuInit|cuda|CUDA))")


@contextmanager
def quiet():
    """Run a block with TensorFlow's native chatter (absl I/W lines) kept off the terminal;
    anything else it wrote is passed on to stderr."""
    out: list[str] = []
    try:
        with captured_output() as out:
            yield
    finally:
        for line in (out[0] if out else "").splitlines():
            if line.strip() and not _CHATTER.match(line):
                _LOG.warning(line)


with quiet():
    import tensorflow as tf  # noqa: E402

    tf.config.list_physical_devices()
import keras  # noqa: E402

tf.get_logger().setLevel("ERROR")


def seed_everything(seed: int) -> None:
    """Python, numpy and TensorFlow seeds, and deterministic TensorFlow ops (tf.data's
    parallel maps included), so that the same data, seed and machine give the same model."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


__all__ = ["tf", "keras", "quiet", "seed_everything"]
