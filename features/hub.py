"""keras-hub vision transformers as backbones (layerprobe's `[hub]` extra).

`model` names a keras-hub backbone in one of three ways:

* `"keras_hub:DINOV2Backbone"`: the class, built from `model_kwargs` with
  random weights drawn from `seed` (or a weights file saved from it);
* `"keras_hub:preset:dinov2_small"`: a preset with its weights, by built-in
  name or handle (`kaggle://...`, `hf://...`), downloaded once by keras-hub;
* a local preset folder (`"path/to/dinov2_small"`, holding keras-hub's
  `config.json`), also as `"keras_hub:preset:path/to/folder"`.

**Blocks.** keras-hub runs a transformer's blocks inside one encoder layer, so
its graph has no block output to tap. `open_hub_model` rebuilds it as a
functional model of copies of the same layers with their weights:
`embeddings`, `block1` ... `blockN`, `final_norm` (plus ViT's
`embeddings_dropout`). One forward pass gives every block's (tokens, width)
output, and the top one equals the keras-hub backbone's output. The spec's
stages are the blocks and its `TokenLayout` says which tokens are the class
and register tokens (`layerprobe.features.layers`, `layerprobe.features.truncate`).

**Preprocessing.** A preset's image converter rescales pixels, `x * scale +
offset` per channel; that is the spec's `rescaling` unless `preprocessing=`
names another (`"tf"`, `"torch"`, a family name...). Images are resized by
layerprobe's loader (bilinear, to a square, no centre crop), not by the
converter. A class built from `model_kwargs` has no converter; it defaults to
`"tf"` (pixels scaled to [-1, 1]).

**Identity.** The cache key's architecture is the class name and a digest of
its config (`DINOV2Backbone@1a2b3c4d5e6f`), its weights digest the values of
the weights (`layerprobe.features.backbone`), as for model files.

Supported classes: `ViTBackbone` and `DINOV2Backbone` (`HUB_CLASSES`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backend import import_keras_quietly, load_weights_strictly
from ..core.checks import unknown_name_message
from ..core.errors import BackboneError, WeightsUnavailableError
from .registry import BackboneSpec, TokenLayout, resolve_preprocessing
from .seeding import keras_seed

__all__ = ["HUB_CLASSES", "HUB_PREFIX", "HubModel", "hub_preset_files", "is_hub_model", "open_hub_model"]

HUB_PREFIX = "keras_hub:"
_PRESET_PREFIX = HUB_PREFIX + "preset:"
_PRESET_CONFIG = "config.json"  # keras-hub's preset_utils.CONFIG_FILE
_CLASS_DEFAULT_SIZE = 224
_CLASS_DEFAULT_PREPROCESSING = "tf"
_INSTALL = "pip install 'layerprobe[hub]' (or pip install keras-hub)"


def is_hub_model(model: Any) -> bool:
    """Whether a `model` argument names a keras-hub backbone: `keras_hub:...` or a preset folder."""
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        return False
    return model.startswith(HUB_PREFIX) or (Path(model).expanduser() / _PRESET_CONFIG).is_file()


def _preset_of(model: str) -> str | None:
    """The preset a hub `model` names (name, handle or folder), or None for a class."""
    if model.startswith(_PRESET_PREFIX):
        return model[len(_PRESET_PREFIX):]
    if model.startswith(HUB_PREFIX):
        return None
    return str(Path(model).expanduser().resolve())


def hub_preset_files(model: Any) -> list[Path]:
    """The files of a local preset folder that `model` names (for plan signatures); [] for anything else."""
    if not is_hub_model(model):
        return []
    preset = _preset_of(os.fspath(model))
    folder = None if preset is None else Path(preset).expanduser()
    if folder is None or not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_file())


@dataclass(frozen=True)
class _Parts:
    """A keras-hub transformer cut into the layers the functional rebuild calls in order."""

    embeddings: Any
    after_embeddings: tuple  # (name, layer) pairs between embeddings and the first block
    blocks: tuple
    final_norm: Any
    tokens: TokenLayout


def _vit_parts(backbone) -> _Parts:
    encoder = backbone.get_layer("vit_encoder")
    class_token = bool(backbone.use_class_token)
    return _Parts(
        embeddings=backbone.get_layer("vit_patching_and_embedding"),
        after_embeddings=(("embeddings_dropout", encoder.dropout),),
        blocks=tuple(encoder.encoder_layers),
        final_norm=encoder.layer_norm,
        tokens=TokenLayout(prefix_tokens=int(class_token), class_token=class_token),
    )


def _dinov2_parts(backbone) -> _Parts:
    return _Parts(
        embeddings=backbone.embeddings,
        after_embeddings=(),
        blocks=tuple(backbone.encoder.layers),
        final_norm=backbone.layernorm,
        tokens=TokenLayout(prefix_tokens=1 + int(backbone.num_register_tokens), class_token=True),
    )


HUB_CLASSES: Mapping[str, Callable[[Any], _Parts]] = {"ViTBackbone": _vit_parts, "DINOV2Backbone": _dinov2_parts}
"""keras-hub backbone classes layerprobe can cut into blocks, and how."""


@dataclass(frozen=True, eq=False)
class HubModel:
    """A keras-hub transformer rebuilt block by block, with what identifies it.

    Attributes:
        model: The functional rebuild (`embeddings`, `block1`... `final_norm`).
        spec: Its spec: blocks as stages, token layout, preprocessing.
        input_size: Side of the square input it was built for.
        weights: `"preset"` (the preset's own), None (random init) or a weights file.
    """

    model: Any
    spec: BackboneSpec
    input_size: int
    weights: str | None


def _import_keras_hub(model: str):
    import_keras_quietly()
    try:
        import keras_hub
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] != "keras_hub":
            raise
        raise BackboneError(
            f"{model!r} is a keras-hub model, and keras-hub is not installed: it is an extra of layerprobe. "
            f"Install it with {_INSTALL}. Received: model={model!r}"
        ) from None
    return keras_hub


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _hub_class(keras_hub, name: str, model: str):
    if name not in HUB_CLASSES:
        other = name in dir(keras_hub.models)
        raise BackboneError(
            (f"keras-hub's {name} is not one of the vision transformers layerprobe cuts into blocks. "
             if other else f"keras-hub has no backbone class {name!r} that layerprobe cuts into blocks. ")
            + f"Use one of {', '.join(f'{HUB_PREFIX}{cls}' for cls in HUB_CLASSES)}, or a preset of one "
            f"({_PRESET_PREFIX}NAME). Received: model={model!r}"
        )
    return getattr(keras_hub.models, name)


def _offline_error(preset: str, keras_hub, error: BaseException, model: str) -> WeightsUnavailableError:
    handle = keras_hub.models.Backbone.presets.get(preset, {}).get("kaggle_handle", preset)
    download = (
        f"python -c \"import kagglehub; print(kagglehub.model_download('{handle.removeprefix('kaggle://')}'))\""
        if handle.startswith("kaggle://")
        else f"python -c \"import keras_hub; keras_hub.models.Backbone.from_preset('{preset}')\""
    )
    return WeightsUnavailableError(
        f"Could not download the keras-hub preset {preset!r} ({handle}; no network?): {_first_line(error)}. "
        f"On a machine with internet run {download}, copy the folder it downloads (config.json, "
        f"model.weights.h5, image_converter.json) here and pass it as model = \"path/to/folder\", or use "
        f"{HUB_PREFIX}CLASS with weights='none' for a random initialisation. Received: model={model!r}"
    )


def _from_preset(keras_hub, preset: str, model: str, *, load_weights: bool, kwargs: dict):
    """`keras_hub.models.Backbone.from_preset`, with one-line errors for an unknown preset and no network."""
    try:
        return keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights, **kwargs)
    except (ValueError, TypeError) as error:
        if "Unknown preset identifier" in str(error):
            presets = sorted(keras_hub.models.Backbone.presets)
            raise BackboneError(
                unknown_name_message("keras-hub preset", preset, presets, argument="model").rstrip(".")
                + f", or the path of a local preset folder (holding {_PRESET_CONFIG}). Received: model={model!r}"
            ) from error
        raise BackboneError(
            f"keras-hub could not build the preset {preset!r}: {_first_line(error)}. Check model_kwargs and "
            f"input_size (a patch size must divide it). Received: model={model!r}, kwargs={kwargs!r}"
        ) from error
    except FileNotFoundError as error:
        raise BackboneError(
            f"The keras-hub preset {preset!r} is incomplete: {_first_line(error)}. A preset folder holds "
            f"{_PRESET_CONFIG} and model.weights.h5 (and image_converter.json). Received: model={model!r}"
        ) from error
    except Exception as error:  # kagglehub and requests raise their own errors when offline
        raise _offline_error(preset, keras_hub, error, model) from error


def _converter_rescaling(keras_hub, preset: str, model: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`(scale, offset)` per channel of the preset's image converter."""
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except FileNotFoundError as error:
        raise BackboneError(
            f"The keras-hub preset {preset!r} has no image converter ({_first_line(error)}), so its "
            f"preprocessing is unknown. Pass preprocessing= one of 'none', 'tf' ([-1, 1]), 'torch' (ImageNet "
            f"mean/std) or a family name. Received: model={model!r}, preprocessing=None"
        ) from error

    def per_channel(value, default: float) -> tuple[float, ...]:
        if value is None:
            return (default,) * 3
        values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        return tuple(values * 3) if len(values) == 1 else tuple(values)

    return per_channel(converter.scale, 1.0), per_channel(converter.offset, 0.0)


def _architecture_name(backbone) -> str:
    """`ClassName@<12 hex of the config digest>`; the name and dtype policy are not architecture."""
    config = {key: value for key, value in backbone.get_config().items() if key not in ("name", "dtype")}
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=repr)
    return f"{type(backbone).__name__}@{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def _copy(layer, name: str):
    """A fresh layer of `layer`'s class and config under `name` (weights set after it is built).

    Config entries that neither the class nor `keras.layers.Layer` take are dropped, here
    and in the copy's own `get_config` (so that a saved model loads again): some keras-hub
    layers report derived values (ViT's `num_patches`) they cannot be built from.
    """
    import keras

    accepted = {*inspect.signature(type(layer).__init__).parameters,
                *inspect.signature(keras.layers.Layer.__init__).parameters}
    config = {key: value for key, value in layer.get_config().items() if key in accepted}
    config["name"] = name
    copy = type(layer).from_config(config)
    reported = copy.get_config
    copy.get_config = lambda: {key: value for key, value in reported().items() if key in accepted}
    return copy


def _rebuild(backbone, parts: _Parts, size: int):
    """The functional block-by-block model of `backbone`, sharing nothing with it."""
    import keras

    pairs = [(parts.embeddings, "embeddings"), *((layer, name) for name, layer in parts.after_embeddings)]
    pairs += [(block, f"block{k}") for k, block in enumerate(parts.blocks, start=1)]
    pairs.append((parts.final_norm, "final_norm"))
    n_weights = sum(len(layer.weights) for layer, _ in pairs)
    if n_weights != len(backbone.weights):
        raise RuntimeError(
            f"layerprobe found {n_weights} of the {len(backbone.weights)} weights of {type(backbone).__name__} "
            f"in its embeddings, blocks and final norm: this keras-hub version lays it out otherwise. "
            f"Report it at layerprobe's tracker with your keras-hub version."
        )
    inputs = keras.Input((size, size, 3), name="images")
    x, copies = inputs, []
    for layer, name in pairs:
        copy = _copy(layer, name)
        x = copy(x)
        copies.append((layer, copy))
    rebuilt = keras.Model(inputs, x, name=re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", type(backbone).__name__).lower())
    for layer, copy in copies:
        copy.set_weights(layer.get_weights())
    return rebuilt, copies


def _load_weights_file(rebuilt, backbone, copies, weights: str) -> None:
    """Load a weights file saved from the rebuilt model (layerprobe's `Backbone.model`, e.g. a finetuned
    or source network) or, failing that, from the keras-hub model itself (`backbone.save_weights`)."""
    try:
        load_weights_strictly(rebuilt, weights)
        return
    except Exception as error:
        first_error = error
    try:
        load_weights_strictly(backbone, weights)
    except Exception:
        raise WeightsUnavailableError(
            f"Could not load weights from {weights} into {type(backbone).__name__}: {_first_line(first_error)}. "
            f"The file must hold this architecture's weights, saved from layerprobe's Backbone.model or from the "
            f"keras-hub model (save_weights). Received: weights={weights!r}"
        ) from first_error
    for layer, copy in copies:
        copy.set_weights(layer.get_weights())


def _check_size(input_size: int | None, model_kwargs: Mapping[str, Any], model: str) -> int | None:
    if "image_shape" in model_kwargs:
        raise BackboneError(
            f"model_kwargs must not set image_shape: layerprobe builds the model for input_size (square RGB). "
            f"Pass input_size instead. Received: model_kwargs={dict(model_kwargs)!r}"
        )
    if input_size is None:
        return None
    if not (isinstance(input_size, int) and not isinstance(input_size, bool) and input_size >= 1):
        raise BackboneError(f"input_size must be a whole number of pixels >= 1. Received: input_size={input_size!r}")
    return input_size


def open_hub_model(
    model: str | os.PathLike,
    *,
    weights: str | None,
    input_size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    preprocessing: str | None = None,
    seed: int = 0,
) -> HubModel:
    """Build a keras-hub transformer and rebuild it block by block.

    Args:
        model: `"keras_hub:CLASS"`, `"keras_hub:preset:NAME"` or a local preset folder.
        weights: For a preset, `"imagenet"` or `"saved"` (its own weights), None
            (random init of its architecture from `seed`) or a weights file; for a
            class, None or a weights file of that architecture.
        input_size: Square input side; default: the preset's, else 224.
        model_kwargs: Constructor arguments of the class (for a preset: config
            values to override); not `image_shape`, which `input_size` sets.
        preprocessing: A `preprocessing=` value (`"none"`, `"tf"`, `"torch"`,
            `"caffe"` or a family name) instead of the preset's image converter.
        seed: Seed of the random initialisation.

    Returns:
        A `HubModel`.

    Raises:
        BackboneError: keras-hub not installed, an unknown class or preset, a
            class layerprobe cannot cut into blocks, arguments keras-hub refuses,
            or a preset without an image converter and no `preprocessing`.
        WeightsUnavailableError: A preset that cannot be downloaded (offline),
            `weights="imagenet"` for a class, or a weights file that does not fit.
    """
    model = os.fspath(model)
    keras_hub = _import_keras_hub(model)
    kwargs = dict(model_kwargs or {})
    size = _check_size(input_size, kwargs, model)
    preset = _preset_of(model)
    chosen = None if preprocessing is None else resolve_preprocessing(preprocessing)
    if preset is None and weights in ("imagenet", "saved"):
        raise WeightsUnavailableError(
            f"{model} is a keras-hub class built from model_kwargs: it has no pretrained weights. Use "
            f"weights='none' (random init) or a weights file, or a preset ({_PRESET_PREFIX}NAME, e.g. "
            f"{_PRESET_PREFIX}dinov2_small) for pretrained ones. Received: weights={weights!r}"
        )
    with keras_seed(seed):
        if preset is None:
            cls = _hub_class(keras_hub, model[len(HUB_PREFIX):], model)
            try:
                backbone = cls(image_shape=(size or _CLASS_DEFAULT_SIZE,) * 2 + (3,), **kwargs)
            except (TypeError, ValueError) as error:
                raise BackboneError(
                    f"keras-hub could not build {cls.__name__}: {_first_line(error)}. Pass its constructor "
                    f"arguments as model_kwargs (e.g. patch_size, num_layers, hidden_dim, num_heads) and an "
                    f"input_size the patch size divides. Received: model_kwargs={kwargs!r}, input_size={size!r}"
                ) from error
        else:
            extra = {**kwargs, **({"image_shape": (size, size, 3)} if size else {})}
            backbone = _from_preset(keras_hub, preset, model, load_weights=weights in ("imagenet", "saved"),
                                    kwargs=extra)
            if type(backbone).__name__ not in HUB_CLASSES:
                raise BackboneError(
                    f"The preset {preset!r} is a {type(backbone).__name__}; layerprobe cuts these keras-hub "
                    f"vision transformers into blocks: {', '.join(HUB_CLASSES)}. Received: model={model!r}"
                )
        parts = HUB_CLASSES[type(backbone).__name__](backbone)
        built_size = int(backbone.image_shape[0])
        rebuilt, copies = _rebuild(backbone, parts, built_size)
        if weights not in (None, "imagenet", "saved"):
            _load_weights_file(rebuilt, backbone, copies, weights)
    if chosen is None and preset is None:
        chosen = resolve_preprocessing(_CLASS_DEFAULT_PREPROCESSING)
    rescaling = _converter_rescaling(keras_hub, preset, model) if chosen is None else None
    module, mode = chosen if chosen is not None else (None, None)
    spec = BackboneSpec(
        name=_architecture_name(backbone),
        constructor=_not_a_constructor,
        preprocess_module=module,
        preprocess_mode=mode,
        default_input_size=built_size,
        min_input_size=1,
        stage_pattern=r"^block\d+$",
        source=model,
        rescaling=rescaling,
        tokens=parts.tokens,
    )
    return HubModel(
        model=rebuilt,
        spec=spec,
        input_size=built_size,
        weights="preset" if weights in ("imagenet", "saved") else weights,
    )


def _not_a_constructor(**kwargs):
    raise BackboneError(
        "A BackboneSpec made for a keras-hub model has no constructor: load it with "
        "layerprobe.features.backbone.load_backbone('keras_hub:...'). Received: a call of its constructor"
    )
