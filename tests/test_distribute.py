"""Training on more devices: MirroredStrategy on one CPU split into two logical devices (the
split must happen before TensorFlow starts, so each check runs in its own process)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

import pytest
from helpers import cli

#: a mirrored fit all-reduces the gradients of the two half batches; with float32 sums in
#: another order the weights may differ from the one-device fit by rounding only
TOLERANCE = 1e-5


def run_py(code: str) -> dict:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_mirrored_fit_is_the_one_device_fit():
    """A small model without batch normalisation (replicas keep their own batch statistics by
    design), SGD, no shuffling: two replicas and one device reach the same weights."""
    out = run_py("""
        import json
        import numpy as np
        from busi.train.backend import keras, tf
        from busi.train.distribute import make_strategy

        mirrored = make_strategy("mirrored", cpu_replicas=2)
        single = make_strategy("default")
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 12, 12, 3)).astype("float32")
        y = np.eye(3, dtype="float32")[rng.integers(0, 3, 64)]

        def run(strategy):
            keras.utils.set_random_seed(1)
            with strategy.scope():
                m = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
                                      keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")])
                m.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
            ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
            h = m.fit(ds, epochs=4, verbose=0, shuffle=False)
            return m.get_weights(), h.history["loss"]

        (wm, lm), (ws, ls) = run(mirrored), run(single)
        print(json.dumps({"replicas": mirrored.num_replicas_in_sync,
                          "max_diff": max(float(np.abs(a - b).max()) for a, b in zip(wm, ws)),
                          "moved": max(float(np.abs(a).max()) for a in wm),
                          "loss_m": lm, "loss_s": ls}))
    """)
    assert out["replicas"] == 2
    assert out["max_diff"] <= TOLERANCE, out
    assert out["loss_m"] == pytest.approx(out["loss_s"], abs=1e-5)
    assert out["loss_m"][-1] < out["loss_m"][0]  # it did learn something


@pytest.mark.parametrize("name, inner", [("mixed", "float16"), ("bf16", "bfloat16")])
def test_mixed_precision_keeps_the_softmax_in_float32_and_saves_float32(name, inner):
    out = run_py("""
        import json
        import numpy as np
        from busi.train.distribute import plain_copy, precision
        from busi.train.model import build_classifier

        with precision("NAME"):
            m = build_classifier(32, "none")
            conv = next(l for l in m.layers if l.__class__.__name__ == "Conv2D")
            inner = conv.dtype_policy.compute_dtype
            head = m.get_layer("probabilities").dtype_policy.compute_dtype
            y = m({"image": np.zeros((1, 32, 32, 3), "float32"), "mask": np.ones((1, 32, 32, 1), "float32")})
        plain = plain_copy(m, lambda: build_classifier(32, "none"))
        same = all(np.array_equal(a, b) for a, b in zip(m.get_weights(), plain.get_weights()))
        kinds = sorted({l.dtype_policy.compute_dtype for l in plain.layers if hasattr(l, "dtype_policy")})
        print(json.dumps({"inner": inner, "head": head, "out": str(y.dtype.name), "same": same, "plain": kinds}))
    """.replace("NAME", name))
    assert out == {"inner": inner, "head": "float32", "out": "float32", "same": True, "plain": ["float32"]}


@pytest.mark.slow
def test_the_masked_resnet50_trains_mirrored(phantoms, tmp_path):
    """busi-train fit --strategy mirrored on two CPU replicas: the real model and pipeline,
    validation on one device, and a model folder like any other."""
    out = tmp_path / "m"
    r = cli("busi-train", "fit", "--data", phantoms, "--out", out, "--weights", "none", "--image-size", 32,
            "--epochs", 1, "--batch-size", 8, "--near-ood", "none", "--strategy", "mirrored", "--cpu-replicas", 2)
    assert "MirroredStrategy over 2 devices" in r.stderr
    hist = list(csv.DictReader((out / "history.csv").open()))
    assert len(hist) == 1 and float(hist[0]["val_loss"]) > 0 and "val_accuracy" in hist[0]
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["strategy"] == "mirrored" and card["training"]["cpu_replicas"] == 2
    # the segmenter, likewise (in a folder of its own: no re-evaluation of a classifier with auto)
    r = cli("busi-train", "segmenter", "--data", phantoms, "--out", tmp_path / "s", "--image-size", 32, "--epochs", 1,
            "--batch-size", 8, "--strategy", "mirrored", "--cpu-replicas", 2)
    seg = json.loads((tmp_path / "s" / "segmenter.json").read_text())
    assert seg["training"]["strategy"] == "mirrored" and seg["training"]["epochs_run"] == 1


def test_the_global_batch_must_divide_among_the_replicas():
    from busi.runtime.errors import UsageError
    from busi.train.distribute import check_global_batch

    check_global_batch(8, 2, 34)
    check_global_batch(7, 1, 34)  # one device: any batch
    with pytest.raises(UsageError, match="--batch-size 7 is the global batch: it must divide among the 2 replicas"):
        check_global_batch(7, 2, 34)
    with pytest.raises(UsageError, match="only 6 images"):
        check_global_batch(8, 2, 6)
