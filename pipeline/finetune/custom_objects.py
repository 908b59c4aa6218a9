"""The Keras custom objects of a finetuned classifier: two layers and an optimizer.

`BackbonePreprocessing` and `FeatureStandardization` are layers of every model
that `build_classifier_model` builds; `BlockwiseAdam` is the optimizer that
`finetune` compiles it with. All three are registered with Keras (package
`"layerprobe"`) when this module is imported, so import it before
`keras.saving.load_model` in a new process (importing `finetune`,
`train_from_scratch` or `build_classifier_model` imports it too):

    >>> import layerprobe.pipeline.finetune.custom_objects  # noqa: F401
    >>> model = keras.saving.load_model("runs/ft/model.keras")

Everything here is backend-neutral Keras 3 (`keras.ops`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import keras

from ...features.backend import optimizer_variable_index
from ...features.registry import rescale

__all__ = ["BackbonePreprocessing", "BlockwiseAdam", "FeatureStandardization"]


@keras.saving.register_keras_serializable(package="layerprobe")
class BackbonePreprocessing(keras.layers.Layer):
    """Applies a family's `preprocess_input` inside the model, on 0-255 pixels.

    Uses the tensor branch of the Keras function, written with `keras.ops`, so
    it runs on every backend. Computes in float32 under mixed precision.

    Args:
        preprocess_module: Module holding `preprocess_input`, e.g.
            `"keras.applications.vgg16"` (a `BackboneSpec.preprocess_module`);
            None passes pixels through (models that rescale inside).
        preprocess_mode: Instead, a mode of `keras.applications.imagenet_utils.preprocess_input`
            (`"caffe"`, `"tf"`, `"torch"`) or `"none"` (a `BackboneSpec.preprocess_mode`).
        rescaling: Instead, `(scale, offset)` per channel (a `BackboneSpec.rescaling`:
            a keras-hub image converter's `x * scale + offset`).
    """

    def __init__(self, preprocess_module: str | None, preprocess_mode: str | None = None, rescaling=None,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.preprocess_module = preprocess_module
        self.preprocess_mode = preprocess_mode
        self.rescaling = None if rescaling is None else tuple(tuple(float(v) for v in part) for part in rescaling)

    def call(self, inputs):
        if self.rescaling is not None:
            return rescale(inputs, self.rescaling)
        if self.preprocess_mode not in (None, "none"):
            from keras.applications import imagenet_utils

            return imagenet_utils.preprocess_input(keras.ops.add(inputs, 0.0), data_format="channels_last",
                                                   mode=self.preprocess_mode)
        if self.preprocess_module is None or self.preprocess_mode == "none":
            return inputs
        preprocess_input = importlib.import_module(self.preprocess_module).preprocess_input
        # A fresh tensor: the Keras function divides in place, which on torch would
        # write into the caller's batch.
        return preprocess_input(keras.ops.add(inputs, 0.0), data_format="channels_last")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {**super().get_config(), "preprocess_module": self.preprocess_module}
        if self.preprocess_mode is not None:
            config["preprocess_mode"] = self.preprocess_mode
        if self.rescaling is not None:
            config["rescaling"] = [list(part) for part in self.rescaling]
        return config


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

    Raises:
        ValueError: From `build`, if `lr_scales` names variables the optimizer
            does not train (the Keras convention for optimizer arguments).
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
