"""Registry of pretrained backbones: one spec per `keras.applications` family.

A spec knows what belongs to a family's weights rather than to the caller:
the constructor, the matching `preprocess_input`, the default and minimum
input sizes, and how to find the outputs of its blocks/stages.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..core.checks import unknown_name_message
from ..core.errors import BackboneError

__all__ = [
    "BackboneSpec",
    "BACKBONES",
    "PREPROCESSING_MODES",
    "TOKEN_POOLINGS",
    "TokenLayout",
    "get_backbone_spec",
    "preprocessing_choices",
    "register_backbone",
    "rescale",
    "resolve_preprocessing",
]

# `preprocessing=` values besides the family names: "none", and the modes of
# keras.applications.imagenet_utils.preprocess_input.
PREPROCESSING_MODES = ("none", "caffe", "tf", "torch")


# Poolings of a transformer's (tokens, width) outputs (`layerprobe.features.truncate`),
# computed by `layerprobe.features.token_pooling.TokenPooling`.
TOKEN_POOLINGS = ("cls", "mean", "cls+mean")


@dataclass(frozen=True)
class TokenLayout:
    """How a vision transformer lays out the tokens of its (tokens, width) outputs.

    Attributes:
        prefix_tokens: Tokens before the patch tokens (the class token and any
            register tokens); `mean` pooling averages the tokens after them.
        class_token: Whether token 0 is a class token (what `cls` pooling reads).
    """

    prefix_tokens: int
    class_token: bool


@dataclass(frozen=True)
class BackboneSpec:
    """How to build and feed one backbone family.

    Attributes:
        name: Registry name, e.g. `"VGG16"`.
        constructor: Callable `(include_top, weights, input_shape, **kwargs)
            -> keras.Model`; a `keras.applications` function or your own.
        preprocess_module: Module holding `preprocess_input`, e.g.
            `"keras.applications.vgg16"`; `None` for models that take 0-255
            pixels and rescale inside (EfficientNet, ConvNeXt, MobileNetV3).
        default_input_size: Side of the input the weights were trained at.
        min_input_size: Smallest side the architecture accepts.
        stage_pattern: Regex of layer names that end a stage. `None` uses the
            generic rule of `layerprobe.features.layers` (last cut layer per resolution).
        preprocess_mode: A mode of `keras.applications.imagenet_utils.preprocess_input`
            (`"caffe"`, `"tf"`, `"torch"`) or `"none"` (pixels 0-255 as they are),
            used instead of `preprocess_module`; for models loaded from files.
        source: The `.keras` file a spec was made for (`layerprobe.features.model_files`),
            else None; messages point to it.
        rescaling: `(scale, offset)`, three floats each: `x * scale + offset` per
            channel on 0-255 pixels (a keras-hub image converter's rescaling), used
            instead of `preprocess_module` and `preprocess_mode`.
        tokens: For a vision transformer (`layerprobe.features.hub`), its token
            layout: its stages are its blocks, depth counts blocks, and token
            poolings (`cls`, `mean`) apply to its outputs. None for CNNs.
    """

    name: str
    constructor: Callable = field(repr=False)
    preprocess_module: str | None
    default_input_size: int = 224
    min_input_size: int = 32
    stage_pattern: str | None = None
    preprocess_mode: str | None = None
    source: str | None = None
    rescaling: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    tokens: TokenLayout | None = None

    def __post_init__(self):
        if self.preprocess_mode is not None and self.preprocess_mode not in PREPROCESSING_MODES:
            raise BackboneError(
                f"preprocess_mode must be one of {PREPROCESSING_MODES} (the modes of "
                f"keras.applications.imagenet_utils.preprocess_input, or 'none'). "
                f"Received: preprocess_mode={self.preprocess_mode!r}"
            )

    @property
    def preprocessing(self) -> str:
        """Stable name of the preprocessing, part of every cache key."""
        if self.rescaling is not None:
            scale, offset = (", ".join(f"{value:.9g}" for value in part) for part in self.rescaling)
            return f"x * [{scale}] + [{offset}]"
        if self.preprocess_mode == "none":
            return "none"
        if self.preprocess_mode is not None:
            return f"keras.applications.imagenet_utils.preprocess_input(mode={self.preprocess_mode!r})"
        if self.preprocess_module is None:
            return "none (rescaled inside the model)"
        return f"{self.preprocess_module}.preprocess_input"

    def preprocess_input(self, x):
        """Apply the family's `preprocess_input` to a float32 batch in 0-255.

        Keras modifies float numpy inputs in place; callers pass a batch they own.
        Takes numpy arrays and backend tensors alike.
        """
        if self.rescaling is not None:
            return rescale(x, self.rescaling)
        if self.preprocess_mode == "none":
            return x
        if self.preprocess_mode is not None:
            from keras.applications import imagenet_utils

            return imagenet_utils.preprocess_input(x, mode=self.preprocess_mode)
        if self.preprocess_module is None:
            return x
        return importlib.import_module(self.preprocess_module).preprocess_input(x)


def rescale(x, rescaling: tuple[tuple[float, ...], tuple[float, ...]]):
    """`x * scale + offset` per channel (last axis), in float32: a `BackboneSpec.rescaling`.

    Takes a numpy array (returns a new one) or a backend tensor (computed with `keras.ops`).
    """
    scale, offset = (np.asarray(part, dtype="float32") for part in rescaling)
    if isinstance(x, np.ndarray):
        return x * scale + offset
    import keras

    return keras.ops.add(keras.ops.multiply(x, scale), offset)


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add a backbone family to the registry (e.g. your own Keras model builder).

    Raises:
        BackboneError: If the name is taken and `overwrite` is false.
    """
    if spec.name in BACKBONES and not overwrite:
        raise BackboneError(
            f"A backbone named {spec.name!r} is already registered. Pass "
            f"overwrite=True to replace it. Received: spec={spec!r}"
        )
    BACKBONES[spec.name] = spec
    return spec


def get_backbone_spec(name: str) -> BackboneSpec:
    """Look up a backbone family by name (case-insensitive).

    Raises:
        BackboneError: For an unknown name, naming the closest valid one.
    """
    if name in BACKBONES:
        return BACKBONES[name]
    by_lower = {key.lower(): key for key in BACKBONES}
    if name.lower() in by_lower:
        return BACKBONES[by_lower[name.lower()]]
    raise BackboneError(unknown_name_message("backbone", name, BACKBONES, argument="model"))


def preprocessing_choices() -> list[str]:
    """Every valid `preprocessing=` value: `"none"`, the three modes, then the family names."""
    return [*PREPROCESSING_MODES, *BACKBONES]


def resolve_preprocessing(name: str) -> tuple[str | None, str | None]:
    """`(preprocess_module, preprocess_mode)` of a `preprocessing=` value, for a `BackboneSpec`.

    `"none"`, `"caffe"`, `"tf"` and `"torch"` are modes (case-insensitive); any
    other value is a family name (e.g. `"VGG16"`, `"MobileNetV2"`, case-insensitive)
    and means that family's `preprocess_input`.

    Raises:
        BackboneError: For anything else, listing the choices.
    """
    text = name.strip() if isinstance(name, str) else name
    if isinstance(text, str) and text.lower() in PREPROCESSING_MODES:
        return None, text.lower()
    if isinstance(text, str) and text:
        by_lower = {key.lower(): key for key in BACKBONES}
        if text.lower() in by_lower:
            spec = BACKBONES[by_lower[text.lower()]]
            return spec.preprocess_module, spec.preprocess_mode
    raise BackboneError(
        f"Unknown preprocessing {name!r}. Expected 'none' (pixels 0-255 as they are, for models that "
        f"rescale inside), a mode of keras.applications.imagenet_utils.preprocess_input ('caffe': BGR, "
        f"ImageNet mean subtracted; 'tf': scaled to [-1, 1]; 'torch': [0, 1] then ImageNet mean/std), "
        f"or a family name whose preprocess_input to use ({', '.join(BACKBONES)}). "
        f"Received: preprocessing={name!r}"
    )


def _application(function_name: str) -> Callable:
    """A lazy reference to `keras.applications.<function_name>` (no import at load)."""

    def build(**kwargs):
        import keras

        return getattr(keras.applications, function_name)(**kwargs)

    build.__name__ = function_name
    return build


def _register_keras_applications() -> None:
    # (names, preprocess module, default size, min size, stage pattern)
    families = [
        (["VGG16"], "vgg16", 224, 32, r"block\d+_pool$"),
        (["VGG19"], "vgg19", 224, 32, r"block\d+_pool$"),
        (["ResNet50"], "resnet50", 224, 32, None),
        (["ResNet101", "ResNet152"], "resnet", 224, 32, None),
        (["ResNet50V2", "ResNet101V2", "ResNet152V2"], "resnet_v2", 224, 32, None),
        (["InceptionV3"], "inception_v3", 299, 75, r"mixed\d+$"),
        (["InceptionResNetV2"], "inception_resnet_v2", 299, 75, None),
        (["Xception"], "xception", 299, 71, None),
        (["MobileNet"], "mobilenet", 224, 32, None),
        (["MobileNetV2"], "mobilenet_v2", 224, 32, None),
        (["MobileNetV3Small", "MobileNetV3Large"], None, 224, 32, None),
        (["DenseNet121", "DenseNet169", "DenseNet201"], "densenet", 224, 32, None),
        (["NASNetMobile"], "nasnet", 224, 32, None),
        (["NASNetLarge"], "nasnet", 331, 32, None),
        (["ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtXLarge"], None, 224, 32, None),
    ]
    efficientnet_sizes = {"B0": 224, "B1": 240, "B2": 260, "B3": 300, "B4": 380, "B5": 456, "B6": 528, "B7": 600}
    families += [([f"EfficientNet{v}"], None, size, 32, None) for v, size in efficientnet_sizes.items()]
    efficientnet_v2_sizes = {"B0": 224, "B1": 240, "B2": 260, "B3": 300, "S": 384, "M": 480, "L": 480}
    families += [([f"EfficientNetV2{v}"], None, size, 32, None) for v, size in efficientnet_v2_sizes.items()]
    for names, module, default_size, min_size, pattern in families:
        for name in names:
            register_backbone(
                BackboneSpec(
                    name=name,
                    constructor=_application(name),
                    preprocess_module=f"keras.applications.{module}" if module else None,
                    default_input_size=default_size,
                    min_input_size=min_size,
                    stage_pattern=pattern,
                )
            )


_register_keras_applications()
