"""`TokenPooling`: one vector per image from a transformer's (tokens, width) output.

The one implementation of token pooling: the extractor pools block outputs
with it (`layerprobe.features.truncate.build_extractor`), and a finetuned
transformer's head reads its features through it
(`layerprobe.pipeline.finetune.classifier_model`). Registered with Keras
(package `"layerprobe"`) so that a saved classifier loads again. Imports Keras
at import: import it only where Keras is needed anyway.
"""

from __future__ import annotations

import keras

from .registry import TOKEN_POOLINGS

__all__ = ["TokenPooling"]

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
