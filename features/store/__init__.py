"""The feature store: committed feature entries in HDF5 files, one per key, safe against killed writers.

Modules, one job each:

* `feature_store`: `FeatureStore`, the store directory (list, info, load, stream, commit, remove);
* `feature_set`: `FeatureSet`, one entry as loaded; `FeatureStream`, one entry handed out in row
  blocks (memory-mapped where the file allows, checked against its checksum as it streams);
* `partial`: `PartialEntry`, the committed chunks of an unfinished extraction;
* `locks`: the per-key lock (its holder recorded, waits bounded);
* `hdf5`: the entry and chunk files (the only module that imports h5py);
* `failures`: how a failed write is reported.

Every entry's metadata records `library_versions` (`layerprobe.core.versions`)
beside the numerics environment (`layerprobe.features.environment`).

Everything other code needs is importable from here.
"""

from ...core.digests import array_digest
from ...core.errors import (
    CorruptEntryError,
    EntryLockedError,
    EntryNotFoundError,
    IncompleteEntryError,
    StoreError,
)
from ...core.versions import library_versions
from .feature_set import FeatureSet, FeatureStream
from .feature_store import FeatureStore
from .hdf5 import CHUNK_ENCODING_TYPE, ENCODING_TYPE, ENCODING_VERSION
from .partial import PartialEntry

__all__ = [
    "CHUNK_ENCODING_TYPE",
    "ENCODING_TYPE",
    "ENCODING_VERSION",
    "CorruptEntryError",
    "EntryLockedError",
    "EntryNotFoundError",
    "FeatureSet",
    "FeatureStore",
    "FeatureStream",
    "IncompleteEntryError",
    "PartialEntry",
    "StoreError",
    "array_digest",
    "library_versions",
]
