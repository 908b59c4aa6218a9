"""What each epoch reports: the phase and learning rate in the history, progress for a run log."""

from __future__ import annotations

import time
from collections.abc import Callable

import keras

__all__ = ["EpochLogger", "PhaseLogs"]


class PhaseLogs(keras.callbacks.Callback):
    """Adds the phase and the optimizer's learning rate to every epoch's logs (so to `history.csv`)."""

    def __init__(self, phase: str):
        super().__init__()
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        logs["phase"] = self.phase
        learning_rate = self.model.optimizer.learning_rate
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(learning_rate))


class EpochLogger(keras.callbacks.Callback):
    """Progress of a `fit`: a tqdm bar over each epoch's batches, then one line per epoch for `log`.

    The line holds the phase, loss, accuracy and validation scores found in the
    epoch's logs, and the epoch's seconds. With `progress=False` only the lines.

    Args:
        log: Receives one line per epoch.
        progress: Show the bar within each epoch (on stderr; cleared when the epoch ends).
    """

    def __init__(self, log: Callable[[str], None], *, progress: bool = False):
        super().__init__()
        self.log = log
        self.progress = progress
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm.auto import tqdm

        self.started = time.perf_counter()
        self.bar = tqdm(total=self.params.get("steps"), disable=not self.progress, leave=False, unit="batch",
                        desc=f"epoch {epoch + 1}/{self.params.get('epochs')}", dynamic_ncols=True)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}", refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()
        metrics = ", ".join(f"{name} {logs[name]:.3f}" for name in
                            ("loss", "accuracy", "val_loss", "val_accuracy") if name in logs)
        seconds = time.perf_counter() - self.started
        self.log(f"epoch {epoch + 1} ({logs.get('phase', 'fit')}): {metrics} ({seconds:.0f} s)")

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()
