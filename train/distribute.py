"""Training on more than one device of one host: `--strategy mirrored` and `--precision mixed`.

`tf.distribute.MirroredStrategy` keeps one copy of the model per GPU and all-reduces the
gradients each step. `--batch-size` stays the *global* batch: with 4 GPUs and 32, each GPU
gets 8 images per step and the step is the same as on one device, so the learning rate needs
no change. To keep 32 images per GPU, give `--batch-size 128` and consider scaling `--lr`
with it (linear scaling; the seed's 1e-4 was chosen for 32).

Multi-host training (MultiWorkerMirroredStrategy) is not offered: with Keras 3 its `fit`
fails (keras issue 20585). Batch normalisation statistics are per replica by design.

`--precision mixed`: Keras' mixed_float16 policy (float16 compute, float32 variables, loss
scaling), for GPUs with tensor cores; the softmax stays float32 (model.py). CPUs get no speed
from it.

`--precision bf16`: Keras' mixed_bfloat16 policy (bfloat16 compute, float32 variables, no loss
scaling: bfloat16 has float32's exponent range). On CPUs with AVX512-BF16 or AMX, oneDNN runs the
frozen backbone's convolutions in bfloat16 (`make bench`, row "training step", measures it
against float32). CPUs without those instructions emulate it and get slower; busi says so.

Either way the model that is saved, evaluated and exported is a plain float32 copy built
outside the strategy, with the trained weights: the runtime's contract does not change.

`cpu_replicas` (tests, and machines without GPUs) splits the CPU into that many logical
devices so that the mirrored path runs for real; it must be set before TensorFlow runs anything.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from busi.runtime.errors import UsageError
from busi.runtime.log import get as get_logger

_LOG = get_logger(__name__)

STRATEGIES = ("default", "mirrored")
PRECISIONS = ("float32", "mixed", "bf16")
POLICIES = {"mixed": "mixed_float16", "bf16": "mixed_bfloat16"}


def split_cpu(n: int) -> None:
    """Make CPU:0 appear as `n` logical devices (before TensorFlow initialises its devices)."""
    from .backend import tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * int(n))
    except RuntimeError as e:  # already initialised: only a problem when it differs
        have = len(tf.config.list_logical_devices("CPU"))
        if have != n:
            raise UsageError(f"--cpu-replicas {n}: TensorFlow already runs with {have} CPU device(s) ({e})") from None


def make_strategy(name: str = "default", cpu_replicas: int = 0):
    """The tf.distribute strategy for `--strategy`."""
    from .backend import tf

    if name not in STRATEGIES:
        raise UsageError(f"--strategy {name!r}: choose {', '.join(STRATEGIES)}")
    if name == "default":
        if cpu_replicas:
            raise UsageError("--cpu-replicas needs --strategy mirrored")
        return tf.distribute.get_strategy()
    if cpu_replicas:
        split_cpu(cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
    else:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or None  # None: TF's choice (CPU:0)
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    n = strategy.num_replicas_in_sync
    if n == 1:
        _LOG.warning("busi: --strategy mirrored with one device (no GPU found): it trains as without it")
    else:
        _LOG.info(f"MirroredStrategy over {n} devices: {', '.join(devices or [])}")
    return strategy


@contextmanager
def precision(name: str = "float32"):
    """The Keras dtype policy while the model is built and trained."""
    from .backend import keras, tf

    if name not in PRECISIONS:
        raise UsageError(f"--precision {name!r}: choose {', '.join(PRECISIONS)}")
    if name == "float32":
        yield
        return
    gpu = bool(tf.config.list_physical_devices("GPU"))
    if name == "mixed" and not gpu:
        _LOG.warning("busi: --precision mixed on CPU: float16 brings no speed here (it is meant for GPUs; bf16 is for CPUs)")
    if name == "bf16" and not gpu and not cpu_has_bf16():
        _LOG.warning("busi: --precision bf16: this CPU has neither AVX512-BF16 nor AMX; bfloat16 is emulated and slower")
    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(POLICIES[name])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(old)


def cpu_has_bf16() -> bool:
    """Whether the CPU has bfloat16 arithmetic (x86 AVX512-BF16 or AMX-BF16; Arm BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))


def check_global_batch(batch: int, replicas: int, n_train: int) -> None:
    """--batch-size is the global batch: it must split evenly over the replicas (Keras 3 with
    MirroredStrategy fails on a batch that does not), and there must be one full batch."""
    if replicas > 1 and batch % replicas:
        raise UsageError(f"--batch-size {batch} is the global batch: it must divide among the {replicas} replicas")
    if replicas > 1 and n_train < batch:
        raise UsageError(f"--batch-size {batch}: the training split has only {n_train} images")


def one_device_validation(keras, twin, x, y, batch: int):
    """Validation of a mirrored model on one device, as a single-device fit computes it.

    Keras 3 with MirroredStrategy fails on a validation batch that does not split evenly
    over the replicas, and validation sets rarely do. Padding or dropping images would change
    the loss that early stopping and the best weights go by; instead, at the end of each
    epoch, `twin` (the same model built and compiled outside the strategy) gets the trained
    weights and is evaluated on the whole validation set with the single-device batch size.
    Put it first among the callbacks: the ones after it read its val_* logs."""

    class OneDeviceValidation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            twin.set_weights(self.model.get_weights())
            res = twin.evaluate(x, y, batch_size=batch, verbose=0, return_dict=True)
            if logs is not None:
                logs.update({f"val_{k}": float(v) for k, v in res.items()})

    return OneDeviceValidation()


def plain_copy(model, build):
    """A float32 model built by `build()` (call it outside the strategy's scope and the mixed
    policy), with `model`'s trained weights."""
    twin = build()
    twin.set_weights(model.get_weights())
    return twin
