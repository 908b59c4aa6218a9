"""What a cut backbone costs at inference: forward FLOPs per image up to a layer.

A probe on cached features costs milliseconds whatever its layer; what an
earlier cut saves is the forward pass a deployed model still runs on every
new image. `forward_flops` counts it from the Keras graph: the layers the
output of a layer depends on (its ancestors), and of those the ones with a
kernel (convolutions of any rank, depthwise and separable ones, dense and
einsum-dense layers), each costing one multiply-add per kernel weight per
output position (the output's axes between the batch and the channel axis:
pixels for a convolution, tokens for a dense layer on tokens, 1 otherwise).
FLOPs are 2 x multiply-adds. Element-wise layers, pooling, normalisation and
the attention products are left out: they are a few percent of a convnet's
forward pass. The counts are exact for the shapes the model was built for
(its input size), and are stored in the extraction plan
(`layerprobe.features.plans`), so a rerun does not recount them.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

__all__ = ["forward_flops", "gflops"]

_KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


def _positions(shape: Iterable[Any]) -> int:
    """Output positions of a layer: the product of the axes between batch and channels (1 for a vector)."""
    axes = list(shape)[1:-1]
    return math.prod(int(size) for size in axes if size is not None)


def _own_macs(layer: Any) -> int:
    """Multiply-adds of `layer`: its kernels' weights times its output positions, for each call in the graph."""
    weights = sum(math.prod(getattr(layer, name).shape) for name in _KERNELS
                  if getattr(layer, name, None) is not None and hasattr(getattr(layer, name), "shape"))
    if not weights:
        return 0
    calls = [node.output_tensors[0].shape for node in getattr(layer, "_inbound_nodes", []) if node.output_tensors]
    return int(weights) * sum(_positions(shape) for shape in calls)


def _parents(layer: Any) -> list[Any]:
    """The layers whose outputs `layer` reads (through every call of it in the graph)."""
    parents = []
    for node in getattr(layer, "_inbound_nodes", []):
        for tensor in node.input_tensors:
            history = getattr(tensor, "_keras_history", None)
            if history is not None:
                parents.append(history[0])
    return parents


def _macs(layer: Any) -> int:
    """Multiply-adds of `layer`, a nested model's its layers' sum."""
    inner = getattr(layer, "layers", None)
    if inner:
        return sum(_macs(sublayer) for sublayer in inner)
    return _own_macs(layer)


def forward_flops(model: Any, layer_names: Iterable[str]) -> Mapping[str, int]:
    """Forward FLOPs per image from `model`'s input to each named layer's output.

    Args:
        model: A built functional `keras.Model`.
        layer_names: Layers of `model` (names `model.get_layer` knows).

    Returns:
        Layer name -> FLOPs (2 x the multiply-adds of the conv and dense layers it depends on).

    Example:
        >>> forward_flops(keras.applications.VGG16(include_top=False, weights=None,
        ...                                        input_shape=(224, 224, 3)), ["block5_pool"])  # doctest: +SKIP
        {'block5_pool': 30695178240}
    """
    flops = {}
    for name in layer_names:
        seen, stack, total = set(), [model.get_layer(name)], 0
        while stack:
            layer = stack.pop()
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            total += _macs(layer)
            stack.extend(_parents(layer))
        flops[name] = 2 * total
    return flops


def gflops(flops: int | None) -> float:
    """FLOPs in billions to 4 significant digits, as the results table shows them; NaN for unknown (None)."""
    return math.nan if flops is None else float(f"{flops / 1e9:.4g}")
