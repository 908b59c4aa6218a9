"""One multi-output model for all selected layers, pooled inside the graph.

All selected layers come out of a single forward pass; pooling runs inside
the model so that only the small pooled arrays leave the accelerator.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from .core.errors import BackboneError
from .layers import LayerInfo

__all__ = ["POOLINGS", "DEFAULT_MAX_FLATTEN_DIM", "build_extractor", "pooled_shape", "per_layer_pooling"]

POOLINGS = ("avg", "max", "flatten", "none")
DEFAULT_MAX_FLATTEN_DIM = 1 << 17


def per_layer_pooling(layers: Sequence[LayerInfo], pooling: str | Mapping[str, str]) -> dict[str, str]:
    """Pooling for each selected layer: one string for all, or a name -> pooling map.

    Raises:
        BackboneError: For an unknown pooling, or a map that misses a layer.
    """
    if isinstance(pooling, str):
        pooling = {info.name: pooling for info in layers}
    result = {}
    for info in layers:
        if info.name not in pooling:
            raise BackboneError(
                f"No pooling given for layer {info.name!r}. Give one pooling for all layers "
                f"(e.g. pooling='avg') or an entry for every layer. Received: pooling={dict(pooling)!r}"
            )
        value = str(pooling[info.name]).lower()
        if value not in POOLINGS:
            raise BackboneError(
                f"Unknown pooling {value!r} for layer {info.name!r}. Expected one of {POOLINGS}. "
                f"Received: pooling={pooling[info.name]!r}"
            )
        result[info.name] = value
    return result


def pooled_shape(info: LayerInfo, pooling: str, *, max_flatten_dim: int = DEFAULT_MAX_FLATTEN_DIM) -> tuple:
    """Per-sample shape of a layer's features after pooling.

    Raises:
        BackboneError: If `flatten` would give more than `max_flatten_dim` values.
    """
    shape = tuple(info.output_shape)
    if pooling == "none" or len(shape) != 3:
        return shape
    if pooling in ("avg", "max"):
        return (shape[-1],)
    size = math.prod(shape)
    if size > max_flatten_dim:
        raise BackboneError(
            f"Flattening layer {info.name!r} gives {size:,} values per image "
            f"({'x'.join(map(str, shape))}), more than max_flatten_dim={max_flatten_dim:,} "
            f"({size * 4 / 2**20:.1f} MiB per image in float32). Use pooling='avg' or 'max', "
            f"a deeper layer, a smaller input size, or raise the limit (max_flatten_dim=N in the Python API, "
            f"--max-flatten-dim N for `layerprobe extract`). "
            f"Received: pooling='flatten'"
        )
    return (size,)


def build_extractor(model, layers: Sequence[LayerInfo], pooling: Mapping[str, str]):
    """A `keras.Model` with one float32 output per selected layer, pooled.

    Args:
        model: The backbone.
        layers: Selected layers (from `layerprobe.features.layers.resolve_layers`).
        pooling: Layer name -> one of `POOLINGS` (from `per_layer_pooling`).

    Returns:
        A model mapping images to a list of arrays, in the order of `layers`.
    """
    import keras

    pool_layers = {
        "avg": lambda name: keras.layers.GlobalAveragePooling2D(name=f"{name}__avg"),
        "max": lambda name: keras.layers.GlobalMaxPooling2D(name=f"{name}__max"),
        "flatten": lambda name: keras.layers.Flatten(name=f"{name}__flatten"),
    }
    outputs = []
    for info in layers:
        x = model.get_layer(info.name).output
        mode = pooling[info.name]
        if mode in pool_layers and len(x.shape) == 4:
            x = pool_layers[mode](info.name)(x)
        outputs.append(keras.ops.cast(x, "float32"))
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")
