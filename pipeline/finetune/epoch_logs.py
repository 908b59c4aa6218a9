"""What each epoch reports: the phase and learning rate in the history, a progress line for a log."""

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
    """Calls `log` with one line per epoch (phase, loss, accuracy, seconds): progress for a run log."""

    def __init__(self, log: Callable[[str], None]):
        super().__init__()
        self.log = log

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = ", ".join(f"{name} {logs[name]:.3f}" for name in
                            ("loss", "accuracy", "val_loss", "val_accuracy") if name in logs)
        seconds = time.perf_counter() - self.started
        self.log(f"epoch {epoch + 1} ({logs.get('phase', 'fit')}): {metrics} ({seconds:.0f} s)")
