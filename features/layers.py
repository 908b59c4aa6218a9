"""Selectable intermediate layers of a backbone, and the selectors that name them.

A layer can be selected by:
  * its exact name (`"block3_pool"`, `"conv4_block6_out"`);
  * a stage alias that works across families: `"stages"` (every stage
    output, shallow to deep), `"stages:k"` (every k-th, counted down from the
    deepest, which is always in), `"stage3"` (the third), `"last:n"` (the
    last n stages), `"top"` (the last layer);
  * a relative depth, a float in [0, 1] (`0.5` or `"0.5"`): the cut layer
    nearest that fraction of the network's depth.

A vision transformer's (`BackboneSpec.tokens`, `layerprobe.features.hub`) stages
are its blocks, and its depth counts blocks: block k of n is at depth k/n,
the embeddings at 0 and the final norm (`"top"`) at 1; a depth selects the
nearest block.

Stage outputs come from the family's `stage_pattern` when it has one (VGG's
`blockN_pool`), else from a generic rule: the last *cut* layer (one through
which all information flows) at each spatial resolution, the same points
timm's `features_only` returns (the last layer before each spatial
downsampling). Models loaded from files (`layerprobe.features.model_files`)
use the generic rule; they are built at a fixed input size first, so that a
model saved with a flexible input has the same stages.

Keras gives unnamed layers auto-generated names (`activation_49`) that change
between instantiations; such layers are identified by position instead
(`layer#123`) in cache keys, see `stable_layer_id`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from .backend import inbound_layers
from ..core.checks import closest_names
from ..core.errors import UnknownLayerError
from .registry import BackboneSpec

__all__ = [
    "LayerInfo",
    "UnknownLayerError",
    "describe_layers",
    "resolve_layers",
    "stable_layer_id",
]

_AUTO_NAME = re.compile(r"^(?P<base>[a-z0-9_]+?)(_\d+)?$")
_SKIPPED_TYPES = ("InputLayer", "ZeroPadding2D")


@dataclass(frozen=True)
class LayerInfo:
    """One layer of a backbone as `layerprobe layers` shows it.

    Attributes:
        name: Keras layer name.
        index: Position in `model.layers`.
        output_shape: Output shape without the batch axis.
        is_cut: Whether all information flows through this layer.
        stage: 1-based stage number if the layer is a stage output, else None.
        stable_id: Identifier used in cache keys (name, or `layer#index`).
        kind: Layer class name, e.g. `"Conv2D"`.
        depth: Relative depth in [0, 1]: the layer's position over the last
            layer's, or for a vision transformer the blocks up to it over all blocks.
    """

    name: str
    index: int
    output_shape: tuple
    is_cut: bool
    stage: int | None
    stable_id: str
    kind: str
    depth: float = 0.0

    @property
    def is_candidate(self) -> bool:
        """Worth selecting by alias or depth: a spatial cut layer that is not
        padding, nor still an RGB image (the in-model rescaling layers)."""
        return (
            self.is_cut
            and self.kind not in _SKIPPED_TYPES
            and len(self.output_shape) == 3
            and self.output_shape[-1] != 3
        )

    @property
    def aliases(self) -> tuple[str, ...]:
        return (f"stage{self.stage}",) if self.stage is not None else ()


def _snake_case(name: str) -> str:
    """Keras's own rule for auto-generated names (`Conv2D` -> `conv2d`, `ReLU` -> `re_lu`)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def stable_layer_id(layer, index: int) -> str:
    """The layer's name, or `layer#<index>` when Keras generated the name."""
    match = _AUTO_NAME.match(layer.name)
    if match and match.group("base") == _snake_case(type(layer).__name__):
        return f"layer#{index}"
    return layer.name


def _cut_flags(model) -> list[bool]:
    """For each layer, whether no edge of the graph jumps over it."""
    position = {id(layer): i for i, layer in enumerate(model.layers)}
    last_consumer = list(range(len(model.layers)))
    for i, layer in enumerate(model.layers):
        for operation in inbound_layers(layer):
            parent = position.get(id(operation))
            if parent is not None:
                last_consumer[parent] = max(last_consumer[parent], i)
    flags, reach = [], 0  # reach: furthest consumer of any earlier layer
    for i in range(len(model.layers)):
        flags.append(reach <= i)
        reach = max(reach, last_consumer[i])
    return flags


def _stage_indices(spec: BackboneSpec, infos: Sequence[LayerInfo]) -> list[int]:
    if spec.stage_pattern is not None:
        pattern = re.compile(spec.stage_pattern)
        return [info.index for info in infos if pattern.search(info.name)]
    last_per_resolution: dict[tuple, int] = {}
    for info in infos:
        if info.is_candidate:
            last_per_resolution[info.output_shape[:2]] = info.index
    return sorted(last_per_resolution.values())


def describe_layers(model, spec: BackboneSpec) -> list[LayerInfo]:
    """Every layer of `model` (input excluded) with shape, cut flag and stage alias."""
    cut_flags = _cut_flags(model)
    infos = [
        LayerInfo(
            name=layer.name,
            index=i,
            output_shape=tuple(layer.output.shape[1:]),
            is_cut=cut_flags[i],
            stage=None,
            stable_id=stable_layer_id(layer, i),
            kind=type(layer).__name__,
        )
        for i, layer in enumerate(model.layers)
        if type(layer).__name__ != "InputLayer"
    ]
    ends = _stage_indices(spec, infos)
    stage_of = {index: number for number, index in enumerate(ends, start=1)}
    last = infos[-1].index if infos else 1

    def depth(index: int) -> float:
        if spec.tokens is not None and ends:
            return sum(end <= index for end in ends) / len(ends)
        return index / last

    return [dataclasses.replace(info, stage=stage_of.get(info.index), depth=depth(info.index)) for info in infos]


def _parse_depth(selector) -> float | None:
    if isinstance(selector, (int, float)) and not isinstance(selector, bool):
        return float(selector)
    try:
        return float(selector)
    except (TypeError, ValueError):
        return None


def _unknown(selector, infos: Sequence[LayerInfo], spec: BackboneSpec) -> UnknownLayerError:
    names = [info.name for info in infos]
    stage_count = sum(info.stage is not None for info in infos)
    aliases = ["stages", "stages:K", "last:N", "top"] + [f"stage{k}" for k in range(1, stage_count + 1)]
    close = closest_names(selector, names + aliases, n=5)
    hint = f" Closest valid names: {', '.join(close)}." if close else ""
    return UnknownLayerError(
        f"{spec.name} has no layer {selector!r}.{hint} Select a layer by exact name, "
        f"by alias ({', '.join(aliases)}), or by relative depth in [0, 1]; "
        f"`layerprobe layers {spec.source or spec.name}` lists them all. Received: layers={selector!r}"
    )


def resolve_layers(model, spec: BackboneSpec, selectors: Iterable) -> list[LayerInfo]:
    """Turn names, aliases and depths into layers, shallow to deep, without repeats.

    Raises:
        UnknownLayerError: A selector matches nothing; the message lists the
            closest valid names.
    """
    infos = describe_layers(model, spec)
    by_name = {info.name: info for info in infos}
    stages = [info for info in infos if info.stage is not None]
    if spec.tokens is not None and stages:  # depth counts blocks

        def nearest(info: LayerInfo, depth: float):
            return abs(info.stage - depth * len(stages)), -info.index

        cuts = stages
    else:

        def nearest(info: LayerInfo, depth: float):
            return abs(info.index - depth * infos[-1].index), -info.index

        cuts = [info for info in infos if info.is_candidate] or infos
    if isinstance(selectors, (str, float, int)):
        selectors = [selectors]
    chosen: dict[int, LayerInfo] = {}
    for selector in selectors:
        text = str(selector).strip()
        depth = _parse_depth(selector)
        if text in by_name:
            picked = [by_name[text]]
        elif text in ("stages", "blocks"):
            picked = stages
        elif re.fullmatch(r"(stages|blocks):[1-9]\d*", text):
            picked = stages[::-1][:: int(text.split(":")[1])][::-1]
        elif re.fullmatch(r"last:[1-9]\d*", text) and int(text[5:]) <= len(stages):
            picked = stages[-int(text[5:]) :]
        elif text == "top":
            picked = [infos[-1]]
        elif re.fullmatch(r"stage\d+", text) and 1 <= int(text[5:]) <= len(stages):
            picked = [stages[int(text[5:]) - 1]]
        elif depth is not None and 0.0 <= depth <= 1.0:
            picked = [min(cuts, key=lambda info: nearest(info, depth))]
        else:
            raise _unknown(selector, infos, spec)
        chosen.update((info.index, info) for info in picked)
    if not chosen:
        raise UnknownLayerError(
            f"No layers selected for {spec.name}. Pass at least one layer name, alias or depth. "
            f"Received: layers={list(selectors)!r}"
        )
    return [chosen[index] for index in sorted(chosen)]
