"""Token pooling: one vector per image from a transformer's (tokens, width) output.

`TokenPooling` is the layer the extractor pools block outputs with
(`layerprobe.features.truncate.build_extractor`). `token_pooling` computes the
same from Keras's own layers, for the models layerprobe saves (an exported
probe, a finetuned transformer's head), which load without layerprobe.
Imports Keras at import: import it only where Keras is needed anyway.
"""

from __future__ import annotations

import keras

from .registry import TOKEN_POOLINGS

__all__ = ["TokenPooling", "token_pooling"]

_MODES = (*TOKEN_POOLINGS, "max")


@keras.saving.register_keras_serializable(package="layerprobe")
class TokenPooling(keras.layers.Layer):
    """Pools `(batch, tokens, width)` into `(batch, width)` (or `2 * width` for `"cls+mean"`).

    Computes in float32, also under mixed precision.

    Args:
        mode: `"cls"` (token 0, the class token), `"mean"` (mean of the patch
            tokens: prefix tokens excluded), `"cls+mean"` (both, concatenated, as
            DINOv2's linear evaluation reads them) or `"max"` (max over the patch tokens).
        prefix_tokens: Tokens before the patch tokens (class and register tokens).

    Raises:
        ValueError: For an unknown `mode` or a negative `prefix_tokens`.
    """

    def __init__(self, mode: str, prefix_tokens: int, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in _MODES:
            raise ValueError(f"TokenPooling mode must be one of {_MODES}. Received: mode={mode!r}")
        if not (isinstance(prefix_tokens, int) and prefix_tokens >= 0):
            raise ValueError(f"prefix_tokens must be an integer >= 0. Received: prefix_tokens={prefix_tokens!r}")
        self.mode = mode
        self.prefix_tokens = prefix_tokens

    def call(self, inputs):
        patches = inputs[:, self.prefix_tokens :, :]
        if self.mode == "max":
            return keras.ops.max(patches, axis=1)
        mean = keras.ops.mean(patches, axis=1)
        if self.mode == "mean":
            return mean
        cls = inputs[:, 0, :]
        return cls if self.mode == "cls" else keras.ops.concatenate([cls, mean], axis=-1)

    def compute_output_shape(self, input_shape):
        width = input_shape[-1]
        return (input_shape[0], 2 * width if self.mode == "cls+mean" and width is not None else width)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "prefix_tokens": self.prefix_tokens}


def token_pooling(tokens, mode: str, prefix_tokens: int, *, name: str):
    """`TokenPooling(mode, prefix_tokens)` of a `(batch, tokens, width)` tensor, from Keras's own layers.

    `TokenPooling` is layerprobe's layer; these built-in layers compute the
    same in float32 so that a saved model loads without layerprobe: `Cropping1D` drops the prefix tokens (or
    keeps token 0, the class token), `GlobalAveragePooling1D` /
    `GlobalMaxPooling1D` pool the patch tokens.
    """
    n_tokens = int(tokens.shape[1])
    label = f"{name}__{mode.replace('+', '_')}"
    patches = keras.layers.Cropping1D((prefix_tokens, 0), name=f"{label}_patches", dtype="float32")(tokens)
    if mode == "max":
        return keras.layers.GlobalMaxPooling1D(name=label, dtype="float32")(patches)
    mean = keras.layers.GlobalAveragePooling1D(name=f"{label}_mean", dtype="float32")(patches)
    if mode == "mean":
        return mean
    cls = keras.layers.Cropping1D((0, n_tokens - 1), name=f"{label}_class_token", dtype="float32")(tokens)
    cls = keras.layers.Flatten(name=f"{label}_cls", dtype="float32")(cls)
    return cls if mode == "cls" else keras.layers.Concatenate(name=label, dtype="float32")([cls, mean])
