"""Which backbone layers train, and how: unfreezing top blocks, per-block rates, BatchNorm momentum.

Blocks end at the stage outputs of `layerprobe.features.layers` (VGG's
`blockN_pool`, else the last layer at each resolution; a keras-hub vision
transformer's transformer blocks, `layerprobe.features.hub`). `unfreeze_top`
counts blocks down from the top, the layers above the last block (a
transformer's final norm) going with the top one; `block_lr_scales` gives each
unfrozen block below the top one a lower rate (the layer-wise decay of timm
and BEiT) for `BlockwiseAdam`.
"""

from __future__ import annotations

from typing import Any

import keras

from ...features.backbone import Backbone
from ...core.errors import BackboneError
from ...features.layers import describe_layers, resolve_layers
from ...features.registry import BackboneSpec
from .settings import unfreeze_blocks_problem

__all__ = ["backbone_model", "block_lr_scales", "set_batchnorm_momentum", "unfreeze_top"]


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> None:
    """Sets the moving-average momentum of every BatchNormalization layer (weights unchanged)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def backbone_model(model: Any) -> Any:
    """The backbone inside a classifier, or the model itself when it has no nested model.

    Raises:
        BackboneError: If the classifier nests more than one model.
    """
    if isinstance(model, Backbone):
        return model.model
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) > 1:
        raise BackboneError(
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
    problem = unfreeze_blocks_problem(blocks)
    if problem is not None:
        raise BackboneError(problem)
    if blocks == "all":
        return 0
    if isinstance(blocks, str):
        return resolve_layers(model, spec, [blocks.removeprefix("from:")])[0].index
    stages = _stage_ends(model, spec)
    if blocks > len(stages):
        raise BackboneError(
            f"{spec.name} has {len(stages)} blocks (stage outputs), so unfreeze_blocks must lie "
            f"in 0..{len(stages)}; use 'all' for the whole backbone or 'from:LAYER_NAME' for a "
            f"finer cut (`layerprobe layers {spec.name}` lists the layers). "
            f"Received: unfreeze_blocks={blocks!r}"
        )
    if blocks == 0:
        return len(model.layers)
    if spec.tokens is not None:  # a transformer's blocks are layers of their own; the embeddings are no block
        return stages[-blocks]
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
            output, i.e. the last N blocks (0: none; for a transformer its last
            N blocks and the final norm, never the embeddings); `"all"` the whole backbone;
            `"from:LAYER_NAME"` that layer and all above it (aliases such as
            `"from:stage4"` work too).

    Returns:
        Names of the backbone layers with weights that are now trainable.

    Raises:
        BackboneError: (a `ValueError`) For a malformed `blocks` or more blocks
            than the backbone has.
        UnknownLayerError: If `"from:LAYER_NAME"` names no layer; lists the closest.
    """
    backbone = backbone_model(model)
    first = _first_unfrozen(backbone, spec, blocks)
    backbone.trainable = True  # sets every layer; each is then set on its own
    unfrozen = []
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= first and not isinstance(layer, keras.layers.BatchNormalization)
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen


def block_lr_scales(model: Any, spec: BackboneSpec, decay: float) -> dict[str, float]:
    """`variable.path` -> rate factor of the trainable backbone variables below the top block.

    A layer `k` blocks below the top one (blocks end at the stage outputs, as in
    `unfreeze_top`) gets `decay**k`; the top block and the head are left out (factor 1).
    """
    if decay == 1:
        return {}
    backbone = backbone_model(model)
    ends = _stage_ends(backbone, spec)
    scales = {}
    for index, layer in enumerate(backbone.layers):
        below_top = max(0, sum(end >= index for end in ends) - 1)
        for variable in layer.trainable_weights if below_top else ():
            scales[variable.path] = decay**below_top
    return scales
