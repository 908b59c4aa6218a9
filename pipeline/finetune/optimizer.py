"""`BlockwiseAdam`: the optimizer `finetune` compiles its classifier with.

A saved classifier holds no optimizer (`checkpoints.save_model` saves the
trained graph only), so nothing here is needed to load one.
Everything here is backend-neutral Keras 3 (`keras.ops`).
"""

from __future__ import annotations

from collections.abc import Mapping

import keras

from ...features.backend import optimizer_variable_index

__all__ = ["BlockwiseAdam"]


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
