"""Any Keras model file as a backbone: load it, find its backbone part, fix its input size, digest it.

`load_backbone("path/to/model.keras", ...)` (and so `FeatureExtractor`, the
config's `model = "..."` and `layerprobe extract --model PATH`) goes through
`layerprobe.features.backbone`, which opens it here (`open_model_file`). A file is any Keras 3 functional or Sequential
model saved with `model.save` (a `.keras` archive, or a legacy `.h5` model):

* **Backbone part.** A model that nests exactly one functional model behind
  layers that are the identity at inference (the input, augmentation,
  dropout; Keras operations such as in-graph preprocessing are not layers), as `layerprobe finetune` and
  the Keras transfer-learning recipe build classifiers, is probed inside that
  nested model, so its blocks are selectable and `"stages"` works; any other
  model is probed as a whole. Layerprobe metadata beside the file
  (`model.layerprobe.json`, see `write_model_metadata`) names the part directly.
* **Input size.** Stages are found from output shapes, so a model saved with a
  flexible input (`(None, None, 3)`), or at another size than asked for, is
  rebuilt at the chosen size (`keras.models.clone_model` on a fixed
  `keras.Input`, weights copied). The default size is the metadata's, else the
  model's fixed size, else 224.
* **Preprocessing.** `preprocessing=` is `"none"`, `"caffe"`, `"tf"`,
  `"torch"` or a family name (`layerprobe.features.registry.resolve_preprocessing`).
  Left out, it comes from the metadata, else from the graph: a leading
  `Rescaling` layer (the model takes 0-255 pixels: `"none"`). Otherwise
  loading stops with an error listing the choices.
* **Identity.** The cache key's weights field is a digest of the backbone
  part's architecture (its config, canonical JSON) and its weight values
  (`layerprobe.core.digests.arrays_digest`): two copies of a file share
  cached features, a retrained file is a miss. The file's name and path are
  not part of it.

Subclassed models (a `call` written in Python) have no graph whose
intermediate outputs could be tapped; they get a `BackboneError` saying how to
save a functional one instead.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .backend import import_keras_quietly, is_functional_model, load_weights_strictly
from ..core.atomic import write_text_atomically
from ..core.checks import check_positive_int
from ..core.errors import BackboneError, WeightsUnavailableError
from ..core.files import RECORD_MAX_BYTES, read_bounded_text
from .hub import is_hub_model
from .registry import (
    BACKBONES,
    BackboneSpec,
    resolve_preprocessing,
)
from .seeding import keras_seed

__all__ = [
    "DEFAULT_FILE_INPUT_SIZE",
    "METADATA_VERSION",
    "ModelFile",
    "SAVED_WEIGHTS",
    "architecture_digest",
    "is_model_file",
    "metadata_path",
    "open_model_file",
    "read_model_metadata",
    "write_model_metadata",
]

MODEL_FILE_SUFFIXES = (".keras", ".h5")
DEFAULT_FILE_INPUT_SIZE = 224
SAVED_WEIGHTS = "saved"
METADATA_SUFFIX = ".layerprobe.json"
METADATA_ENCODING = "layerprobe-model-metadata"
METADATA_VERSION = 1
# Layers that pass their input through unchanged at inference.
_IDENTITY_AT_INFERENCE = ("InputLayer", "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout")


def is_model_file(model: Any) -> bool:
    """Whether a `model` argument names a saved model file rather than a registry family.

    A path-like object, or text ending in `.keras`/`.h5` or holding a path
    separator, is a file (registry names have neither); a keras-hub model
    (`layerprobe.features.hub.is_hub_model`: `keras_hub:...` or a preset folder) is not.
    """
    if is_hub_model(model):
        return False
    if isinstance(model, os.PathLike):
        return True
    if not isinstance(model, str):
        return False
    return model.lower().endswith(MODEL_FILE_SUFFIXES) or "/" in model or os.sep in model


def metadata_path(path: str | os.PathLike) -> Path:
    """Where layerprobe keeps a model file's metadata: `model.keras` -> `model.layerprobe.json`."""
    return Path(path).with_suffix(METADATA_SUFFIX)


def write_model_metadata(path: str | os.PathLike, metadata: Mapping[str, Any]) -> Path:
    """Write the metadata of the model file `path` beside it (atomically); returns its path.

    Args:
        path: The saved model (`model.keras`).
        metadata: JSON-ready fields. Read back: `preprocessing` (a `preprocessing=`
            value), `preprocess_module` (used when `preprocessing` is absent),
            `input_size` and `backbone_layer` (the name of the nested model that
            is the backbone); anything else (family, mode, weights, ...) is kept
            for the reader.
    """
    target = metadata_path(path)
    record = {"encoding-type": METADATA_ENCODING, "encoding-version": METADATA_VERSION, **metadata}
    write_text_atomically(target, json.dumps(record, indent=2, sort_keys=True, default=str))
    return target


def read_model_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The metadata layerprobe saved beside the model file `path`, or None if there is none.

    Raises:
        BackboneError: If the metadata file is unreadable or of an unknown version.
    """
    target = metadata_path(path)
    if not target.is_file():
        return None
    try:
        record = json.loads(read_bounded_text(target, "layerprobe model metadata", RECORD_MAX_BYTES))
    except (OSError, ValueError) as error:
        raise BackboneError(
            f"The layerprobe metadata {target} of {path} cannot be read ({error}). Delete it and pass "
            f"preprocessing= explicitly. Received: model={os.fspath(path)!r}"
        ) from error
    if not isinstance(record, dict) or record.get("encoding-type") != METADATA_ENCODING:
        return None  # someone else's JSON file of that name: not ours to interpret
    if record.get("encoding-version") != METADATA_VERSION:
        raise BackboneError(
            f"The layerprobe metadata {target} has encoding-version {record.get('encoding-version')!r}; this "
            f"layerprobe reads version {METADATA_VERSION}. Upgrade layerprobe, or delete the file and pass "
            f"preprocessing= explicitly. Received: model={os.fspath(path)!r}"
        )
    return record


@dataclass(frozen=True, eq=False)
class ModelFile:
    """A loaded model file's backbone part, at a fixed input size, with what is known about it.

    Attributes:
        path: The model file (absolute).
        model: The backbone part (the nested backbone of a classifier, else the
            whole model), built at `input_size` with the file's weights.
        label: `model.name`, or `classifier/backbone` for a nested backbone.
        architecture_digest: `"sha256:..."` of the part's config (canonical JSON).
        input_size: Side of the square input `model` is built for.
        preprocessing: `(preprocess_module, preprocess_mode)` as in `BackboneSpec`,
            or None when neither the metadata nor the graph tells.
        preprocessing_source: Where `preprocessing` came from, for messages.
        metadata: The layerprobe metadata beside the file, or None.
    """

    path: Path
    model: Any
    label: str
    architecture_digest: str
    input_size: int
    preprocessing: tuple[str | None, str | None] | None
    preprocessing_source: str
    metadata: Mapping[str, Any] | None

    @property
    def name(self) -> str:
        """Architecture name in cache keys and tables: `label@<first 12 hex of the architecture digest>`."""
        return f"{self.label}@{self.architecture_digest.removeprefix('sha256:')[:12]}"

    def spec(self, preprocessing: tuple[str | None, str | None]) -> BackboneSpec:
        """A `BackboneSpec` for this file with the given `(module, mode)` preprocessing.

        Stages follow the generic rule, or the family's `stage_pattern` when the
        metadata names a registered family (a finetuned VGG16 keeps `blockN_pool`).
        """
        module, mode = preprocessing
        family = BACKBONES.get((self.metadata or {}).get("family"))
        return BackboneSpec(
            name=self.name,
            constructor=_not_a_constructor,
            preprocess_module=module,
            default_input_size=self.input_size,
            min_input_size=1,
            stage_pattern=family.stage_pattern if family is not None else None,
            preprocess_mode=mode,
            source=str(self.path),
        )


def _not_a_constructor(**kwargs):
    raise BackboneError(
        "A BackboneSpec made for a model file has no constructor: load the file with "
        "layerprobe.features.backbone.load_backbone(path). Received: a call of its constructor"
    )


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return repr(value)


def architecture_digest(model) -> str:
    """sha256 of a model's config as canonical JSON (sorted keys, no whitespace)."""
    canonical = json.dumps(model.get_config(), sort_keys=True, separators=(",", ":"), default=_json_default)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _file_config(path: Path) -> dict | None:
    """The model config stored in a `.keras` archive, without building the model (None if unreadable)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _modules_named(config: Any) -> set[str]:
    found = set()
    if isinstance(config, dict):
        if isinstance(config.get("module"), str):
            found.add(config["module"])
        for value in config.values():
            found |= _modules_named(value)
    elif isinstance(config, list):
        for value in config:
            found |= _modules_named(value)
    return found


def _subclassed_error(path: Path, class_name: str) -> BackboneError:
    return BackboneError(
        f"{path} holds a subclassed keras.Model ({class_name}): its layers are called from Python code "
        f"in `call`, not from a graph, so layerprobe cannot select their intermediate outputs. Rebuild it "
        f"as a functional model (call its layers on a keras.Input and make keras.Model(inputs, outputs)), "
        f"or save the functional part of it (e.g. a backbone attribute built with keras.applications or "
        f"the functional API) with model.save('backbone.keras') and pass that file. "
        f"Received: model={str(path)!r}"
    )


def _load_keras_model(path: Path):
    """`keras.saving.load_model(path, compile=False)`, with a `BackboneError` a user can act on."""
    keras = import_keras_quietly()
    config = _file_config(path) if path.suffix.lower() == ".keras" else None
    # Classes registered by layerprobe's own modules (the finetuned classifier's layers) are
    # imported from the module the file names; no module outside layerprobe is imported here.
    for module in sorted(_modules_named(config)):
        if module == "layerprobe" or module.startswith("layerprobe."):
            try:
                importlib.import_module(module)
            except ImportError:
                pass  # Keras reports the class it cannot find
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises TypeError, ValueError or bare Exception
        top = (config or {}).get("class_name")
        if top not in (None, "Functional", "Sequential", "Model"):
            raise _subclassed_error(path, top) from error
        missing = re.search(r"Could not locate (?:class|function) '([^']+)'", str(error))
        hint = (
            f" The file uses the custom object {missing.group(1)!r}: import the module that defines it "
            f"(registered with @keras.saving.register_keras_serializable) before loading."
            if missing
            else ""
        )
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BackboneError(
            f"Could not load the Keras model {path}: {first_line}.{hint} layerprobe loads any functional or "
            f"Sequential Keras 3 model saved with model.save('name.keras'). Received: model={str(path)!r}"
        ) from error
    if not is_functional_model(model):
        raise _subclassed_error(path, type(model).__name__)
    return model


def _class_name(layer) -> str:
    return type(layer).__name__


def _passes_through(layer) -> bool:
    name = _class_name(layer)
    return name in _IDENTITY_AT_INFERENCE or (name.startswith("Random") and name != "RandomCrop")


def _backbone_part(model, metadata: Mapping[str, Any] | None):
    """(part, label): the nested backbone of a classifier, else the model."""
    import keras

    named = (metadata or {}).get("backbone_layer")
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if named:
        nested = [layer for layer in nested if layer.name == named] or nested
    if len(nested) != 1 or not is_functional_model(nested[0]):
        return model, model.name
    inner = nested[0]
    if not all(_passes_through(layer) for layer in model.layers[: model.layers.index(inner)]):
        return model, model.name
    return inner, f"{model.name}/{inner.name}"


def _input_side(part, path: Path) -> int | None:
    """The part's fixed square input side, None for a flexible input; refuses inputs that are not one RGB image."""
    inputs = part.inputs
    shape = tuple(inputs[0].shape) if len(inputs) == 1 else ()
    if len(inputs) != 1 or len(shape) != 4 or shape[-1] != 3:
        raise BackboneError(
            f"{path} ({part.name}) must take one batch of RGB images, shape (batch, height, width, 3) "
            f"(channels last). It takes {[tuple(t.shape) for t in inputs]}. Save a model with a single "
            f"image input. Received: model={str(path)!r}"
        )
    height, width = shape[1], shape[2]
    if height is None or width is None:
        return None
    if height != width:
        raise BackboneError(
            f"{path} ({part.name}) was saved with a fixed non-square input {height}x{width}; layerprobe "
            f"feeds square images. Save it with a flexible input, keras.Input((None, None, 3)), or a square "
            f"one. Received: model={str(path)!r}"
        )
    return int(height)


def _rebuild(part, size: int, path: Path, *, copy_weights: bool):
    """The part cloned on a fixed `(size, size, 3)` input, with its weights copied (or freshly initialised)."""
    import keras

    inputs = keras.Input((size, size, 3), name=part.inputs[0].name, dtype=part.inputs[0].dtype)
    try:
        as_list = isinstance(part.input, (list, tuple))  # clone_model wants model.input's structure
    except AttributeError:  # a Sequential has `inputs` only
        as_list = False
    try:
        clone = keras.models.clone_model(part, input_tensors=[inputs] if as_list else inputs)
        if copy_weights:
            clone.set_weights(part.get_weights())
    except Exception as error:  # shape errors surface as ValueError, TypeError or backend errors
        fixed = _input_side(part, path)
        saved = f"a fixed {fixed}x{fixed} input" if fixed else "a flexible input"
        raise BackboneError(
            f"{path} ({part.name}, saved with {saved}) cannot be rebuilt at input_size={size}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}. "
            f"Use an input size the model accepts{f' (e.g. {fixed})' if fixed else ''}. "
            f"Received: input_size={size}"
        ) from error
    return clone


def _preprocessing_from_metadata(metadata: Mapping[str, Any]) -> tuple[str | None, str | None] | None:
    if metadata.get("preprocessing"):
        return resolve_preprocessing(metadata["preprocessing"])
    if "preprocess_module" in metadata:
        module = metadata["preprocess_module"]
        if module is None:
            return None, "none"
        if isinstance(module, str) and module.startswith("keras.applications."):
            return module, None
    return None


def _infer_preprocessing(part, metadata, path: Path):
    """((module, mode), source) from the metadata or the graph; (None, reason) when neither tells."""
    if (metadata or {}).get("rescaling") is not None:
        return None, "it rescales by a keras-hub image converter's per-channel x * scale + offset, not a mode"
    if metadata is not None:
        found = _preprocessing_from_metadata(metadata)
        if found is not None:
            return found, f"layerprobe metadata ({metadata_path(path).name})"
    first = [layer for layer in part.layers if _class_name(layer) != "InputLayer"][:1]
    if first and _class_name(first[0]) == "Rescaling":
        return (None, "none"), "it rescales inside: its first layer is Rescaling"
    return None, "no layerprobe metadata beside it and no Rescaling layer at its input"


def open_model_file(
    path: str | os.PathLike,
    *,
    input_size: int | None = None,
    weights: str | os.PathLike | None = SAVED_WEIGHTS,
    seed: int = 0,
) -> ModelFile:
    """Load a model file and build its backbone part at a fixed input size (no preprocessing needed).

    Args:
        path: A `.keras` file (or legacy `.h5` model) saved with `model.save`.
        input_size: Square input side; default: the metadata's, else the
            model's fixed size, else `DEFAULT_FILE_INPUT_SIZE`.
        weights: `"saved"` (the file's), None (the architecture freshly
            initialised from `seed`) or a weights file for the backbone part.
        seed: Seed of the initialisation when `weights=None`.

    Returns:
        A `ModelFile`.

    Raises:
        BackboneError: Missing or unloadable file, a subclassed model, an input
            that is not one RGB image, or an input size it cannot be rebuilt at.
        WeightsUnavailableError: If a weights file does not fit the backbone part.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise BackboneError(
            f"Model file not found: {path}. Pass the path of a Keras model saved with model.save('name.keras'), "
            f"or a registered backbone name (`layerprobe layers --list`). Received: model={os.fspath(path)!r}"
        )
    path = path.resolve()
    metadata = read_model_metadata(path)
    model = _load_keras_model(path)
    part, label = _backbone_part(model, metadata)
    fixed = _input_side(part, path)
    if input_size is None:
        size = (metadata or {}).get("input_size") or fixed or DEFAULT_FILE_INPUT_SIZE
    else:
        size = check_positive_int("input_size", input_size, error=BackboneError)
    digest = architecture_digest(part)
    if weights is None:
        with keras_seed(seed):
            built = _rebuild(part, size, path, copy_weights=False)
    else:
        built = part if fixed == size else _rebuild(part, size, path, copy_weights=True)
        if weights != SAVED_WEIGHTS:
            _load_weights_file(built, os.fspath(weights), path)
    found, source = _infer_preprocessing(part, metadata, path)
    return ModelFile(
        path=path,
        model=built,
        label=label,
        architecture_digest=digest,
        input_size=int(size),
        preprocessing=found,
        preprocessing_source=source,
        metadata=metadata,
    )


def _load_weights_file(model, weights: str, path: Path) -> None:
    try:
        load_weights_strictly(model, weights)
    except Exception as error:
        raise WeightsUnavailableError(
            f"Could not load weights from {weights} into the backbone part of {path} ({model.name}): {error}. "
            f"The file must hold weights of exactly this architecture (saved with save_weights). "
            f"Received: weights={weights!r}"
        ) from error
