"""Content-addressed cache keys for stored features.

A key names everything that determines a feature array. Two extractions
with equal keys produce the same numbers; any change of a field gives a
different digest, so the store can never hand back features computed under
other settings. Library versions are metadata, not key fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["FORMAT_VERSION", "FeatureKey"]

# Bump when the extraction output changes for the same key fields.
FORMAT_VERSION = 1

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class FeatureKey:
    """Everything that determines one stored feature array.

    Attributes:
        backbone: Architecture, e.g. `"VGG16"` or `"MobileNetV2(alpha=0.35)"`.
        weights: Digest of the weights file or values (`"sha256:..."`).
        layer: Stable layer id (name, or `layer#index` for auto-named layers).
        pooling: `"avg"`, `"max"`, `"flatten"` or `"none"`.
        input_size: Side of the square input images.
        preprocessing: Name of the preprocessing function applied.
        dtype: Storage dtype, `"float32"` or `"float16"`.
        compute_dtype: `"float32"` or `"mixed_float16"` forward pass.
        dataset: Digest of the dataset manifest (paths, sizes, mtimes, labels, splits).
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
        readable = ".".join(_UNSAFE.sub("_", part) for part in (self.backbone, self.layer, self.pooling))
        return f"{readable}.{self.digest[:16]}"
