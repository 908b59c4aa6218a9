"""Finetuning a backbone end to end, and the train-from-scratch baseline.

The Keras transfer-learning recipe in two phases: phase 1 trains a new head on
the frozen backbone; phase 2 unfreezes the backbone's top blocks and continues
at a low learning rate. The backbone is called with `training=False` and its
BatchNormalization layers stay frozen, so their statistics never change. The
head sees standardized pooled features, as the classical classifiers do, and
can start from a logistic regression on them.

Everything here is backend-neutral Keras 3 (`keras.ops`, `keras.utils.PyDataset`):
it runs under `KERAS_BACKEND=tensorflow`, `jax` or `torch`. Images are decoded
batch by batch from an `ImageDataset`, never all held in memory.

A run writes into its `output_dir`:
  * `history.csv`: one row per epoch (global epoch numbers; the `phase` and
    `learning_rate` columns tell the phases apart);
  * `checkpoints/`: the weights after every epoch plus `state.json` (phase,
    epoch), so `resume=True` continues an interrupted run where it stopped;
  * `model.keras`: the final model, built from Keras's own layers and
    operations only, so `keras.saving.load_model` loads it without layerprobe;
    `model.layerprobe.json` beside it (class names, backbone family,
    preprocessing, input size, the nested backbone's name) lets `layerprobe
    predict` use it and the file be probed as a backbone: `model = ".../model.keras"`.

Lower blocks can train at lower rates in phase 2 (`block_lr_decay`, the
layer-wise decay of timm and BEiT) through `BlockwiseAdam`, an Adam that scales
the rate per variable in `update_step`, which every backend calls per variable.

One module per job; each public name is imported on first use, so
`from layerprobe.pipeline.finetune import FinetuneConfig` (from `settings`)
imports neither Keras nor TensorFlow:

  * `settings`: `FinetuneConfig` and its checks (no Keras);
  * `optimizer`: `BlockwiseAdam`, the per-block learning rates;
  * `classifier_model`: `build_classifier_model` and starting the head;
  * `freezing`: `unfreeze_top`, per-block rates, BatchNorm momentum;
  * `batches`: `ImageBatches` and the validation split;
  * `checkpoints`: checkpoint state, resuming, saving the model;
  * `epoch_logs`: per-epoch history columns and progress lines;
  * `phases`: the phase loop, `finetune` and `train_from_scratch`;
  * `result`: `FinetuneResult`;
  * `model_scores`: `evaluate_model`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.lazy import lazy_exports

# public name -> module that defines it (relative to this package)
_EXPORTS = {
    "AUGMENTATIONS": "settings",
    "FinetuneConfig": "settings",
    "BlockwiseAdam": "optimizer",
    "build_classifier_model": "classifier_model",
    "set_batchnorm_momentum": "freezing",
    "unfreeze_top": "freezing",
    "ImageBatches": "batches",
    "EpochLogger": "epoch_logs",
    "finetune": "phases",
    "train_from_scratch": "phases",
    "FinetuneResult": "result",
    "evaluate_model": "model_scores",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .batches import ImageBatches  # noqa: F401
    from .classifier_model import build_classifier_model  # noqa: F401
    from .optimizer import BlockwiseAdam  # noqa: F401
    from .epoch_logs import EpochLogger  # noqa: F401
    from .freezing import set_batchnorm_momentum, unfreeze_top  # noqa: F401
    from .model_scores import evaluate_model  # noqa: F401
    from .phases import finetune, train_from_scratch  # noqa: F401
    from .result import FinetuneResult  # noqa: F401
    from .settings import AUGMENTATIONS, FinetuneConfig  # noqa: F401
