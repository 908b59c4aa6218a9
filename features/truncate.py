"""One multi-output model for all selected layers, pooled inside the graph.

All selected layers come out of a single forward pass; pooling runs inside
the model so that only the small pooled arrays leave the accelerator.

Feature maps (height, width, channels) pool with `avg`, `max`, `flatten` or
`none`. The (tokens, width) outputs of a vision transformer's blocks
(`BackboneSpec.tokens`) pool with `cls` (the class token), `mean` (the patch
tokens' mean, class and register tokens excluded), `cls+mean` (both,
concatenated), `max`, `flatten` or `none`; `avg` on tokens is `mean` (the
average over the patch grid), and the key says `mean`.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from ..core.errors import BackboneError
from .layers import LayerInfo
from .registry import TOKEN_POOLINGS, TokenLayout

__all__ = [
    "POOLINGS",
    "DEFAULT_MAX_FLATTEN_DIM",
    "build_extractor",
    "pooled_shape",
    "per_layer_pooling",
]

POOLINGS = ("avg", "max", "flatten", "none", *TOKEN_POOLINGS)
DEFAULT_MAX_FLATTEN_DIM = 1 << 17


def _is_tokens(info: LayerInfo, tokens: TokenLayout | None) -> bool:
    return tokens is not None and len(info.output_shape) == 2


def _token_pooling(info: LayerInfo, value: str, tokens: TokenLayout | None, received) -> str:
    """`value` as it applies to `info`'s output: `avg` on tokens is `mean`; token poolings need tokens."""
    if _is_tokens(info, tokens):
        if value == "avg":
            return "mean"
        if value in ("cls", "cls+mean") and not tokens.class_token:
            raise BackboneError(
                f"Layer {info.name!r} has no class token (the model was built without one), so "
                f"pooling {value!r} has nothing to read. Use pooling='mean' (the patch tokens' mean), "
                f"'max' or 'none'. Received: pooling={received!r}"
            )
        return value
    if value in TOKEN_POOLINGS:
        raise BackboneError(
            f"Pooling {value!r} is for the (tokens, width) outputs of a vision transformer's blocks; "
            f"layer {info.name!r} outputs shape {tuple(info.output_shape)}. Use 'avg', 'max', 'flatten' "
            f"or 'none' here. Received: pooling={received!r}"
        )
    return value


def per_layer_pooling(
    layers: Sequence[LayerInfo], pooling: str | Mapping[str, str], tokens: TokenLayout | None = None
) -> dict[str, str]:
    """Pooling for each selected layer: one string for all, or a name -> pooling map.

    Args:
        layers: The selected layers.
        pooling: One of `POOLINGS` for all layers, or a layer name -> pooling map.
        tokens: The backbone's token layout (`BackboneSpec.tokens`) for a vision
            transformer, whose (tokens, width) outputs take the token poolings.

    Raises:
        BackboneError: For an unknown pooling, a map that misses a layer, a
            token pooling on a feature map, or `cls` without a class token.
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
        result[info.name] = _token_pooling(info, value, tokens, pooling[info.name])
    return result


def pooled_shape(
    info: LayerInfo,
    pooling: str,
    *,
    tokens: TokenLayout | None = None,
    max_flatten_dim: int = DEFAULT_MAX_FLATTEN_DIM,
) -> tuple:
    """Per-sample shape of a layer's features after pooling (`pooling` from `per_layer_pooling`).

    Raises:
        BackboneError: If `flatten` would give more than `max_flatten_dim` values.
    """
    shape = tuple(info.output_shape)
    if _is_tokens(info, tokens):
        if pooling == "none":
            return shape
        if pooling != "flatten":
            return (2 * shape[-1],) if pooling == "cls+mean" else (shape[-1],)
    elif pooling == "none" or len(shape) != 3:
        return shape
    elif pooling in ("avg", "max"):
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


def build_extractor(
    model, layers: Sequence[LayerInfo], pooling: Mapping[str, str], *, tokens: TokenLayout | None = None
):
    """A `keras.Model` with one float32 output per selected layer, pooled.

    Args:
        model: The backbone.
        layers: Selected layers (from `layerprobe.features.layers.resolve_layers`).
        pooling: Layer name -> one of `POOLINGS` (from `per_layer_pooling`).
        tokens: The backbone's token layout (`BackboneSpec.tokens`), for a
            vision transformer.

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
        elif _is_tokens(info, tokens) and mode in (*TOKEN_POOLINGS, "max", "flatten"):
            from .token_pooling import TokenPooling

            if mode == "flatten":
                x = pool_layers["flatten"](info.name)(x)
            else:
                x = TokenPooling(mode, tokens.prefix_tokens, name=f"{info.name}__{mode.replace('+', '_')}")(x)
        outputs.append(keras.ops.cast(x, "float32"))
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")
