"""The classifier that is finetuned: augmentation, preprocessing, backbone, a softmax head.

`feature_map_backbone` cuts a whole classifier (a model file with its own head)
at its last feature map; `build_classifier_model` stacks the layers; `fit_head_inputs` sets the head's
feature standardization from the training images (and can fit a logistic
regression on the standardized features); `set_head` starts the softmax from a
scikit-learn logistic regression.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from ...features.backbone import Backbone
from ...core.checks import is_positive_int
from ...core.errors import BackboneError, ConfigError, InputError
from ...features.layers import describe_layers
from ...features.seeding import keras_seed
from ...features.token_pooling import token_pooling
from ..classifiers import fit_classifier
from .settings import AUGMENTATIONS, augmentation_problems

if TYPE_CHECKING:
    from .batches import ImageBatches

__all__ = ["build_classifier_model", "feature_map_backbone", "fit_head_inputs", "set_head", "set_standardization",
           "standardization"]

_HEAD_INIT_CS = (1e-3, 1e-2, 1e-1, 1.0)  # C of head_init="logreg", picked by cross-validation
_ABSENT_CLASS_GAP = 5.0  # logits below the least likely present class, for classes absent from training


def _augmentation_layers(augmentation: Mapping[str, Any] | None) -> list:
    problems = augmentation_problems(augmentation)
    if problems:
        raise ConfigError(problems, "build_classifier_model(augmentation=...)")
    return [
        getattr(keras.layers, AUGMENTATIONS[key])(value, name=f"augment_{key}", dtype="float32")
        for key, value in (augmentation or {}).items()
    ]


def _head_weights(init_head_from, n_features: int, n_classes: int) -> list[np.ndarray]:
    """(coef, intercept) of a scikit-learn logistic regression -> [kernel, bias] of the softmax.

    A binary regression has one row, the logit of class 1; the softmax gets a zero
    logit for class 0, which gives the same probabilities.
    """
    coef, intercept = (np.asarray(part, dtype="float32") for part in init_head_from)
    rows = 1 if n_classes == 2 else n_classes
    if coef.shape != (rows, n_features) or intercept.shape != (rows,):
        raise InputError(
            f"init_head_from must be (coef, intercept) of a logistic regression fitted on the "
            f"{n_features} top-layer avg-pooled features, i.e. shapes ({rows}, {n_features}) and "
            f"({rows},) for {n_classes} classes (LogisticRegression.coef_ and .intercept_). "
            f"Received: coef with shape {coef.shape}, intercept with shape {intercept.shape}"
        )
    if n_classes == 2:
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    return [coef.T, intercept]


def feature_map_backbone(backbone: Backbone) -> Backbone:
    """`backbone` as it is when it ends in a feature map (or tokens); else cut at its last stage (its own head dropped).

    A vision transformer (`BackboneSpec.tokens`) ends in its final norm's tokens,
    which the head pools (`build_classifier_model`); it is returned as it is.

    A registry backbone is built with `include_top=False` and ends in a
    `(h, w, c)` map, but a model file may be a whole classifier (e.g.
    EfficientNet-Lite0 with its pooling and 1,000-class softmax). Finetuning puts
    a new head on a feature map, so such a model is cut where its last stage ends
    (`layerprobe.features.layers`: the last layer at the smallest resolution),
    as `include_top=False` would; the layers are shared, not copied.

    Raises:
        BackboneError: If the model has no 4-D (spatial) stage output to cut at.
    """
    model = backbone.model
    if len(model.output.shape) == 4 or backbone.spec.tokens is not None:
        return backbone
    stages = [info for info in describe_layers(model, backbone.spec)
              if info.stage is not None and len(info.output_shape) == 3]
    if not stages:
        raise BackboneError(
            f"{model.name!r} has no spatial feature map (a (height, width, channels) stage output) to put a "
            f"finetuning head on; finetune a convolutional model. Received: output shape {tuple(model.output.shape)}"
        )
    cut = model.get_layer(stages[-1].name).output
    return dataclasses.replace(backbone, model=keras.Model(model.inputs, cut, name=model.name))


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
    needs no outside preprocessing: the family's `preprocess_input` is in the
    graph as Keras operations. Augmentation is active in training only.
    A feature map is average-pooled (`avg_pool`); a vision transformer's tokens
    are pooled by `token_pool` (`token_pooling`: its class token, or the mean of
    the patch tokens for a model without one). The pooled features pass a
    `Normalization` layer (named `standardize`; `finetune` sets it from the
    training images, training from scratch leaves it the identity) before the head.
    Only Keras's own layers and operations are used, so a saved model loads
    with `keras.saving.load_model` without layerprobe (and in safe mode).

    Args:
        backbone: From `layerprobe.features.backbone.load_backbone`.
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
        InputError: (a `ValueError`) For `n_classes < 2`, or `init_head_from`
            with hidden layers or shapes that do not fit.
        ConfigError: (a `ValueError`) For a bad augmentation.
    """
    if not (is_positive_int(n_classes) and n_classes >= 2):
        raise InputError(f"`n_classes` must be an integer >= 2. Received: n_classes={n_classes!r}")
    if init_head_from is not None and len(hidden_units):
        raise InputError(
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
        spec = backbone.spec
        x = spec.preprocess_input(keras.ops.cast(x, "float32"))  # Keras operations in the graph, in float32
        x = backbone.model(x, training=False) if freeze_batchnorm else backbone.model(x)
        if spec.tokens is None:
            x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        else:
            mode = "cls" if spec.tokens.class_token else "mean"
            x = token_pooling(x, mode, spec.tokens.prefix_tokens, name="token_pool")
        # The identity until `fit_head_inputs` sets its statistics (`set_standardization`).
        x = keras.layers.Normalization(name="standardize", dtype="float32")(x)
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
        set_head(model, init_head_from)
    return model


def standardization(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of the model's `standardize` layer: it computes `(x - mean) / scale`."""
    mean, variance, _ = model.get_layer("standardize").get_weights()
    return mean, np.sqrt(variance)


def set_standardization(model: keras.Model, mean: np.ndarray, scale: np.ndarray) -> None:
    """Sets the `standardize` layer to compute `(x - mean) / scale` (a Keras `Normalization`: variance `scale**2`)."""
    layer = model.get_layer("standardize")
    layer.set_weights([np.asarray(mean, "float32"), np.square(np.asarray(scale, "float32")), np.array(0)])
    layer.finalize_state()  # Normalization reads its statistics here, not at each call


def set_head(model: keras.Model, init_head_from: tuple[Any, Any]) -> None:
    """Sets the softmax from a logistic regression on the raw pooled features `x`,
    folding in the `standardize` layer: W x + b = (W * scale) z + (W mean + b)."""
    mean, scale = standardization(model)
    n_classes = int(model.output.shape[-1])
    kernel, bias = _head_weights(init_head_from, len(mean), n_classes)
    model.get_layer("predictions").set_weights([kernel * scale[:, None], bias + mean @ kernel])


def fit_head_inputs(model: keras.Model, batches: ImageBatches, *, logreg_seed: int | None
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """Sets the `standardize` layer to the mean and std of the pooled features of `batches`.

    Features constant over the batches keep scale 1, as in scikit-learn's StandardScaler.
    With `logreg_seed`, also fits a logistic regression on the standardized features
    (`layerprobe.pipeline.classifiers.fit_classifier`, C by cross-validation) and returns its
    (coef, intercept) for the raw features (see `set_head`).
    """
    pooled = keras.Model(model.input, model.get_layer("standardize").input)
    features, labels = [], []
    for index in range(len(batches)):  # batch by batch: the images are never all in memory
        images, batch_labels = batches[index]
        features.append(pooled.predict_on_batch(images))
        labels.append(batch_labels)
    X = np.concatenate(features).astype("float64")
    mean, std = X.mean(axis=0), X.std(axis=0)
    scale = np.where(std > 1e-6 * std.max(), std, 1.0)
    set_standardization(model, mean, scale)
    if logreg_seed is None:
        return None
    fit = fit_classifier((X - mean) / scale, np.concatenate(labels), "logreg",
                         param_grid={"C": list(_HEAD_INIT_CS)}, preprocessing=(),
                         random_state=logreg_seed)
    coef, intercept = _all_classes(fit.estimator[-1], int(model.output.shape[-1]))
    coef = coef / scale
    return coef, intercept - coef @ mean


def _all_classes(logreg, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(coef, intercept) of `logreg` with a row for each of the model's classes.

    A class absent from the training images (a small or filtered training split)
    gets a zero weight row and a bias `_ABSENT_CLASS_GAP` below the lowest present
    one: the head starts out almost never predicting it, as the regression would.
    """
    coef, intercept = logreg.coef_, logreg.intercept_
    present = np.asarray(logreg.classes_, dtype=int)
    if len(present) == n_classes:
        return coef, intercept
    if coef.shape[0] == 1:  # binary: the logit of present[1] against present[0]
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, intercept[0]])
    full_coef = np.zeros((n_classes, coef.shape[1]))
    full_intercept = np.full(n_classes, intercept.min() - _ABSENT_CLASS_GAP)
    full_coef[present], full_intercept[present] = coef, intercept
    return full_coef, full_intercept
