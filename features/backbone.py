"""Build a backbone with its weights, and identify those weights by content.

`weights` is one of:
  * `"imagenet"`: Keras downloads the file once into `$KERAS_HOME/models`;
  * `None` (or `"none"`, `"random"`): random Glorot/He initialisation from `seed`;
  * a path to a Keras 3 `.weights.h5` file or a legacy by-layer `.h5` file as
    the Keras applications publish them;
  * `"saved"`, for a model file: the weights saved in it.

`model` is a registry name, a `BackboneSpec`, the path of a saved Keras
model (`.keras`), loaded by `layerprobe.features.model_files`, or a keras-hub
vision transformer (`"keras_hub:CLASS"`, `"keras_hub:preset:NAME"` or a preset
folder), loaded by `layerprobe.features.hub`.

The digest that goes into cache keys is the sha256 of the weights file when
there is one, else of the weight values themselves, so two runs that use the
same numbers share features and any change of numbers is a cache miss.
"""

from __future__ import annotations

import hashlib
import operator
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .backend import import_keras_quietly, load_weights_strictly
from ..core.digests import arrays_digest, file_digest
from ..core.errors import BackboneError, WeightsUnavailableError
from ..core.files import file_kind
from .hub import is_hub_model, open_hub_model
from .model_files import SAVED_WEIGHTS, is_model_file, open_model_file
from .registry import (
    BACKBONES,
    BackboneSpec,
    get_backbone_spec,
    preprocessing_choices,
    resolve_preprocessing,
)
from .seeding import keras_seed

__all__ = ["Backbone", "WeightsUnavailableError", "load_backbone", "parse_weights", "values_digest"]


@dataclass(frozen=True, eq=False)
class Backbone:
    """A built backbone and everything that identifies its outputs.

    Attributes:
        spec: The family spec (preprocessing, sizes, stage rule).
        model: The headless `keras.Model` (`include_top=False`), or a model
            file's backbone part (`layerprobe.features.model_files`).
        input_size: Side of the square input it was built for.
        weights: What the user asked for (`"imagenet"`, `None` or a path; for a
            model file `"saved"`, `None` or a path; for a keras-hub preset `"preset"`).
        weights_digest: `"sha256:..."` of the weights file or values; for a model
            file, of its architecture and weight values together.
        model_kwargs: Extra constructor arguments (e.g. `{"alpha": 0.35}`).
    """

    spec: BackboneSpec
    model: Any = field(repr=False)
    input_size: int
    weights: str | None
    weights_digest: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        """Family name plus constructor arguments, e.g. `MobileNetV2(alpha=0.35)`."""
        if not self.model_kwargs:
            return self.spec.name
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.model_kwargs.items()))
        return f"{self.spec.name}({args})"


_TOP_ARGUMENTS = frozenset({"input_tensor", "pooling", "classes", "classifier_activation", "name"})


def _architecture_arguments(spec: BackboneSpec) -> list[str] | None:
    """The model_kwargs a registry family takes (its constructor's arguments less layerprobe's and the top's),
    or None when its constructor does not say (it takes **kwargs)."""
    import inspect

    import keras

    function = getattr(keras.applications, spec.constructor.__name__, spec.constructor)
    parameters = inspect.signature(function).parameters.values()
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return None
    taken = {"include_top", "weights", "input_shape"} | _TOP_ARGUMENTS
    return [parameter.name for parameter in parameters if parameter.name not in taken]


def values_digest(model) -> str:
    """sha256 over every weight's dtype, shape and values, in model order (see `digests.arrays_digest`)."""
    return arrays_digest(np.asarray(variable) for variable in model.weights)


def parse_weights(weights: str | os.PathLike | None) -> str | None:
    """What a `weights` argument asks for: `"imagenet"`, `"saved"` (a model file's own),
    None (random init) or a file path.

    `"imagenet"`, `"saved"`, `"none"` and `"random"` are matched case-insensitively;
    any other text is a path, returned as given (unchecked).

    Raises:
        BackboneError: For an empty string.
    """
    if weights is None:
        return None
    text = os.fspath(weights)
    if not text:
        raise BackboneError(
            "weights is empty. Pass 'imagenet', 'none' for random initialisation, or the path of "
            "a .weights.h5/.h5 file. Received: weights=''"
        )
    if text.lower() in ("none", "random"):
        return None
    return text.lower() if text.lower() in ("imagenet", SAVED_WEIGHTS) else text


def _resolve_weights(weights: str | os.PathLike | None) -> str | None:
    text = parse_weights(weights)
    if text in (None, "imagenet", SAVED_WEIGHTS):
        return text
    path = Path(text).expanduser()
    if not path.is_file():
        found = f"{path} is {file_kind(path.stat().st_mode)}, not a regular file" if path.exists() else \
            f"Weights file not found: {path}"
        raise WeightsUnavailableError(
            f"{found}. Pass weights='imagenet', weights=None "
            f"for random initialisation, or the path of an existing .weights.h5/.h5 file. "
            f"Received: weights={text!r}"
        )
    return str(path.resolve())


def _check_input_size(spec: BackboneSpec, input_size: int | None) -> int:
    if input_size is None:
        return spec.default_input_size
    try:
        size = operator.index(input_size)
    except TypeError:
        raise BackboneError(
            f"input_size must be a whole number of pixels, e.g. {spec.default_input_size} "
            f"({spec.name}'s default). Received: input_size={input_size!r}"
        ) from None
    if size < spec.min_input_size:
        raise BackboneError(
            f"input_size={size} is below the minimum of {spec.min_input_size} pixels "
            f"that {spec.name} accepts. Use input_size >= {spec.min_input_size} "
            f"(images are resized to it; {spec.name}'s default is {spec.default_input_size}). "
            f"Received: input_size={input_size!r}"
        )
    return size


def _offline_error(spec: BackboneSpec, error: Exception) -> WeightsUnavailableError:
    match = re.search(r"URL fetch failure on (\S+):", str(error))
    url = match.group(1) if match else "the Keras applications weights URL"
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    return WeightsUnavailableError(
        f"Could not download the ImageNet weights of {spec.name} (no network?): {error}. "
        f"Either fetch {url} on a machine with internet and put it in {cache}, "
        f"or pass a local weights file with weights='/path/to/file.weights.h5' "
        f"(CLI: --weights PATH), or use weights=None for random initialisation. "
        f"Received: weights='imagenet'"
    )


def _load_file(model, weights, input_size, model_kwargs, preprocessing, seed) -> Backbone:
    if model_kwargs:
        raise BackboneError(
            f"model_kwargs are constructor arguments of a registry family; {os.fspath(model)} is a saved "
            f"model, built as saved. Leave model_kwargs empty. Received: model_kwargs={dict(model_kwargs)!r}"
        )
    resolved = _resolve_weights(weights)
    # A file carries its weights: the default "imagenet" means them too.
    resolved = SAVED_WEIGHTS if resolved == "imagenet" else resolved
    return _file_backbone(model, weights=resolved, input_size=input_size, preprocessing=preprocessing, seed=seed)


def load_backbone(
    model: str | os.PathLike | BackboneSpec,
    *,
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    preprocessing: str | None = None,
    seed: int = 0,
) -> Backbone:
    """Build a headless backbone (`include_top=False`) with the given weights, or load a model file.

    Args:
        model: Registry name (e.g. `"ResNet50"`), a `BackboneSpec`, the path
            of a Keras model saved with `model.save` (`"path/to/model.keras"`,
            see `layerprobe.features.model_files`), or a keras-hub transformer
            (`"keras_hub:DINOV2Backbone"`, `"keras_hub:preset:dinov2_small"`, a
            preset folder; see `layerprobe.features.hub`).
        weights: `"imagenet"`, `None` (random init from `seed`) or a file path;
            for a model file, `"saved"` (its own weights; the default
            `"imagenet"` means the same), None or a weights file.
        input_size: Square input side; defaults to the family's default (for a
            model file: its metadata's, its fixed input size, else 224).
        model_kwargs: Extra constructor arguments, e.g. `{"alpha": 0.35}`.
        preprocessing: For a model file or keras-hub model only: `"none"`,
            `"caffe"`, `"tf"`, `"torch"` or a family name; None takes it from
            layerprobe's metadata or the model's graph (a preset: its image converter). A family's preprocessing belongs to
            its weights and is not changed.
        seed: Seed of the random initialisation (used when `weights=None`).

    Returns:
        A `Backbone` holding the model and its weights digest.

    Raises:
        BackboneError: Unknown model name, empty `weights`, model_kwargs the
            constructor does not take, an input size that is not a whole number
            or is below the family minimum, or (model files) an unloadable or
            subclassed model or unknown preprocessing.
        WeightsUnavailableError: ImageNet weights cannot be downloaded, the
            file is missing, or the file does not fit the architecture.
    """
    import_keras_quietly()
    if not isinstance(model, BackboneSpec) and is_hub_model(model):
        return _hub_backbone(model, weights, input_size, model_kwargs, preprocessing, seed)
    if not isinstance(model, BackboneSpec) and is_model_file(model):
        return _load_file(model, weights, input_size, model_kwargs, preprocessing, seed)
    spec = model if isinstance(model, BackboneSpec) else get_backbone_spec(model)
    if preprocessing is not None:
        raise BackboneError(
            f"preprocessing is chosen for model files; {spec.name}'s preprocessing belongs to its weights "
            f"({spec.preprocessing}). Leave it out, or save your model and pass its .keras file. "
            f"Received: preprocessing={preprocessing!r}"
        )
    size = _check_input_size(spec, input_size)
    resolved = _resolve_weights(weights)
    if resolved == SAVED_WEIGHTS:
        raise BackboneError(
            f"weights='saved' means the weights inside a model file, but {spec.name} is built from "
            f"keras.applications. Pass 'imagenet', 'none' or a weights file. Received: weights={weights!r}"
        )
    kwargs = dict(model_kwargs or {})
    reserved = sorted({"include_top", "weights", "input_shape"} & set(kwargs))
    if reserved:
        raise BackboneError(
            f"model_kwargs must not set {reserved}: layerprobe sets them (use the weights and "
            f"input_size arguments). Received: model_kwargs={kwargs!r}"
        )
    # Arguments of the classification top layerprobe leaves out, which Keras accepts and ignores (or, for
    # pooling, adds a layer layerprobe's own pooling replaces): refused rather than silently ignored.
    ignored = sorted(_TOP_ARGUMENTS & set(kwargs))
    if ignored:
        valid = _architecture_arguments(spec)
        takes = ("the keyword arguments of its constructor" if valid is None
                 else f"only these model_kwargs: {valid}" if valid else "no model_kwargs")
        raise BackboneError(
            f"model_kwargs must not set {ignored}: layerprobe sets them, or they act only on the classification "
            f"top it leaves out (pooling is layerprobe's `pooling` argument, [features] pooling in a config). "
            f"{spec.name} takes {takes}. Received: model_kwargs={kwargs!r}"
        )
    build_args = dict(include_top=False, input_shape=(size, size, 3), **kwargs)
    with keras_seed(seed):
        try:
            keras_model = spec.constructor(weights=resolved if resolved == "imagenet" else None, **build_args)
        except TypeError as error:
            raise BackboneError(
                f"{spec.name} does not accept these model_kwargs: {error}. Pass only keyword arguments "
                f"of its constructor (e.g. alpha for MobileNetV2). Received: model_kwargs={kwargs!r}"
            ) from error
        except Exception as error:  # Keras raises a bare Exception on download failure.
            if resolved == "imagenet" and "URL fetch failure" in str(error):
                raise _offline_error(spec, error) from error
            raise
    if resolved not in (None, "imagenet"):
        try:
            load_weights_strictly(keras_model, resolved)
        except Exception as error:
            raise WeightsUnavailableError(
                f"Could not load weights from {resolved} into {spec.name}"
                f"(include_top=False, input_size={size}): {error}. The file must hold the "
                f"weights of this architecture without its top (e.g. saved from "
                f"keras.applications.{spec.name}(include_top=False).save_weights(...), or "
                f"the '_notop.h5' file Keras publishes). Received: weights={os.fspath(weights)!r}"
            ) from error
        digest = file_digest(resolved)
    else:
        digest = values_digest(keras_model)
    return Backbone(
        spec=spec,
        model=keras_model,
        input_size=size,
        weights=resolved,
        weights_digest=digest,
        model_kwargs=kwargs,
    )


def _hub_backbone(model, weights, input_size, model_kwargs, preprocessing, seed) -> Backbone:
    """A `Backbone` from a keras-hub transformer (`layerprobe.features.hub`); its digest digests the weight values."""
    resolved = _resolve_weights(weights)
    opened = open_hub_model(model, weights=resolved, input_size=input_size, model_kwargs=model_kwargs,
                            preprocessing=preprocessing, seed=seed)
    return Backbone(
        spec=opened.spec,
        model=opened.model,
        input_size=opened.input_size,
        weights=opened.weights,
        weights_digest=values_digest(opened.model),
    )


def _file_backbone(
    path: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = SAVED_WEIGHTS,
    input_size: int | None = None,
    preprocessing: str | None = None,
    seed: int = 0,
):
    """A `Backbone` from a saved Keras model file; see `layerprobe.features.model_files`.

    Args:
        path: The `.keras` file.
        weights: `"saved"` (the file's own), None (fresh initialisation from
            `seed`, a random baseline of the same architecture) or a weights file.
        input_size: Square input side (see `open_model_file`).
        preprocessing: `"none"`, `"caffe"`, `"tf"`, `"torch"` or a family name;
            None takes it from the metadata or the graph.
        seed: Seed of the initialisation when `weights=None`.

    Returns:
        A `layerprobe.features.backbone.Backbone` whose `weights_digest` digests
        the part's architecture and weight values.

    Raises:
        BackboneError: As `open_model_file`, an unknown `preprocessing`, or
            none given where neither the metadata nor the graph tells it.
    """
    chosen = None if preprocessing is None else resolve_preprocessing(preprocessing)
    opened = open_model_file(path, input_size=input_size, weights=weights, seed=seed)
    if chosen is None and opened.preprocessing is None:
        raise BackboneError(
            f"Cannot tell which preprocessing {opened.path} expects: {opened.preprocessing_source}. Pass "
            f"preprocessing= one of 'none' (pixels 0-255 as they are, for a model that rescales inside), "
            f"'caffe', 'tf', 'torch' (the modes of keras.applications.imagenet_utils.preprocess_input) or a "
            f"family name whose preprocess_input to use ({', '.join(list(BACKBONES)[:6])}, ...; "
            f"all: {', '.join(preprocessing_choices())}). In a config: preprocessing = \"...\" in its "
            f"[[backbones]] entry; on the command line: --preprocessing. Received: preprocessing=None"
        )
    combined = hashlib.sha256(f"{opened.architecture_digest}\n{values_digest(opened.model)}".encode())
    return Backbone(
        spec=opened.spec(chosen or opened.preprocessing),
        model=opened.model,
        input_size=opened.input_size,
        weights=None if weights is None else (SAVED_WEIGHTS if weights == SAVED_WEIGHTS else os.fspath(weights)),
        weights_digest="sha256:" + combined.hexdigest(),
    )
