"""Keras callbacks shared by the classifier and the segmenter (made once Keras is imported)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from busi.runtime.atomic import atomic_path, atomic_write_text
from busi.runtime.log import get as get_logger

_LOG = get_logger(__name__)


def epoch_log(keras, epochs: int):
    """One log line per epoch: every metric and the epoch's time."""

    from busi.runtime.progress import Bar

    class EpochLog(keras.callbacks.Callback):
        bar = None

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.time()
            if self.bar is None:  # a bar with rate and ETA on a terminal (early stopping may end it sooner)
                self.bar = Bar(epochs, "epochs", unit="epochs")
                self.bar.set(epoch)

        def on_epoch_end(self, epoch, logs=None):
            items = " ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()) if k != "learning_rate")
            _LOG.info("epoch %d/%d %s (%.1fs)", epoch + 1, epochs, items, time.time() - self.t)
            if self.bar is not None:
                self.bar.set(epoch + 1)

        def on_train_end(self, logs=None):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return EpochLog()


def kept_epoch(history: list[dict]) -> int:
    """The 1-based epoch whose weights `best_weights` keeps: the first with the lowest val_loss."""
    losses = [float(h["val_loss"]) for h in history]
    return losses.index(min(losses)) + 1


def best_weights(keras, backup: Path):
    """Keeps the best (lowest val_loss) weights in a file, written atomically, so the best
    epoch survives a killed run; restores them when training ends."""

    class BestWeights(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.path = backup / "best.weights.h5"
            self.meta = backup / "best.json"
            self.best = json.loads(self.meta.read_text())["val_loss"] if self.meta.exists() else float("inf")

        def on_epoch_end(self, epoch, logs=None):
            v = (logs or {}).get("val_loss")
            if v is not None and v < self.best:
                self.best = float(v)
                with atomic_path(self.path, suffix=".weights.h5") as tmp:
                    self.model.save_weights(tmp)
                atomic_write_text(self.meta, json.dumps({"epoch": epoch, "val_loss": self.best}))

        def on_train_end(self, logs=None):
            if self.path.exists():
                self.model.load_weights(self.path)
                _LOG.info("restored best weights (epoch %d, val_loss %.4f)",
                          json.loads(self.meta.read_text())["epoch"] + 1, self.best)

    return BestWeights()
