"""`FinetuneConfig`, the hyperparameters of `finetune` and `train_from_scratch`, and their checks.

Imports neither Keras nor TensorFlow, so a config file's `[finetune]` section
can be checked without loading a deep-learning backend. Every bad value is
reported at once, in one `ConfigError` (a `ValueError`), one line per value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from ...core.checks import is_positive_int, unknown_name_message
from ...core.errors import ConfigError

__all__ = [
    "AUGMENTATIONS",
    "FinetuneConfig",
    "augmentation_problems",
    "unfreeze_blocks_problem",
]

AUGMENTATIONS: Mapping[str, str] = MappingProxyType({
    "flip": "RandomFlip",
    "rotation": "RandomRotation",
    "zoom": "RandomZoom",
    "contrast": "RandomContrast",
})
"""Augmentation keys and the Keras layer each builds (value: its first argument)."""

_FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
_HEAD_INITS = ("auto", "glorot", "logreg")
_DEFAULT_AUGMENTATION = {"flip": "horizontal", "rotation": 0.1, "zoom": 0.1, "contrast": 0.1}
_SOURCE = "FinetuneConfig"  # names the config in a ConfigError's message


def _is_int(value: Any) -> bool:
    """Any integer, numpy's too (not a bool); `is_positive_int` covers the ones that must be >= 1."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _problem(name: str, expected: str, value: Any) -> str:
    return f"`{name}` must be {expected}. Received: {name}={value!r}"


def unfreeze_blocks_problem(blocks: Any) -> str | None:
    """What is wrong with an `unfreeze_blocks` value, or None when it is well formed."""
    if (
        (_is_int(blocks) and blocks >= 0)
        or blocks == "all"
        or (isinstance(blocks, str) and re.fullmatch(r"from:\S+", blocks) is not None)
    ):
        return None
    return _problem(
        "unfreeze_blocks",
        "an integer >= 0 (how many top blocks to unfreeze), 'all', or 'from:LAYER_NAME' "
        "(that layer and every layer above it)",
        blocks,
    )


def augmentation_problems(augmentation: Mapping[str, Any] | None) -> list[str]:
    """One line per bad key or value of an augmentation mapping ([] for a good one or None)."""
    if augmentation is None:
        return []
    if not isinstance(augmentation, Mapping):
        return [_problem("augmentation", f"None or a mapping with keys among {list(AUGMENTATIONS)}",
                         augmentation)]
    problems = []
    for key, value in augmentation.items():
        if key not in AUGMENTATIONS:
            problems.append(unknown_name_message("augmentation", key, AUGMENTATIONS))
        elif key == "flip":
            if value not in _FLIP_MODES:
                problems.append(_problem("augmentation['flip']", f"one of {_FLIP_MODES}", value))
        elif not (_is_real(value) and 0 < value <= 1):
            problems.append(_problem(f"augmentation[{key!r}]",
                                     "a float in (0, 1] (omit the key to switch it off)", value))
    return problems


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyperparameters of `finetune` and `train_from_scratch`.

    Attributes:
        head_epochs: Epochs of phase 1 (head only, backbone frozen); 0 skips it.
        finetune_epochs: Epochs of phase 2 (top blocks unfrozen); 0 skips it.
        unfreeze_blocks: Top blocks unfrozen in phase 2: an integer, `"all"`,
            or `"from:LAYER_NAME"` (see `unfreeze_top`). For a keras-hub vision
            transformer, `n` unfreezes its last n transformer blocks and the final norm.
        learning_rate: Adam learning rate of phase 2 (of its top unfrozen block).
        block_lr_decay: Factor on the rate per block down from the top in
            phase 2: the block below the top one trains at
            `learning_rate * block_lr_decay`, the next at `* block_lr_decay**2`,
            and so on (blocks as in `unfreeze_top`); 1.0 trains all at one rate.
        head_learning_rate: Adam learning rate of phase 1 (and of training from scratch).
        batch_size: Images per gradient step.
        hidden_units: Sizes of dense ReLU layers between pooling and the softmax.
        head_init: How `finetune` starts the softmax: `"logreg"`, from a
            logistic regression on the training images' standardized pooled
            top-layer features, its C in 1e-3..1 picked by cross-validation as
            for the classifier rows (linear probing, then finetuning: LP-FT;
            needs `hidden_units=()`); `"glorot"` (random); or `"auto"` (default):
            `"logreg"` without hidden units, else `"glorot"`. In the calibration
            benchmark starting from the logistic regression beat a random head
            most at the smallest training sets (benchmarks/RESULTS.md, transfer matrix).
        dropout: Dropout rate before each dense layer of the head.
        l2: L2 penalty on the output layer's kernel.
        augmentation: Training-time augmentation, keys among `AUGMENTATIONS`
            (`{"flip": "horizontal", "rotation": 0.1, ...}`), or None.
        early_stopping_patience: Epochs without a better validation loss before
            a phase stops (best weights are restored); None trains every epoch.
        val_fraction: Fraction of the training data held out (stratified) for
            validation; 0 monitors the training loss instead.
        seed: Seed of initialisation, validation split, shuffling, augmentation.
        mixed_precision: Compute in `mixed_float16` (for GPUs); softmax stays float32.
        workers: Threads decoding batches.
        scratch_batchnorm_momentum: BatchNormalization momentum when training
            from scratch. The applications' 0.99-0.999 leave the moving averages
            near their initial values after a short training, so the network
            scores at chance in inference mode; None keeps the model's.

    Raises:
        ConfigError: (a `ValueError`) If values are out of range; one line per
            value, naming it, what it must be and what was received.
    """

    head_epochs: int = 5
    finetune_epochs: int = 5
    unfreeze_blocks: int | str = 1
    learning_rate: float = 1e-5
    block_lr_decay: float = 1.0
    head_learning_rate: float = 1e-3
    batch_size: int = 32
    hidden_units: tuple[int, ...] = ()
    head_init: str = "auto"
    dropout: float = 0.2
    l2: float = 0.0
    augmentation: Mapping[str, Any] | None = field(
        default_factory=lambda: dict(_DEFAULT_AUGMENTATION)
    )
    early_stopping_patience: int | None = 3
    val_fraction: float = 0.1
    seed: int = 0
    mixed_precision: bool = False
    workers: int = 1
    scratch_batchnorm_momentum: float | None = 0.9

    def __post_init__(self):
        problems: list[str] = []

        def require(ok: bool, name: str, expected: str, value: Any) -> bool:
            if not ok:
                problems.append(_problem(name, expected, value))
            return ok

        epochs_ok = [
            require(_is_int(getattr(self, name)) and getattr(self, name) >= 0, name,
                    "an integer >= 0", getattr(self, name))
            for name in ("head_epochs", "finetune_epochs")
        ]
        if all(epochs_ok):
            require(self.head_epochs + self.finetune_epochs >= 1, "head_epochs + finetune_epochs",
                    "at least 1 so that something trains", self.head_epochs + self.finetune_epochs)
        problems.extend(filter(None, [unfreeze_blocks_problem(self.unfreeze_blocks)]))
        for name in ("learning_rate", "head_learning_rate"):
            value = getattr(self, name)
            require(_is_real(value) and value > 0, name, "a float > 0, e.g. 1e-5", value)
        require(_is_real(self.block_lr_decay) and 0 < self.block_lr_decay <= 1, "block_lr_decay",
                "a float in (0, 1], e.g. 0.5 (1 trains every block at learning_rate)",
                self.block_lr_decay)
        for name in ("batch_size", "workers"):
            require(is_positive_int(getattr(self, name)), name, "an integer >= 1", getattr(self, name))
        hidden = self.hidden_units
        hidden_ok = require(
            isinstance(hidden, Sequence) and not isinstance(hidden, str)
            and all(is_positive_int(units) for units in hidden),
            "hidden_units", "a sequence of positive integers, e.g. (256,) or ()", hidden,
        )
        if hidden_ok:
            object.__setattr__(self, "hidden_units", tuple(int(units) for units in hidden))
        if require(self.head_init in _HEAD_INITS, "head_init", f"one of {_HEAD_INITS}",
                   self.head_init) and hidden_ok:
            require(self.head_init != "logreg" or not self.hidden_units, "hidden_units",
                    "() with head_init='logreg' (a logistic regression sets the softmax alone)",
                    self.hidden_units)
        require(_is_real(self.dropout) and 0 <= self.dropout < 1, "dropout",
                "a float in [0, 1)", self.dropout)
        require(_is_real(self.l2) and self.l2 >= 0, "l2", "a float >= 0", self.l2)
        augmentation = augmentation_problems(self.augmentation)
        problems.extend(augmentation)
        if not augmentation:
            object.__setattr__(self, "augmentation", dict(self.augmentation or {}) or None)
        patience = self.early_stopping_patience
        require(patience is None or (_is_int(patience) and patience >= 0),
                "early_stopping_patience", "an integer >= 0, or None", patience)
        require(_is_real(self.val_fraction) and 0 <= self.val_fraction < 1, "val_fraction",
                "a float in [0, 1)", self.val_fraction)
        require(_is_int(self.seed), "seed", "an integer", self.seed)
        require(isinstance(self.mixed_precision, bool), "mixed_precision", "True or False",
                self.mixed_precision)
        momentum = self.scratch_batchnorm_momentum
        require(momentum is None or (_is_real(momentum) and 0 <= momentum < 1),
                "scratch_batchnorm_momentum", "a float in [0, 1), or None", momentum)
        if problems:
            raise ConfigError(problems, _SOURCE)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneConfig:
        """Builds a config from a mapping (e.g. a parsed config file section).

        Raises:
            ConfigError: (a `ValueError`) Listing every unknown key (with the
                closest valid one) and every bad value.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        problems = [
            unknown_name_message("finetune option", key, names) for key in values if key not in names
        ]
        try:
            config = cls(**{key: value for key, value in values.items() if key in names})
        except ConfigError as error:
            problems.extend(error.problems)
        if problems:
            raise ConfigError(problems, _SOURCE) from None
        return config

    @property
    def resolved_head_init(self) -> str:
        """`head_init` with `"auto"` resolved: `"logreg"` without hidden units, else `"glorot"`."""
        if self.head_init == "auto":
            return "glorot" if self.hidden_units else "logreg"
        return self.head_init

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, the inverse of `from_dict`."""
        return json.loads(json.dumps(dataclasses.asdict(self)))
