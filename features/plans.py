"""Feature keys without building the backbone: extraction plans cached in the store.

A feature key needs the backbone built: layer aliases ("stages", depths) are
resolved against the model, and random or ImageNet weights are identified by
their values. Building it means importing the Keras backend and constructing
the model, seconds that dominate a rerun whose features and results are all
cached already. So `layerprobe run` (`layerprobe.pipeline.run`) writes each extractor's
resolved keys to the store as a *plan* (`ExtractionPlan`, made by
`FeatureExtractor.plan`), and a later run with the same settings reads them
back without Keras.

A plan is reused only while everything it was derived from is unchanged: the
extractor's settings, the weights file and a model file with its layerprobe
metadata or a keras-hub preset folder's files, and the installed Keras and
backend versions. A file is identified as the content-digest cache identifies
images (`layerprobe.features.inputs.file_digests`): path, device, inode, size,
modification time and change time. A file replaced by another of the same
size with its mtime set back (`touch -d`) has another inode, and one rewritten
in place has a new ctime, which no user can set back, so neither is trusted.
A copied or retrained model file thus gets a new plan; its keys digest the
model's content, so a copy still finds the features its original stored. A
missing, unreadable or mismatching plan only means building the backbone as
before.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from ..core.atomic import write_text_atomically
from ..core.files import RECORD_MAX_BYTES, read_bounded_text
from ..core.versions import installed_version
from .hub import hub_preset_files, is_hub_model
from ..core.errors import InputError
from .inputs import DEFAULT_MAX_PIXELS
from .inputs.decoding import resolve_decoder
from .inputs.file_digests import file_identity
from .keys import CPU_PIXELS, FORMAT_VERSION, FeatureKey, decoded_pixels
from .model_files import is_model_file, metadata_path

__all__ = ["ExtractionPlan", "PlannedLayer", "load_plan", "plan_signature", "save_plan"]

_PLANS_FOLDER = ".plans"
_BACKEND_PACKAGES = ("keras", "tensorflow", "jax", "torch")


@dataclass(frozen=True)
class PlannedLayer:
    """One selected layer: its name, key id, pooling, relative depth, stage number (or None), and its forward
    FLOPs per image from the input (`layerprobe.features.flops`; None in plans saved before they were counted,
    which `load_plan` does not reuse)."""

    name: str
    stable_id: str
    pooling: str
    depth: float
    stage: int | None = None
    forward_flops: int | None = None


@dataclass(frozen=True)
class ExtractionPlan:
    """What an extractor's feature keys are made of, for any dataset.

    Attributes:
        architecture: `FeatureKey.backbone`, e.g. `"MobileNetV2(alpha=0.35)"`.
        weights_digest: `FeatureKey.weights`.
        input_size: Side of the square input images.
        preprocessing: Name of the preprocessing function.
        dtype: Storage dtype.
        compute_dtype: Dtype of the forward pass.
        max_pixels: Decompression-bomb limit; it decides which images are kept.
        layers: The selected layers, in extraction order.
        pixels: What decoded the images (`keys.decoded_pixels`); plans saved before
            device decoding existed hold `CPU_PIXELS`.
    """

    architecture: str
    weights_digest: str
    input_size: int
    preprocessing: str
    dtype: str
    compute_dtype: str
    max_pixels: int
    layers: tuple[PlannedLayer, ...]
    pixels: str = CPU_PIXELS

    def keys(self, dataset_digest: str) -> dict[str, FeatureKey]:
        """The store key of each layer's features for the dataset with this digest."""
        if self.max_pixels != DEFAULT_MAX_PIXELS:
            # The size guard decides which samples are kept: part of what the features describe.
            dataset_digest = hashlib.sha256(f"{dataset_digest}:max_pixels={self.max_pixels}".encode()).hexdigest()
        if self.pixels != CPU_PIXELS:
            # Other decoded pixels, other features; the CPU decoders' keys stay those of older stores.
            dataset_digest = hashlib.sha256(f"{dataset_digest}:pixels={self.pixels}".encode()).hexdigest()
        return {
            layer.name: FeatureKey(
                backbone=self.architecture,
                weights=self.weights_digest,
                layer=layer.stable_id,
                pooling=layer.pooling,
                input_size=self.input_size,
                preprocessing=self.preprocessing,
                dtype=self.dtype,
                compute_dtype=self.compute_dtype,
                dataset=dataset_digest,
            )
            for layer in self.layers
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ExtractionPlan:
        fields = dict(values)
        fields["layers"] = tuple(PlannedLayer(**layer) for layer in fields["layers"])
        return cls(**fields)


def plan_signature(settings: Mapping[str, Any]) -> str | None:
    """Digest of everything a plan is derived from, or None when it cannot be told without Keras.

    Args:
        settings: The extractor's arguments as JSON-ready values: `model` (a
            registry name or a model file), `weights` (`"imagenet"`, `"saved"`,
            None or a file path), `preprocessing` (model files),
            `layers`, `pooling`, `input_size`, `dtype`, `mixed_precision`,
            `model_kwargs`, `seed`, `max_pixels`, `decoder`.

    Returns:
        A hex digest; None if `weights` or `model` names a file that does not
        exist (the build reports that) or a setting is not JSON-serialisable.
    """
    identity: dict[str, Any] = {"settings": dict(settings), "format_version": FORMAT_VERSION}
    try:  # "auto" decodes on the GPU where one can: the same settings, other pixels, other keys
        pixels = decoded_pixels(resolve_decoder(settings.get("decoder", "auto")))
    except InputError:
        return None  # the build reports it
    if pixels != CPU_PIXELS:
        identity["pixels"] = pixels
    files = {"weights_file": settings.get("weights")}
    if is_model_file(settings.get("model")):
        files["model_file"] = settings["model"]
        files["model_metadata"] = metadata_path(settings["model"])
    for path in hub_preset_files(settings.get("model")):  # a keras-hub preset folder
        files[f"preset_{path.name}"] = path
    for name, path in files.items():
        if path in (None, "imagenet", "saved"):
            continue
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            if name == "model_metadata":  # most model files have none; one added later changes the signature
                continue
            return None
        except (OSError, TypeError, ValueError):
            return None
        identity[name] = [os.path.abspath(path), *file_identity(stat)]
    identity["versions"] = {name: installed_version(name) for name in _BACKEND_PACKAGES}
    if is_hub_model(settings.get("model")):
        identity["versions"]["keras-hub"] = installed_version("keras-hub")
    identity["keras_backend"] = os.environ.get("KERAS_BACKEND")
    try:
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    except TypeError:
        return None
    return hashlib.sha256(canonical.encode()).hexdigest()


def _plan_path(store_root: str | os.PathLike, signature: str) -> Path:
    return Path(store_root) / _PLANS_FOLDER / f"{signature}.json"


def load_plan(store_root: str | os.PathLike, signature: str | None) -> ExtractionPlan | None:
    """The plan saved under `signature` in the store, or None if there is no usable one."""
    if signature is None:
        return None
    try:
        values = json.loads(read_bounded_text(_plan_path(store_root, signature), "extraction plan", RECORD_MAX_BYTES))
        plan = ExtractionPlan.from_dict(values)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    # A plan saved before forward FLOPs were counted is rebuilt once, so that the rows report them.
    return None if any(layer.forward_flops is None for layer in plan.layers) else plan


def save_plan(store_root: str | os.PathLike, signature: str | None, plan: ExtractionPlan) -> None:
    """Save `plan` under `signature` (atomically); a store that cannot be written is left alone."""
    if signature is None:
        return
    try:
        write_text_atomically(_plan_path(store_root, signature), json.dumps(plan.to_dict(), indent=1))
    except OSError:
        pass  # a plan only saves time; the extraction itself reports a store it cannot write
