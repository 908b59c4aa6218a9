"""The store's HDF5 files, written and read: the only module that imports h5py.

Two kinds of file: an *entry* (the features of one key, committed whole) and a
*chunk* (the features of some samples of an unfinished extraction). Each is
written under a temporary name and committed by atomic rename
(`layerprobe.features.atomic`): HDF5 cannot survive a writer killed while the
file is open, so nothing is ever written in place. Each carries
`encoding-type`/`encoding-version` attributes, and readers refuse other types
and versions. A file that cannot be read as what it should be raises
`FileProblem`; callers turn it into a `CorruptEntryError` that says what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from layerprobe.features.atomic import atomic_path
from layerprobe.features.digests import array_digest
from layerprobe.features.store.failures import writing

__all__ = [
    "CHUNK_ENCODING_TYPE",
    "ENCODING_TYPE",
    "ENCODING_VERSION",
    "H5PY_VERSION",
    "EntryReader",
    "EntryWriter",
    "FileProblem",
    "chunk_layout",
    "new_entry",
    "open_entry",
    "read_chunk",
    "write_chunk",
]

ENCODING_TYPE = "layerprobe.feature-entry"
ENCODING_VERSION = "1"
CHUNK_ENCODING_TYPE = "layerprobe.feature-chunk"
H5PY_VERSION = h5py.__version__
_STRING = h5py.string_dtype(encoding="utf-8")


class FileProblem(Exception):
    """A store file that cannot be read as what it should be; the message says why."""


def _strings(values: Iterable[str]) -> np.ndarray:
    return np.asarray(list(values), dtype=object)


def _read_strings(dataset) -> np.ndarray:
    return np.asarray(dataset.asstr()[()], dtype=object)


@contextlib.contextmanager
def _new_file(path: Path) -> Iterator[h5py.File]:
    """An HDF5 file written under a temporary name, committed as `path` if the block succeeds.

    Raises:
        StoreError: If it cannot be written (disk full, read-only...).
    """
    with writing(path), atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        yield handle


# --------------------------------------------------------------------------- chunks


def write_chunk(path: Path, features: np.ndarray, sample_indices: np.ndarray, skipped: Sequence[tuple[int, str]]) -> None:
    """Commit one chunk: its features, their sample indices, the skipped (index, reason) and a checksum."""
    with _new_file(path) as handle:
        handle.attrs["encoding-type"] = CHUNK_ENCODING_TYPE
        handle.attrs["encoding-version"] = ENCODING_VERSION
        handle.attrs["features_sha256"] = array_digest(features)
        handle.create_dataset("features", data=features)
        handle.create_dataset("sample_indices", data=np.asarray(sample_indices, dtype=np.int64))
        handle.create_dataset("skipped_indices", data=np.asarray([i for i, _ in skipped], dtype=np.int64))
        handle.create_dataset("skipped_reasons", data=_strings(r for _, r in skipped), dtype=_STRING)


def chunk_layout(path: Path) -> tuple[int, tuple, np.dtype]:
    """Row count, per-sample feature shape and dtype of a chunk (header only).

    Raises:
        FileProblem: The file is unreadable.
    """
    try:
        with h5py.File(path, "r") as handle:
            features = handle["features"]
            return features.shape[0], features.shape[1:], features.dtype
    except (OSError, KeyError) as error:
        raise FileProblem(f"unreadable ({error})") from error


def read_chunk(path: Path) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Features, sample indices and skipped (index, reason) of a chunk, checked against its checksum.

    Raises:
        FileProblem: The file is unreadable, of another encoding, inconsistent or fails its checksum.
    """
    try:
        with h5py.File(path, "r") as handle:
            kind = (handle.attrs.get("encoding-type"), handle.attrs.get("encoding-version"))
            if kind != (CHUNK_ENCODING_TYPE, ENCODING_VERSION):
                raise FileProblem(f"not a version-{ENCODING_VERSION} layerprobe chunk (encoding {kind})")
            checksum = handle.attrs.get("features_sha256")
            features = handle["features"][()]
            sample_indices = handle["sample_indices"][()]
            skipped = list(
                zip(
                    handle["skipped_indices"][()].tolist(),
                    _read_strings(handle["skipped_reasons"]).tolist(),
                    strict=True,
                )
            )
    except (OSError, KeyError) as error:
        raise FileProblem(f"unreadable ({error})") from error
    if len(features) != len(sample_indices):
        raise FileProblem(f"{len(features)} feature rows for {len(sample_indices)} sample indices")
    if checksum != array_digest(features):
        raise FileProblem("its features do not match the checksum recorded when it was written")
    return features, sample_indices, skipped


# --------------------------------------------------------------------------- entries


class EntryWriter:
    """An entry file being written: features appended chunk by chunk, then everything else.

    Memory stays at one chunk whatever the number of samples.
    """

    def __init__(self, handle: h5py.File, n_samples: int, feature_shape: tuple, dtype: np.dtype):
        self._handle = handle
        self._n_samples = n_samples
        self._offset = 0
        self._finished = False
        self._features = handle.create_dataset(
            "features",
            shape=(n_samples, *feature_shape),
            dtype=dtype,
            chunks=(max(1, min(n_samples, 1024)), *feature_shape) if n_samples else None,
        )
        # The canonical form of `digests.array_digest` (dtype, shape, C-ordered bytes) fed one
        # chunk at a time; `FeatureStore.load` checks the result with `array_digest` itself.
        self._sha = hashlib.sha256(f"{np.dtype(dtype).str}{(n_samples, *feature_shape)}".encode())

    def append(self, features: np.ndarray) -> None:
        """Write the next rows of features."""
        self._features[self._offset : self._offset + len(features)] = features
        self._sha.update(np.ascontiguousarray(features).tobytes())
        self._offset += len(features)

    @property
    def features_digest(self) -> str:
        """`array_digest` of all the features appended."""
        return "sha256:" + self._sha.hexdigest()

    def finish(
        self,
        *,
        labels: np.ndarray,
        sample_ids: Sequence[str],
        splits: Sequence[str],
        class_names: Sequence[str],
        skipped: Sequence[tuple[str, str]],
        key: Mapping[str, Any],
        metadata: Mapping[str, Any],
    ) -> None:
        """Write the per-sample datasets, the skipped files and the key and metadata attributes."""
        handle = self._handle
        handle.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        handle.create_dataset("sample_ids", data=_strings(sample_ids), dtype=_STRING)
        handle.create_dataset("splits", data=_strings(splits), dtype=_STRING)
        handle.create_dataset("class_names", data=_strings(class_names), dtype=_STRING)
        skipped_group = handle.create_group("skipped")
        skipped_group.create_dataset("sample_ids", data=_strings(s for s, _ in skipped), dtype=_STRING)
        skipped_group.create_dataset("reasons", data=_strings(r for _, r in skipped), dtype=_STRING)
        handle.attrs["encoding-type"] = ENCODING_TYPE
        handle.attrs["encoding-version"] = ENCODING_VERSION
        handle.attrs["key"] = json.dumps(dict(key), sort_keys=True)
        handle.attrs["metadata"] = json.dumps(dict(metadata), sort_keys=True, default=str)
        self._finished = True


@contextlib.contextmanager
def new_entry(path: Path, *, n_samples: int, feature_shape: tuple, dtype: np.dtype) -> Iterator[EntryWriter]:
    """Write an entry; it is committed as `path` only if the block succeeds and called `finish`.

    Raises:
        StoreError: If it cannot be written (disk full, read-only...).
    """
    with _new_file(path) as handle:
        writer = EntryWriter(handle, n_samples, feature_shape, dtype)
        yield writer
        if not writer._finished or writer._offset != n_samples:
            raise RuntimeError(  # a bug in the caller: never commit half an entry
                f"Entry {path.name} left unfinished: {writer._offset} of {n_samples} rows written, "
                f"finish() {'called' if writer._finished else 'not called'}."
            )


class EntryReader:
    """An open entry file whose encoding was checked; each method raises `FileProblem`."""

    def __init__(self, handle: h5py.File):
        self._handle = handle

    def header(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The key fields and the metadata, as stored."""
        try:
            return json.loads(self._handle.attrs["key"]), json.loads(self._handle.attrs["metadata"])
        except (KeyError, TypeError, ValueError) as error:
            raise FileProblem(f"its key/metadata attributes are unreadable ({error})") from error

    def shapes(self) -> dict[str, list[int]]:
        """Shape of each per-sample dataset present."""
        names = ("features", "labels", "sample_ids", "splits")
        return {name: list(self._handle[name].shape) for name in names if name in self._handle}

    def skipped(self) -> list[tuple[str, str]]:
        """(sample id, reason) of each sample that could not be decoded."""
        try:
            return list(
                zip(
                    _read_strings(self._handle["skipped/sample_ids"]).tolist(),
                    _read_strings(self._handle["skipped/reasons"]).tolist(),
                )
            )
        except KeyError as error:
            raise FileProblem(f"its list of skipped files is missing ({error})") from error

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
        """Features, labels, sample ids, splits and class names."""
        handle = self._handle
        try:
            return (
                handle["features"][()],
                handle["labels"][()],
                _read_strings(handle["sample_ids"]),
                _read_strings(handle["splits"]),
                tuple(_read_strings(handle["class_names"]).tolist()),
            )
        except (KeyError, OSError) as error:
            raise FileProblem(f"a dataset is missing or unreadable ({error})") from error


@contextlib.contextmanager
def open_entry(path: Path) -> Iterator[EntryReader]:
    """Open a committed entry for reading, after checking its encoding type and version.

    Raises:
        FileProblem: Not a readable HDF5 file, not a layerprobe entry, or another encoding version.
    """
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise FileProblem(f"not a readable HDF5 file ({error})") from error
    with handle:
        if handle.attrs.get("encoding-type") != ENCODING_TYPE:
            raise FileProblem("it is not a layerprobe feature entry")
        version = handle.attrs.get("encoding-version")
        if version != ENCODING_VERSION:
            raise FileProblem(
                f"encoding-version {version!r} is not the {ENCODING_VERSION!r} this layerprobe reads "
                f"(written by another version; upgrade layerprobe or re-extract)"
            )
        yield EntryReader(handle)
