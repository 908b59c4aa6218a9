"""Content-addressed cache keys for stored features.

A key names what a feature array is: the backbone and its weights, the layer,
pooling, input size, preprocessing, storage and compute dtypes, the dataset
(its digest: files' relative paths and sizes and mtimes, or their contents;
labels; splits; the `max_pixels` guard; the decoder where its pixels are not
libjpeg-turbo's, `decoded_pixels`) and the format version. Any change of
a field gives a different digest, so the store never hands back features of
other settings or other data.

What a key does not hold is *where* the numbers were computed: the numerics
environment (Keras backend and its version, device, oneDNN/XLA/TF32 flags,
Pillow...; `layerprobe.features.environment`) and the library versions are
metadata of each entry, as in joblib.Memory. So two environments give the
same key, and features equal up to the last bits of floating point; one entry
never mixes two environments, and `FeatureStore.load(strict_environment=True)`
refuses an entry from another one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = [
    "COMPUTE_PRECISIONS", "CPU_PIXELS", "DECODERS", "DEFAULT_BATCH_SIZE", "DIGEST_MODES", "FORMAT_VERSION",
    "STORAGE_DTYPES", "FeatureKey", "decoded_pixels", "safe_name",
]

# Bump when the extraction output changes for the same key fields.
# 2: 16-bit grey levels scaled from their bit depth (not 65535); JPEGs decoded at reduced scale (draft).
FORMAT_VERSION = 2

STORAGE_DTYPES = ("float32", "float16")
"""The dtypes features are stored in (a key's `dtype`)."""

DIGEST_MODES = ("stat", "content")

DEFAULT_BATCH_SIZE = 32
"""The batch size of `batch_size="auto"` on a CPU (and where an accelerator's is not known yet)."""

DECODERS = ("auto", "pillow", "simplejpeg", "nvimgcodec")
"""Decoders of image files (`layerprobe.features.inputs.decoding.resolve_decoder`)."""

CPU_PIXELS = "libjpeg-turbo"
"""The pixels of the CPU decoders: Pillow and simplejpeg decode with libjpeg-turbo's integer IDCT at
the same scale and resize alike, so they give the same pixels and share keys (and every store made
before device decoding existed holds these pixels)."""


def decoded_pixels(decoder: str) -> str:
    """What pixels a resolved decoder gives: `CPU_PIXELS` for `"pillow"` and `"simplejpeg"`, else its name.

    Features of different decoded pixels never share a key: the pixels are folded into
    the key's dataset digest where they are not `CPU_PIXELS` (`ExtractionPlan.keys`).
    """
    return CPU_PIXELS if decoder in ("pillow", "simplejpeg") else decoder

COMPUTE_PRECISIONS = ("bfloat16", "float16")
"""`mixed_precision=` names besides false/true; the compute dtype policy is part of keys."""
"""How a key's `dataset` digest identifies the images: file stats or file contents (`ImageDataset.digest`)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(*parts: str) -> str:
    """One file-system-safe path component: `parts` joined by ".", every run of other characters than
    letters, digits, `_`, `.` and `-` replaced by `_` (no separator survives), e.g. `MobileNetV2_alpha_0.35_`.
    """
    name = ".".join(_UNSAFE.sub("_", str(part)) for part in parts)
    return "_" if name in ("", ".", "..") else name


@dataclass(frozen=True)
class FeatureKey:
    """What one stored feature array is (see the module docstring for what is not in it).

    Attributes:
        backbone: Architecture, e.g. `"VGG16"` or `"MobileNetV2(alpha=0.35)"`.
        weights: Digest of the weights file or values (`"sha256:..."`).
        layer: Stable layer id (name, or `layer#index` for auto-named layers).
        pooling: `"avg"`, `"max"`, `"flatten"` or `"none"`.
        input_size: Side of the square input images.
        preprocessing: Name of the preprocessing function applied.
        dtype: Storage dtype, one of `STORAGE_DTYPES`.
        compute_dtype: `"float32"` or `"mixed_float16"` forward pass.
        dataset: Digest of the dataset manifest (relative paths, sizes and mtimes or
            contents, labels, splits; see `ImageDataset.digest`).
        format_version: Version of the extraction output format.
    """

    backbone: str
    weights: str
    layer: str
    pooling: str
    input_size: int
    preprocessing: str
    dtype: str
    compute_dtype: str
    dataset: str
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> "FeatureKey":
        return cls(**fields)

    @property
    def digest(self) -> str:
        """sha256 hex of the canonical JSON of all fields."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def entry_name(self) -> str:
        """File-system-safe, human-readable and unique name of the stored entry."""
        return f"{safe_name(self.backbone, self.layer, self.pooling)}.{self.digest[:16]}"
