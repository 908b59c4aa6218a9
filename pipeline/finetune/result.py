"""`FinetuneResult`: what `finetune` or `train_from_scratch` produced, and its results-table columns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .settings import FinetuneConfig

__all__ = ["FinetuneResult"]


@dataclass(frozen=True, eq=False)
class FinetuneResult:
    """What `finetune` or `train_from_scratch` produced.

    Attributes:
        mode: `"finetune"` or `"scratch"`.
        backbone: Architecture, e.g. `"MobileNetV2(alpha=0.35)"`.
        weights: Initial backbone weights (`"imagenet"`, a path, or None).
        model: The trained `keras.Model` (best weights of the last phase).
        config: The hyperparameters.
        unfrozen_layers: Backbone layers trained in the last phase.
        epochs_run: Epochs trained over all phases (and resumed calls).
        fit_seconds: Wall time of the training; a resumed run adds the time its
            earlier calls spent up to their last checkpoint.
        model_path: The saved `.keras` model.
        history_path: The per-epoch CSV history.
        skipped: Sample id -> reason, for training or validation images that
            could not be decoded (left out of their batches).
    """

    mode: str
    backbone: str
    weights: str | None
    model: Any = field(repr=False)
    config: FinetuneConfig
    unfrozen_layers: tuple[str, ...]
    epochs_run: int
    fit_seconds: float
    model_path: Path
    history_path: Path
    skipped: Mapping[str, str]

    @property
    def learning_rate(self) -> float:
        """Learning rate of the phase that trains the backbone."""
        config = self.config
        return config.head_learning_rate if self.mode == "scratch" else config.learning_rate

    def as_row(self) -> dict[str, Any]:
        """The run's columns of a results table."""
        return {
            "mode": self.mode,
            "backbone": self.backbone,
            "weights": self.weights,
            "unfreeze_blocks": "all" if self.mode == "scratch" else self.config.unfreeze_blocks,
            "learning_rate": self.learning_rate,
            "block_lr_decay": 1.0 if self.mode == "scratch" else self.config.block_lr_decay,
            "head_init": "glorot" if self.mode == "scratch" else self.config.resolved_head_init,
            "epochs": self.epochs_run,
            "fit_seconds": self.fit_seconds,
            "model_path": str(self.model_path),
            "history_path": str(self.history_path),
        }
