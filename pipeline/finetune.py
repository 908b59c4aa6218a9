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
  * `model.keras`: the final model, loadable with `keras.saving.load_model`.

Lower blocks can train at lower rates in phase 2 (`block_lr_decay`, the
layer-wise decay of timm and BEiT) through `BlockwiseAdam`, an Adam that scales
the rate per variable in `update_step`, which every backend calls per variable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import keras
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from layerprobe.features.backbones import BackboneSpec
from layerprobe.features.backend import optimizer_variable_index
from layerprobe.features.extract import dtype_policy
from layerprobe.features.inputs import ImageDataset, UnreadableImageError, iter_decoded_chunks
from layerprobe.features.layers import describe_layers, resolve_layers
from layerprobe.features.seeding import keras_seed
from layerprobe.features.weights import Backbone, load_backbone
from layerprobe.pipeline.classifiers import fit_classifier, unknown_name_error
from layerprobe.pipeline.evaluate import evaluate
from layerprobe.pipeline.persistence import write_atomically

__all__ = [
    "AUGMENTATIONS",
    "BackbonePreprocessing",
    "BlockwiseAdam",
    "EpochLogger",
    "FeatureStandardization",
    "FinetuneConfig",
    "FinetuneResult",
    "ImageBatches",
    "build_classifier_model",
    "evaluate_model",
    "finetune",
    "set_batchnorm_momentum",
    "train_from_scratch",
    "unfreeze_top",
]

AUGMENTATIONS: Mapping[str, str] = MappingProxyType({
    "flip": "RandomFlip",
    "rotation": "RandomRotation",
    "zoom": "RandomZoom",
    "contrast": "RandomContrast",
})
"""Augmentation keys and the Keras layer each builds (value: its first argument)."""

_FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
_HEAD_INITS = ("glorot", "logreg")
_HEAD_INIT_CS = (1e-3, 1e-2, 1e-1, 1.0)  # C of head_init="logreg", picked by cross-validation
_DEFAULT_AUGMENTATION = {"flip": "horizontal", "rotation": 0.1, "zoom": 0.1, "contrast": 0.1}
# May differ when resuming: they change how long a run trains, not what it trains.
_RESUMABLE_FIELDS = ("head_epochs", "finetune_epochs", "early_stopping_patience", "workers")
_STATE_FILE = "state.json"
_STATE_VERSION = 2  # 2: the head standardizes its input


# --------------------------------------------------------------------------- configuration


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _require(ok: bool, name: str, expected: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")


def _check_blocks(blocks: Any) -> None:
    _require(
        (_is_int(blocks) and blocks >= 0)
        or blocks == "all"
        or (isinstance(blocks, str) and re.fullmatch(r"from:\S+", blocks) is not None),
        "unfreeze_blocks",
        "an integer >= 0 (how many top blocks to unfreeze), 'all', or 'from:LAYER_NAME' "
        "(that layer and every layer above it)",
        blocks,
    )


def _check_augmentation(augmentation: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validates an augmentation mapping; returns it as a plain dict ({} for None)."""
    if augmentation is None:
        return {}
    _require(isinstance(augmentation, Mapping), "augmentation",
             f"None or a mapping with keys among {list(AUGMENTATIONS)}", augmentation)
    for key, value in augmentation.items():
        if key not in AUGMENTATIONS:
            raise unknown_name_error("augmentation", key, AUGMENTATIONS)
        if key == "flip":
            _require(value in _FLIP_MODES, "augmentation['flip']", f"one of {_FLIP_MODES}", value)
        else:
            _require(_is_real(value) and 0 < value <= 1, f"augmentation[{key!r}]",
                     "a float in (0, 1] (omit the key to switch it off)", value)
    return dict(augmentation)


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyperparameters of `finetune` and `train_from_scratch`.

    Attributes:
        head_epochs: Epochs of phase 1 (head only, backbone frozen); 0 skips it.
        finetune_epochs: Epochs of phase 2 (top blocks unfrozen); 0 skips it.
        unfreeze_blocks: Top blocks unfrozen in phase 2: an integer, `"all"`,
            or `"from:LAYER_NAME"` (see `unfreeze_top`).
        learning_rate: Adam learning rate of phase 2 (of its top unfrozen block).
        block_lr_decay: Factor on the rate per block down from the top in
            phase 2: the block below the top one trains at
            `learning_rate * block_lr_decay`, the next at `* block_lr_decay**2`,
            and so on (blocks as in `unfreeze_top`); 1.0 trains all at one rate.
        head_learning_rate: Adam learning rate of phase 1 (and of training from scratch).
        batch_size: Images per gradient step.
        hidden_units: Sizes of dense ReLU layers between pooling and the softmax.
        head_init: How `finetune` starts the softmax: `"glorot"` (random) or
            `"logreg"`, from a logistic regression on the training images'
            standardized pooled top-layer features, its C in 1e-3..1 picked by
            cross-validation as for the classifier rows (needs `hidden_units=()`).
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
        ValueError: If a value is out of range; the message names it.
    """

    head_epochs: int = 5
    finetune_epochs: int = 5
    unfreeze_blocks: int | str = 1
    learning_rate: float = 1e-5
    block_lr_decay: float = 1.0
    head_learning_rate: float = 1e-3
    batch_size: int = 32
    hidden_units: tuple[int, ...] = ()
    head_init: str = "glorot"
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
        for name in ("head_epochs", "finetune_epochs"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 0, name, "an integer >= 0", value)
        _require(self.head_epochs + self.finetune_epochs >= 1, "head_epochs + finetune_epochs",
                 "at least 1 so that something trains", self.head_epochs + self.finetune_epochs)
        _check_blocks(self.unfreeze_blocks)
        for name in ("learning_rate", "head_learning_rate"):
            value = getattr(self, name)
            _require(_is_real(value) and value > 0, name, "a float > 0, e.g. 1e-5", value)
        _require(_is_real(self.block_lr_decay) and 0 < self.block_lr_decay <= 1, "block_lr_decay",
                 "a float in (0, 1], e.g. 0.5 (1 trains every block at learning_rate)",
                 self.block_lr_decay)
        for name in ("batch_size", "workers"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 1, name, "an integer >= 1", value)
        hidden = self.hidden_units
        _require(
            isinstance(hidden, Sequence) and not isinstance(hidden, str)
            and all(_is_int(units) and units >= 1 for units in hidden),
            "hidden_units", "a sequence of positive integers, e.g. (256,) or ()", hidden,
        )
        object.__setattr__(self, "hidden_units", tuple(int(units) for units in hidden))
        _require(self.head_init in _HEAD_INITS, "head_init", f"one of {_HEAD_INITS}", self.head_init)
        _require(self.head_init == "glorot" or not self.hidden_units, "hidden_units",
                 "() with head_init='logreg' (a logistic regression sets the softmax alone)",
                 self.hidden_units)
        _require(_is_real(self.dropout) and 0 <= self.dropout < 1, "dropout",
                 "a float in [0, 1)", self.dropout)
        _require(_is_real(self.l2) and self.l2 >= 0, "l2", "a float >= 0", self.l2)
        object.__setattr__(self, "augmentation", _check_augmentation(self.augmentation) or None)
        patience = self.early_stopping_patience
        _require(patience is None or (_is_int(patience) and patience >= 0),
                 "early_stopping_patience", "an integer >= 0, or None", patience)
        _require(_is_real(self.val_fraction) and 0 <= self.val_fraction < 1, "val_fraction",
                 "a float in [0, 1)", self.val_fraction)
        _require(_is_int(self.seed), "seed", "an integer", self.seed)
        _require(isinstance(self.mixed_precision, bool), "mixed_precision", "True or False",
                 self.mixed_precision)
        momentum = self.scratch_batchnorm_momentum
        _require(momentum is None or (_is_real(momentum) and 0 <= momentum < 1),
                 "scratch_batchnorm_momentum", "a float in [0, 1), or None", momentum)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneConfig:
        """Builds a config from a mapping (e.g. a parsed config file section).

        Raises:
            ValueError: For an unknown key (naming the closest valid one) or a bad value.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                raise unknown_name_error("finetune option", key, names)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, the inverse of `from_dict`."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# --------------------------------------------------------------------------- model


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> None:
    """Sets the moving-average momentum of every BatchNormalization layer (weights unchanged)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


@keras.saving.register_keras_serializable(package="layerprobe")
class BackbonePreprocessing(keras.layers.Layer):
    """Applies a family's `preprocess_input` inside the model, on 0-255 pixels.

    Uses the tensor branch of the Keras function, written with `keras.ops`, so
    it runs on every backend. Computes in float32 under mixed precision.

    Args:
        preprocess_module: Module holding `preprocess_input`, e.g.
            `"keras.applications.vgg16"` (a `BackboneSpec.preprocess_module`);
            None passes pixels through (models that rescale inside).
    """

    def __init__(self, preprocess_module: str | None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.preprocess_module = preprocess_module

    def call(self, inputs):
        if self.preprocess_module is None:
            return inputs
        preprocess_input = importlib.import_module(self.preprocess_module).preprocess_input
        # A fresh tensor: the Keras function divides in place, which on torch would
        # write into the caller's batch.
        return preprocess_input(keras.ops.add(inputs, 0.0), data_format="channels_last")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "preprocess_module": self.preprocess_module}


@keras.saving.register_keras_serializable(package="layerprobe")
class FeatureStandardization(keras.layers.Layer):
    """`(x - mean) / scale` per feature, with fixed (non-trainable) statistics.

    Feeds the head standardized pooled features, as the classical classifiers
    get them: raw pooled features can be large (norms in the hundreds), which
    saturates a freshly initialised softmax. The identity until `set_weights`
    gives it statistics; they are saved and restored with the model.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def build(self, input_shape):
        n_features = (input_shape[-1],)
        self.mean = self.add_weight(shape=n_features, initializer="zeros", trainable=False,
                                    name="mean")
        self.scale = self.add_weight(shape=n_features, initializer="ones", trainable=False,
                                     name="scale")

    def call(self, inputs):
        return keras.ops.divide(keras.ops.subtract(inputs, self.mean), self.scale)

    def compute_output_shape(self, input_shape):
        return input_shape


def _augmentation_layers(augmentation: Mapping[str, Any] | None) -> list:
    return [
        getattr(keras.layers, AUGMENTATIONS[key])(value, name=f"augment_{key}", dtype="float32")
        for key, value in _check_augmentation(augmentation).items()
    ]


def _head_weights(init_head_from, n_features: int, n_classes: int) -> list[np.ndarray]:
    """(coef, intercept) of a scikit-learn logistic regression -> [kernel, bias] of the softmax.

    A binary regression has one row, the logit of class 1; the softmax gets a zero
    logit for class 0, which gives the same probabilities.
    """
    coef, intercept = (np.asarray(part, dtype="float32") for part in init_head_from)
    rows = 1 if n_classes == 2 else n_classes
    if coef.shape != (rows, n_features) or intercept.shape != (rows,):
        raise ValueError(
            f"init_head_from must be (coef, intercept) of a logistic regression fitted on the "
            f"{n_features} top-layer avg-pooled features, i.e. shapes ({rows}, {n_features}) and "
            f"({rows},) for {n_classes} classes (LogisticRegression.coef_ and .intercept_). "
            f"Received: coef with shape {coef.shape}, intercept with shape {intercept.shape}"
        )
    if n_classes == 2:
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    return [coef.T, intercept]


def build_classifier_model(
    backbone: Backbone,
    n_classes: int,
    *,
    hidden_units: Sequence[int] = (),
    dropout: float = 0.2,
    l2: float = 0.0,
    augmentation: Mapping[str, Any] | None = None,
    init_head_from: tuple[Any, Any] | None = None,
    freeze_batchnorm: bool = True,
    seed: int = 0,
) -> keras.Model:
    """Stacks augmentation, preprocessing, the backbone and a softmax head.

    The model takes `(input_size, input_size, 3)` float pixels in 0-255, so it
    needs no outside preprocessing. Augmentation is active in training only.
    The pooled features pass a `FeatureStandardization` layer (named
    `standardize`; `finetune` sets it from the training images, training from
    scratch leaves it the identity) before the head.

    Args:
        backbone: From `layerprobe.features.weights.load_backbone`.
        n_classes: Number of output classes (>= 2).
        hidden_units: Dense ReLU layers (He init) between pooling and the softmax.
        dropout: Dropout rate before each dense layer; 0 for none.
        l2: L2 penalty on the softmax kernel (Glorot init).
        augmentation: Keys among `AUGMENTATIONS`, e.g. `{"flip": "horizontal",
            "rotation": 0.1}`, or None.
        init_head_from: `(coef, intercept)` of a scikit-learn logistic regression
            trained on the top layer's avg-pooled features (e.g. cached in a
            feature store), to start the softmax from; needs `hidden_units=()`.
        freeze_batchnorm: Call the backbone with `training=False` (the transfer
            recipe); False lets BatchNormalization use batch statistics in training.
        seed: Seed of the head's initialisation (which depends on nothing else)
            and of the random layers.

    Returns:
        An uncompiled `keras.Model`; `backbone.model` is one of its layers.

    Raises:
        ValueError: For `n_classes < 2`, a bad augmentation, or `init_head_from`
            with hidden layers or shapes that do not fit.
    """
    _require(_is_int(n_classes) and n_classes >= 2, "n_classes", "an integer >= 2", n_classes)
    if init_head_from is not None and len(hidden_units):
        raise ValueError(
            "init_head_from sets the softmax layer from a logistic regression on pooled features, "
            "which only fits a head without hidden layers; pass hidden_units=(). "
            f"Received: hidden_units={tuple(hidden_units)!r}"
        )
    size = backbone.input_size
    with keras_seed(seed):
        inputs = keras.Input((size, size, 3), name="image")
        x = inputs
        for layer in _augmentation_layers(augmentation):
            x = layer(x)
        x = BackbonePreprocessing(backbone.spec.preprocess_module, name="preprocess")(x)
        x = backbone.model(x, training=False) if freeze_batchnorm else backbone.model(x)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = FeatureStandardization(name="standardize")(x)
        for k, units in enumerate(hidden_units, start=1):
            if dropout:
                x = keras.layers.Dropout(dropout, name=f"head_dropout_{k}")(x)
            x = keras.layers.Dense(units, activation="relu", name=f"head_dense_{k}",
                                   kernel_initializer=keras.initializers.HeNormal(seed + k))(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name="head_dropout")(x)
        output_layer = keras.layers.Dense(
            n_classes,
            activation="softmax",
            kernel_initializer=keras.initializers.GlorotUniform(seed),
            kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
            dtype="float32",
            name="predictions",
        )
        outputs = output_layer(x)
    model = keras.Model(inputs, outputs, name=f"{backbone.model.name}_classifier")
    if init_head_from is not None:
        _set_head(model, init_head_from)
    return model


def _set_head(model: keras.Model, init_head_from: tuple[Any, Any]) -> None:
    """Sets the softmax from a logistic regression on the raw pooled features `x`,
    folding in the `standardize` layer: W x + b = (W * scale) z + (W mean + b)."""
    mean, scale = model.get_layer("standardize").get_weights()
    n_classes = int(model.output.shape[-1])
    kernel, bias = _head_weights(init_head_from, len(mean), n_classes)
    model.get_layer("predictions").set_weights([kernel * scale[:, None], bias + mean @ kernel])


def _fit_head_inputs(model: keras.Model, batches: ImageBatches, *, logreg_seed: int | None
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """Sets the `standardize` layer to the mean and std of the pooled features of `batches`.

    Features constant over the batches keep scale 1, as in scikit-learn's StandardScaler.
    With `logreg_seed`, also fits a logistic regression on the standardized features
    (`layerprobe.pipeline.classifiers.fit_classifier`, C by cross-validation) and returns its
    (coef, intercept) for the raw features (see `_set_head`).
    """
    pooled = keras.Model(model.input, model.get_layer("avg_pool").output)
    features, labels = [], []
    for index in range(len(batches)):  # batch by batch: the images are never all in memory
        images, batch_labels = batches[index]
        features.append(pooled.predict_on_batch(images))
        labels.append(batch_labels)
    X = np.concatenate(features).astype("float64")
    mean, std = X.mean(axis=0), X.std(axis=0)
    scale = np.where(std > 1e-6 * std.max(), std, 1.0)
    model.get_layer("standardize").set_weights([mean, scale])
    if logreg_seed is None:
        return None
    fit = fit_classifier((X - mean) / scale, np.concatenate(labels), "logreg",
                         param_grid={"C": list(_HEAD_INIT_CS)}, preprocessing=(),
                         random_state=logreg_seed)
    logreg = fit.estimator[-1]
    coef = logreg.coef_ / scale
    return coef, logreg.intercept_ - coef @ mean


# --------------------------------------------------------------------------- freezing


def _backbone_model(model: Any) -> Any:
    """The backbone inside a classifier, or the model itself when it has no nested model."""
    if isinstance(model, Backbone):
        return model.model
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) > 1:
        raise ValueError(
            f"Cannot tell which nested model of {model.name!r} is the backbone: found "
            f"{[layer.name for layer in nested]}. Pass the backbone model itself. "
            f"Received: model={model.name!r}"
        )
    return nested[0] if nested else model


def _stage_ends(model, spec: BackboneSpec) -> list[int]:
    """Indices in `model.layers` of the stage outputs, where blocks end."""
    return [info.index for info in describe_layers(model, spec) if info.stage is not None]


def _first_unfrozen(model, spec: BackboneSpec, blocks: int | str) -> int:
    """Index in `model.layers` of the lowest layer that `blocks` unfreezes."""
    _check_blocks(blocks)
    if blocks == "all":
        return 0
    if isinstance(blocks, str):
        return resolve_layers(model, spec, [blocks.removeprefix("from:")])[0].index
    stages = _stage_ends(model, spec)
    if blocks > len(stages):
        raise ValueError(
            f"{spec.name} has {len(stages)} blocks (stage outputs), so unfreeze_blocks must lie "
            f"in 0..{len(stages)}; use 'all' for the whole backbone or 'from:LAYER_NAME' for a "
            f"finer cut (`layerprobe layers {spec.name}` lists the layers). "
            f"Received: unfreeze_blocks={blocks!r}"
        )
    if blocks == 0:
        return len(model.layers)
    return 0 if blocks == len(stages) else stages[-(blocks + 1)] + 1


def unfreeze_top(model: Any, spec: BackboneSpec, blocks: int | str) -> list[str]:
    """Makes the backbone's top blocks trainable and freezes everything below.

    Blocks end at the stage outputs of `layerprobe.features.layers` (VGG's `blockN_pool`,
    else the last layer at each resolution). BatchNormalization layers always
    stay frozen. Recompile the model afterwards for the change to take effect.

    Args:
        model: A classifier from `build_classifier_model` (its head is left
            alone), a headless backbone model, or a `Backbone`.
        spec: The backbone's family spec.
        blocks: `N` unfreezes the layers above the (N+1)-th-to-last stage
            output, i.e. the last N blocks (0: none); `"all"` the whole backbone;
            `"from:LAYER_NAME"` that layer and all above it (aliases such as
            `"from:stage4"` work too).

    Returns:
        Names of the backbone layers with weights that are now trainable.

    Raises:
        ValueError: For a malformed `blocks` or more blocks than the backbone has.
        UnknownLayerError: If `"from:LAYER_NAME"` names no layer; lists the closest.
    """
    backbone = _backbone_model(model)
    first = _first_unfrozen(backbone, spec, blocks)
    backbone.trainable = True  # sets every layer; each is then set on its own
    unfrozen = []
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= first and not isinstance(layer, keras.layers.BatchNormalization)
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen


def _block_lr_scales(model: Any, spec: BackboneSpec, decay: float) -> dict[str, float]:
    """`variable.path` -> rate factor of the trainable backbone variables below the top block.

    A layer `k` blocks below the top one (blocks end at the stage outputs, as in
    `unfreeze_top`) gets `decay**k`; the top block and the head are left out (factor 1).
    """
    if decay == 1:
        return {}
    backbone = _backbone_model(model)
    ends = _stage_ends(backbone, spec)
    scales = {}
    for index, layer in enumerate(backbone.layers):
        below_top = max(0, sum(end >= index for end in ends) - 1)
        for variable in layer.trainable_weights if below_top else ():
            scales[variable.path] = decay**below_top
    return scales


@keras.saving.register_keras_serializable(package="layerprobe")
class BlockwiseAdam(keras.optimizers.Adam):
    """Adam with a learning-rate factor per variable, e.g. lower rates for lower blocks.

    Scales the rate in `update_step`, which the TensorFlow, JAX and torch
    backends all call once per variable for a subclass (torch's fused Adam
    replaces only `keras.optimizers.Adam` itself).

    Args:
        learning_rate: Rate of the variables without a factor.
        lr_scales: `variable.path` -> factor on `learning_rate`; others get 1.
        **kwargs: Other `keras.optimizers.Adam` arguments.
    """

    def __init__(self, learning_rate: float = 0.001, *, lr_scales: Mapping[str, float] | None = None,
                 **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.lr_scales = dict(lr_scales or {})

    def build(self, variables):
        super().build(variables)
        paths = [variable.path for variable in variables]
        unknown = sorted(set(self.lr_scales) - set(paths))
        if unknown:
            raise ValueError(
                f"lr_scales names variables the optimizer does not train: {unknown[:5]}. Key it by "
                f"`variable.path` of the model's trainable variables (e.g. {paths[:2]}). "
                f"Received: lr_scales with {len(self.lr_scales)} entries"
            )
        self._variable_scales = [self.lr_scales.get(path, 1.0) for path in paths]

    def update_step(self, gradient, variable, learning_rate):
        scale = self._variable_scales[optimizer_variable_index(self, variable)]
        super().update_step(gradient, variable, learning_rate * scale)

    def get_config(self):
        return {**super().get_config(), "lr_scales": self.lr_scales}


# --------------------------------------------------------------------------- data


class ImageBatches(keras.utils.PyDataset):
    """`(images, labels)` batches decoded on the fly from an `ImageDataset`.

    Shuffled per epoch when `shuffle` is set: epoch `e` uses the permutation
    drawn from `(seed, e)`, so a resumed run sees the same batches. Unreadable
    images are left out of their batch and recorded in `skipped`.

    Args:
        dataset: The samples.
        size: Image side fed to the model.
        batch_size: Images per batch.
        shuffle: Reshuffle at every epoch.
        seed: Seed of the shuffling.
        workers: Threads decoding batches (see `keras.utils.PyDataset`).
    """

    def __init__(self, dataset: ImageDataset, size: int, batch_size: int, *,
                 shuffle: bool = False, seed: int = 0, workers: int = 1):
        super().__init__(workers=workers)
        self.dataset = dataset
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.skipped: dict[str, str] = {}
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Selects the order of epoch `epoch` (a resumed fit starts past 0)."""
        self.epoch = epoch
        n_samples = len(self.dataset)
        self.order = (
            np.random.default_rng([self.seed, epoch]).permutation(n_samples)
            if self.shuffle else np.arange(n_samples)
        )

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        positions = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        images, labels = [], []
        for i in positions:
            try:
                images.append(self.dataset.load(int(i), self.size))
            except UnreadableImageError as error:
                self.skipped[self.dataset.sample_ids[i]] = error.reason
                continue
            labels.append(self.dataset.labels[i])
        if not images:
            raise ValueError(
                f"No image of batch {index} could be decoded; remove the unreadable files from "
                f"the dataset. Received: {dict(list(self.skipped.items())[-3:])}"
            )
        return np.stack(images).astype("float32"), np.asarray(labels)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)


def _validation_split(labels: np.ndarray, val_fraction: float, seed: int):
    """Stratified (train, validation) sample indices, fixed by `seed`."""
    indices = np.arange(len(labels))
    if val_fraction == 0:
        return indices, indices[:0]
    try:
        train, val = train_test_split(
            indices, test_size=val_fraction, stratify=labels, random_state=seed
        )
    except ValueError as error:
        raise ValueError(
            f"Cannot hold out a stratified validation split of val_fraction={val_fraction} from "
            f"{len(labels)} training images in {len(np.unique(labels))} classes: {error} "
            "Use more images per class, a larger val_fraction, or val_fraction=0 to train "
            f"without validation. Received: val_fraction={val_fraction}"
        ) from error
    return np.sort(train), np.sort(val)


# --------------------------------------------------------------------------- checkpoints


class _EpochLogs(keras.callbacks.Callback):
    """Adds the phase and the optimizer's learning rate to every epoch's logs."""

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


def _save_checkpoint(model, directory: Path, state: dict[str, Any]) -> None:
    """Writes the weights under a new name, commits `state.json` pointing to them,
    then deletes older weights: a crash leaves the previous checkpoint intact."""
    suffix = "-end" if state["phase_ended"] else ""
    name = f"{state['phase']}-{state['epoch']:04d}{suffix}.weights.h5"
    model.save_weights(directory / name)
    text = json.dumps({**state, "weights_file": name, "version": _STATE_VERSION}, indent=2)
    write_atomically(directory / _STATE_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    for old in directory.glob("*.weights.h5"):
        if old.name != name:
            old.unlink()


class _Checkpoint(keras.callbacks.Callback):
    def __init__(self, directory: Path, state: dict[str, Any], clock: Callable[[], float]):
        super().__init__()
        self.directory = directory
        self.state = state
        self.clock = clock

    def on_epoch_end(self, epoch, logs=None):
        _save_checkpoint(self.model, self.directory,
                         {**self.state, "epoch": epoch + 1, "seconds": self.clock()})


def _read_state(directory: Path, run: dict[str, Any]) -> dict[str, Any] | None:
    path = directory / _STATE_FILE
    if not path.is_file():
        return None
    state = json.loads(path.read_text(encoding="utf-8"))
    mismatched = sorted(
        key for key in run
        if key not in _RESUMABLE_FIELDS and state.get("run", {}).get(key) != run[key]
    )
    if state.get("version") != _STATE_VERSION or mismatched:
        raise ValueError(
            f"The checkpoint in {directory} was written by a different run (differing: "
            f"{mismatched or ['state version']}). Resume with the same backbone, data and "
            f"settings, or start over: pass resume=False or delete {directory}. "
            f"Received: {({key: run[key] for key in mismatched})}"
        )
    return state


def _truncate_history(path: Path, epoch: int) -> None:
    """Drops history rows of epochs a resumed run will train again."""
    if path.is_file() and path.stat().st_size:
        history = pd.read_csv(path)
        history[history["epoch"] < epoch].to_csv(path, index=False)


def _save_model(model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.keras")  # Keras wants the suffix
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class _Phase:
    name: str
    epochs: int
    learning_rate: float
    set_trainable: Callable[[Any], Any]
    block_lr_decay: float = 1.0


def _plan(mode: str, config: FinetuneConfig, spec: BackboneSpec) -> list[_Phase]:
    if mode == "scratch":
        return [_Phase("scratch", config.head_epochs + config.finetune_epochs,
                       config.head_learning_rate, lambda m: setattr(m, "trainable", True))]
    return [
        _Phase("head", config.head_epochs, config.head_learning_rate,
               lambda m: setattr(_backbone_model(m), "trainable", False)),
        _Phase("finetune", config.finetune_epochs, config.learning_rate,
               lambda m: unfreeze_top(m, spec, config.unfreeze_blocks), config.block_lr_decay),
    ]


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
            "head_init": "glorot" if self.mode == "scratch" else self.config.head_init,
            "epochs": self.epochs_run,
            "fit_seconds": self.fit_seconds,
            "model_path": str(self.model_path),
            "history_path": str(self.history_path),
        }


def _run_phases(
    mode: str,
    model: str | BackboneSpec,
    train_data: ImageDataset,
    *,
    weights: str | os.PathLike | None,
    input_size: int | None,
    model_kwargs: Mapping[str, Any] | None,
    config: FinetuneConfig,
    output_dir: str | os.PathLike,
    resume: bool,
    init_head_from: tuple[Any, Any] | None,
    callbacks: Sequence[keras.callbacks.Callback],
    verbose: int | str,
) -> FinetuneResult:
    n_classes = len(train_data.class_names)
    _require(n_classes >= 2 and len(train_data) > 0, "train_data",
             "a non-empty dataset with at least 2 classes",
             f"{len(train_data)} samples, class_names={train_data.class_names}")
    if init_head_from is not None and config.head_init == "logreg":
        raise ValueError(
            "Pass either init_head_from (a logistic regression of your own) or a config with "
            "head_init='logreg' (one fitted here), not both. Received: both"
        )
    output_dir = Path(output_dir)
    checkpoints, history_path = output_dir / "checkpoints", output_dir / "history.csv"
    if not resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
        history_path.unlink(missing_ok=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    train_idx, val_idx = _validation_split(train_data.labels, config.val_fraction, config.seed)
    started = time.perf_counter()
    policy = dtype_policy("mixed_float16") if config.mixed_precision else contextlib.nullcontext()
    with keras_seed(config.seed), policy:
        backbone = load_backbone(model, weights=weights, input_size=input_size,
                                 model_kwargs=model_kwargs, seed=config.seed)
        if mode == "scratch" and config.scratch_batchnorm_momentum is not None:
            set_batchnorm_momentum(backbone.model, config.scratch_batchnorm_momentum)
        classifier = build_classifier_model(
            backbone, n_classes, hidden_units=config.hidden_units, dropout=config.dropout,
            l2=config.l2, augmentation=config.augmentation, init_head_from=init_head_from,
            freeze_batchnorm=mode == "finetune", seed=config.seed,
        )
        run = {
            **config.to_dict(), "mode": mode, "backbone": backbone.architecture,
            "weights_digest": backbone.weights_digest, "input_size": backbone.input_size,
            "train_data": train_data.digest(),
        }
        state = _read_state(checkpoints, run) if resume else None
        if state is not None:
            classifier.load_weights(checkpoints / state["weights_file"])
            _truncate_history(history_path, state["epoch"])
        earlier_seconds = state.get("seconds", 0.0) if state else 0.0

        def clock() -> float:
            return earlier_seconds + time.perf_counter() - started
        phases = _plan(mode, config, backbone.spec)
        names = [phase.name for phase in phases]
        train = ImageBatches(train_data.select(train_idx), backbone.input_size,
                             config.batch_size, shuffle=True, seed=config.seed,
                             workers=config.workers)
        val = ImageBatches(train_data.select(val_idx), backbone.input_size,
                           config.batch_size, workers=config.workers) if len(val_idx) else None
        # Scratch training keeps the identity: its features move with training, and
        # BatchNormalization in training mode gives them other statistics than inference.
        if state is None and mode == "finetune":  # a resumed run has these in its checkpoint
            in_order = ImageBatches(train.dataset, backbone.input_size, config.batch_size,
                                    workers=config.workers)
            logreg = _fit_head_inputs(classifier, in_order, logreg_seed=(
                config.seed if config.head_init == "logreg" else None))
            if init_head_from is not None or logreg is not None:
                _set_head(classifier, init_head_from or logreg)
        epoch = state["epoch"] if state else 0
        for phase in phases:
            earlier = state is not None and names.index(state["phase"]) > names.index(phase.name)
            if phase.epochs == 0 or earlier:
                continue
            resumed = state is not None and state["phase"] == phase.name
            phase_start = state["phase_start"] if resumed else epoch
            end = phase_start + phase.epochs
            phase.set_trainable(classifier)
            scales = _block_lr_scales(classifier, backbone.spec, phase.block_lr_decay)
            classifier.compile(
                optimizer=BlockwiseAdam(phase.learning_rate, lr_scales=scales),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            if epoch >= end or (resumed and state["stopped_early"]):
                continue  # nothing left to train in this phase
            early_stopping = None if config.early_stopping_patience is None else (
                keras.callbacks.EarlyStopping(
                    monitor="val_loss" if val is not None else "loss",
                    patience=config.early_stopping_patience,
                    restore_best_weights=True,
                )
            )
            state_base = {"run": run, "phase": phase.name, "phase_start": phase_start,
                          "stopped_early": False, "phase_ended": False}
            train.set_epoch(epoch)
            history = classifier.fit(
                train,
                validation_data=val,
                epochs=end,
                initial_epoch=epoch,
                shuffle=False,  # ImageBatches shuffles, reproducibly
                verbose=verbose,
                callbacks=[
                    _EpochLogs(phase.name),
                    *([early_stopping] if early_stopping is not None else []),
                    _Checkpoint(checkpoints, state_base, clock),
                    keras.callbacks.CSVLogger(history_path, append=True),
                    *callbacks,
                ],
            )
            epoch += len(history.epoch)
            _save_checkpoint(classifier, checkpoints, {
                **state_base, "epoch": epoch, "phase_ended": True, "seconds": clock(),
                "stopped_early": early_stopping is not None and early_stopping.stopped_epoch > 0,
            })
        unfrozen = tuple(
            layer.name for layer in _backbone_model(classifier).layers
            if layer.trainable and layer.trainable_weights
        )
        model_path = output_dir / "model.keras"
        _save_model(classifier, model_path)
    return FinetuneResult(
        mode=mode,
        backbone=backbone.architecture,
        weights=backbone.weights,
        model=classifier,
        config=config,
        unfrozen_layers=unfrozen,
        epochs_run=epoch,
        fit_seconds=clock(),
        model_path=model_path,
        history_path=history_path,
        skipped={**train.skipped, **(val.skipped if val is not None else {})},
    )


def finetune(
    model: str | BackboneSpec,
    train_data: ImageDataset,
    *,
    output_dir: str | os.PathLike,
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    config: FinetuneConfig | None = None,
    init_head_from: tuple[Any, Any] | None = None,
    resume: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 0,
) -> FinetuneResult:
    """Trains a head on a frozen backbone, then finetunes the backbone's top blocks.

    First one pass over the training images sets the head's feature
    standardization (and, with `head_init="logreg"`, its softmax). Phase 1 trains
    the head (`head_epochs`, Adam at `head_learning_rate`); phase 2 unfreezes
    `unfreeze_blocks` top blocks (`unfreeze_top`) and continues at `learning_rate`
    (lower for lower blocks with `block_lr_decay`). Each phase stops early on the
    validation loss and restores its best weights. A stratified `val_fraction` of
    `train_data` is held out.

    Args:
        model: Backbone name from the registry (e.g. `"MobileNetV2"`) or a spec.
        train_data: Training samples (all of them are used; pass `ds.subset("train")`).
        output_dir: Receives `history.csv`, `checkpoints/` and `model.keras`.
        weights: Initial backbone weights, as for `load_backbone`.
        input_size: Image side; defaults to the family's.
        model_kwargs: Extra constructor arguments, e.g. `{"alpha": 0.35}`.
        config: Hyperparameters; `FinetuneConfig()` by default.
        init_head_from: `(coef, intercept)` to start the softmax from (see
            `build_classifier_model`); `config.head_init="logreg"` fits one instead.
        resume: Continue from the checkpoint in `output_dir` if there is one
            (finished phases are skipped, the interrupted one goes on at its next
            epoch); False starts over and deletes it. Optimizer moments and
            early-stopping counters restart on resume.
        callbacks: Extra Keras callbacks, passed to every phase's `fit`.
        verbose: Keras `fit` verbosity.

    Returns:
        A `FinetuneResult`; score it with `evaluate_model`.

    Raises:
        ValueError: For bad data, an unusable validation split, unknown blocks,
            or a checkpoint written by a different run.
        WeightsUnavailableError: If the backbone weights cannot be loaded.

    Example:
        >>> result = finetune("MobileNetV2", ds.subset("train"), output_dir="runs/ft",
        ...                   config=FinetuneConfig(unfreeze_blocks=2))
        >>> row = evaluate_model(result, ds.subset("test"))
    """
    return _run_phases(
        "finetune", model, train_data, weights=weights, input_size=input_size,
        model_kwargs=model_kwargs, config=config or FinetuneConfig(), output_dir=output_dir,
        resume=resume, init_head_from=init_head_from, callbacks=callbacks, verbose=verbose,
    )


def train_from_scratch(
    model: str | BackboneSpec,
    train_data: ImageDataset,
    *,
    output_dir: str | os.PathLike,
    input_size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    config: FinetuneConfig | None = None,
    resume: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 0,
) -> FinetuneResult:
    """Trains the same classifier from random weights: the no-transfer baseline.

    One phase trains every layer, BatchNormalization included (in training mode,
    as training from scratch needs), for `head_epochs + finetune_epochs` epochs
    at `head_learning_rate`, the rate for randomly initialised weights. The
    split, checkpoints, history and outputs are those of `finetune`.

    Args:
        See `finetune`; the backbone starts from `weights=None`.

    Returns:
        A `FinetuneResult` with `mode="scratch"`.
    """
    return _run_phases(
        "scratch", model, train_data, weights=None, input_size=input_size,
        model_kwargs=model_kwargs, config=config or FinetuneConfig(), output_dir=output_dir,
        resume=resume, init_head_from=None, callbacks=callbacks, verbose=verbose,
    )


# --------------------------------------------------------------------------- evaluation


class _Argmax:
    """Predicts the most probable class: class probabilities as features for `evaluate`."""

    @staticmethod
    def predict(proba: np.ndarray) -> np.ndarray:
        return np.argmax(proba, axis=1)


def evaluate_model(
    model: keras.Model | FinetuneResult,
    dataset: ImageDataset,
    class_names: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    n_workers: int | None = None,
) -> dict[str, Any]:
    """Scores a trained classifier on held-out images, decoded in chunks.

    Args:
        model: A classifier from `build_classifier_model` (or `load_model`), or a
            `FinetuneResult`, whose `as_row()` columns then lead the row.
        dataset: The test samples, e.g. `ds.subset("test")`.
        class_names: Names of the model's outputs; `dataset.class_names` by default.
        batch_size: Images per forward pass.
        n_workers: Decoding threads (see `iter_decoded_chunks`).

    Returns:
        A results-table row: the run's columns, `accuracy`, `balanced_accuracy`,
        `macro_f1`, `n_test` and `n_unreadable` (images skipped).

    Raises:
        ValueError: If no image decodes or the model's outputs do not match
            `class_names`.
    """
    row = model.as_row() if isinstance(model, FinetuneResult) else {}
    keras_model = model.model if isinstance(model, FinetuneResult) else model
    class_names = dataset.class_names if class_names is None else class_names
    size = int(keras_model.input_shape[1])
    step = batch_size * 8
    n_samples = len(dataset)
    chunks = [range(start, min(start + step, n_samples)) for start in range(0, n_samples, step)]
    proba, y_true, n_unreadable = [], [], 0
    for chunk in iter_decoded_chunks(dataset, chunks, size, n_workers=n_workers):
        n_unreadable += len(chunk.skipped)
        if len(chunk.sample_indices):
            proba.append(keras_model.predict(chunk.images, batch_size=batch_size, verbose=0))
            y_true.append(dataset.labels[chunk.sample_indices])
    if not proba:
        raise ValueError(
            f"None of the {n_samples} images could be decoded, so there is nothing to score. "
            f"Check the dataset's files. Received: {n_samples} samples, {n_unreadable} unreadable"
        )
    proba = np.concatenate(proba).astype("float64")
    if proba.shape[1] != len(class_names):
        raise ValueError(
            f"The model predicts {proba.shape[1]} classes but {len(class_names)} class names were "
            f"given; pass the class names the model was trained with. "
            f"Received: class_names={list(class_names)}"
        )
    scores = evaluate(_Argmax(), proba, np.concatenate(y_true), class_names)
    return {**row, **scores.as_dict(), "n_test": len(proba), "n_unreadable": n_unreadable}
