"""The HDF5 feature store: the only module that touches h5py.

Layout of a store directory::

    STORE/
      <entry_name>.h5            one committed entry per feature key
      .partial/<digest>/         chunks of an unfinished extraction
          chunk_000012.h5        one committed chunk (atomic rename)
          fingerprint.json       settings the chunks were computed with
      .locks/<digest>.lock       per-key lock (fcntl.flock)

Why: HDF5 cannot survive a writer being killed while the file is open, and
opening a file with "w" wipes it under a reader. So every file is written
under a temporary name (`.tmp-<final name>-*`), fsynced and committed by
`os.replace`; nothing is ever written in place. A killed extraction leaves
committed chunks (and perhaps a stray temporary file, ignored, and deleted by
the next holder of the key's lock) but never a file that reads as a complete
entry; the next run resumes from the committed chunks, after checking each
against the checksum it was written with (a damaged chunk is computed again).
Readers need no lock: they only open committed files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from layerprobe.features.errors import CorruptEntryError, EntryNotFoundError, IncompleteEntryError, StoreError
from layerprobe.features.keys import FeatureKey

__all__ = [
    "StoreError",
    "CorruptEntryError",
    "IncompleteEntryError",
    "EntryNotFoundError",
    "FeatureSet",
    "PartialEntry",
    "FeatureStore",
    "array_digest",
    "library_versions",
]

ENCODING_TYPE = "layerprobe.feature-entry"
ENCODING_VERSION = "1"
CHUNK_ENCODING_TYPE = "layerprobe.feature-chunk"
_STRING = h5py.string_dtype(encoding="utf-8")




@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Features of one layer for a dataset, as loaded from the store.

    Attributes:
        X: Features, shape `(n_samples, ...)`.
        y: Integer labels, indices into `class_names`.
        sample_ids: Path (or array id) of each sample.
        splits: Split name of each sample.
        class_names: Label names.
        key: The feature key.
        metadata: Everything else recorded at extraction (versions, skipped files...).
    """

    X: np.ndarray
    y: np.ndarray
    sample_ids: np.ndarray
    splits: np.ndarray
    class_names: tuple[str, ...]
    key: FeatureKey
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> "FeatureSet":
        """Only the samples of one split (e.g. `"train"`).

        Raises:
            ValueError: For a split name the set does not have.
        """
        mask = self.splits == name
        if not mask.any():
            raise ValueError(
                f"No samples in split {name!r}. Available splits: "
                f"{sorted(set(self.splits.tolist()))}. Received: split={name!r}"
            )
        return FeatureSet(
            X=self.X[mask],
            y=self.y[mask],
            sample_ids=self.sample_ids[mask],
            splits=self.splits[mask],
            class_names=self.class_names,
            key=self.key,
            metadata=self.metadata,
        )

    @property
    def samples(self):
        """A pandas DataFrame indexed like `X`: sample_id, label, class_name, split."""
        import pandas as pd

        return pd.DataFrame(
            {
                "sample_id": self.sample_ids,
                "label": self.y,
                "class_name": np.asarray(self.class_names, dtype=object)[self.y],
                "split": self.splits,
            }
        )


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_error(path: Path, error: OSError) -> StoreError:
    """A `StoreError` saying why `path` could not be written and what to do."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space" in str(error):
        return StoreError(
            f"The disk is full while writing {path.name} in {path.parent}: {error}. "
            f"Free some space (or point the store elsewhere) and run again; committed work "
            f"is kept and the extraction resumes from it."
        )
    return StoreError(f"Could not write {path}: {error}")


def _umask() -> int:
    """The process umask, read from /proc where possible (`os.umask` can only read it by setting it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _atomic_h5(final_path: Path) -> Iterator[h5py.File]:
    """Write an HDF5 file under a temporary name; rename it into place on success.

    The temporary name starts with `.tmp-<final stem>-`, so whoever holds the
    lock of the key can find and delete what a killed writer left behind.
    """
    tmp_path = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{final_path.stem}-", suffix=".h5", dir=final_path.parent)
        os.close(fd)
        tmp_path = Path(tmp_name)
        with h5py.File(tmp_path, "w") as handle:
            yield handle
        with open(tmp_path, "rb+") as raw:
            os.fsync(raw.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; committed files get the usual mode
        os.replace(tmp_path, final_path)
        _fsync_directory(final_path.parent)
    except OSError as error:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        raise _write_error(final_path, error) from error
    except BaseException:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        raise


def _strings(values: Iterable[str]) -> np.ndarray:
    return np.asarray(list(values), dtype=object)


def _read_strings(dataset) -> np.ndarray:
    return np.asarray(dataset.asstr()[()], dtype=object)


def array_digest(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    sha = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    sha.update(np.ascontiguousarray(array).tobytes())
    return "sha256:" + sha.hexdigest()


class PartialEntry:
    """Committed chunks of one key's unfinished extraction.

    Each chunk is one small HDF5 file, committed atomically, holding the
    features of the samples of chunk `i` that decoded, their sample indices,
    the indices and reasons of those that did not, and a checksum of the
    features.

    Opening the work area (under the key's lock) makes it safe to resume
    from: stray temporary files are deleted; chunks computed with other
    settings, or with no readable `fingerprint.json` to say which, are all
    discarded; a chunk that is unreadable or fails its checksum is deleted,
    so that it is computed again. `discarded` says what was thrown away.
    """

    def __init__(self, directory: Path, fingerprint: Mapping[str, Any]):
        self.directory = directory
        self.discarded: list[str] = []
        fingerprint = dict(fingerprint)
        fingerprint_path = directory / "fingerprint.json"
        if directory.is_dir():
            try:
                stored = json.loads(fingerprint_path.read_text())
            except (OSError, ValueError):
                stored = None
            if stored != fingerprint:
                # Chunks computed with other settings (batch size...) are discarded
                # rather than mixed with new ones.
                if self.committed():
                    problem = "other settings" if stored is not None else "no readable fingerprint.json"
                    self.discarded.append(f"all {len(self.committed())} chunk(s): computed with {problem}")
                shutil.rmtree(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for stray in directory.glob(".tmp-*"):
                stray.unlink(missing_ok=True)
            if not fingerprint_path.exists():
                tmp = directory / f".tmp-fingerprint-{os.getpid()}.json"
                tmp.write_text(json.dumps(fingerprint, sort_keys=True))
                os.replace(tmp, fingerprint_path)
        except OSError as error:
            raise _write_error(fingerprint_path, error) from error
        for index in sorted(self.committed()):
            try:
                self._checked_chunk(index)
            except ValueError as problem:
                self._chunk_path(index).unlink(missing_ok=True)
                self.discarded.append(f"chunk {index}: {problem}")

    def _chunk_path(self, index: int) -> Path:
        return self.directory / f"chunk_{index:06d}.h5"

    def _corrupt(self, index: int, problem: str) -> CorruptEntryError:
        return CorruptEntryError(
            f"Partial chunk {self._chunk_path(index)} of an unfinished extraction is corrupt: {problem}. "
            f"Run the extraction again (corrupt chunks are recomputed when it starts), or delete "
            f"the folder {self.directory} to recompute this extraction from the start."
        )

    def committed(self) -> set[int]:
        """Indices of the chunks already committed."""
        return {int(path.stem.split("_")[1]) for path in self.directory.glob("chunk_*.h5")}

    def write_chunk(
        self,
        index: int,
        features: np.ndarray,
        sample_indices: np.ndarray,
        skipped: Sequence[tuple[int, str]],
    ) -> None:
        """Commit one chunk atomically."""
        with _atomic_h5(self._chunk_path(index)) as handle:
            handle.attrs["encoding-type"] = CHUNK_ENCODING_TYPE
            handle.attrs["encoding-version"] = ENCODING_VERSION
            handle.attrs["features_sha256"] = array_digest(features)
            handle.create_dataset("features", data=features)
            handle.create_dataset("sample_indices", data=np.asarray(sample_indices, dtype=np.int64))
            handle.create_dataset("skipped_indices", data=np.asarray([i for i, _ in skipped], dtype=np.int64))
            handle.create_dataset("skipped_reasons", data=_strings(r for _, r in skipped), dtype=_STRING)

    def chunk_layout(self, index: int) -> tuple[int, tuple, np.dtype]:
        """Row count, per-sample feature shape and dtype of a committed chunk (header only)."""
        try:
            with h5py.File(self._chunk_path(index), "r") as handle:
                features = handle["features"]
                return features.shape[0], features.shape[1:], features.dtype
        except (OSError, KeyError) as error:
            raise self._corrupt(index, f"unreadable ({error})") from error

    def read_chunk(self, index: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        """Features, sample indices and skipped (index, reason) of a committed chunk, checked.

        Raises:
            CorruptEntryError: The file is unreadable, inconsistent or fails its checksum.
        """
        try:
            return self._checked_chunk(index)
        except ValueError as problem:
            raise self._corrupt(index, str(problem)) from problem

    def _checked_chunk(self, index: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        """`read_chunk`, raising `ValueError(problem)` for a bad chunk."""
        try:
            with h5py.File(self._chunk_path(index), "r") as handle:
                kind = (handle.attrs.get("encoding-type"), handle.attrs.get("encoding-version"))
                if kind != (CHUNK_ENCODING_TYPE, ENCODING_VERSION):
                    raise ValueError(f"not a version-{ENCODING_VERSION} layerprobe chunk (encoding {kind})")
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
            raise ValueError(f"unreadable ({error})") from error
        if len(features) != len(sample_indices):
            raise ValueError(f"{len(features)} feature rows for {len(sample_indices)} sample indices")
        if checksum != array_digest(features):
            raise ValueError("its features do not match the checksum recorded when it was written")
        return features, sample_indices, skipped

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class FeatureStore:
    """A directory of committed feature entries, one HDF5 file per key.

    Args:
        root: Store directory; created if missing.

    Raises:
        StoreError: If `root` exists but is not a directory, or cannot be created.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(
                f"The feature store must be a directory, but {self.root} is a file. Pass a "
                f"directory path (it is created if missing). Received: store={os.fspath(root)!r}"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(
                f"Cannot create the feature store directory {self.root}: {error}. Choose a writable "
                f"location. Received: store={os.fspath(root)!r}"
            ) from error

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    # -- paths --------------------------------------------------------------
    def path_for(self, key: FeatureKey) -> Path:
        return self.root / f"{key.entry_name}.h5"

    def has(self, key: FeatureKey) -> bool:
        """Whether a committed entry exists for `key` (cheap: a file check)."""
        return self.path_for(key).is_file()

    def check_writable(self) -> None:
        """Fail early, before any work, if new entries cannot be written here.

        Raises:
            StoreError: If the directory is read-only.
        """
        try:
            with tempfile.NamedTemporaryFile(prefix=".tmp-probe-", dir=self.root):
                pass
        except OSError as error:
            raise StoreError(
                f"Cannot write to the feature store {self.root}: {error}. Make it writable or "
                f"choose another store path (--store). Nothing was computed."
            ) from error

    # -- locking ------------------------------------------------------------
    def _lock_path(self, key: FeatureKey) -> Path:
        return self.root / ".locks" / f"{key.digest}.lock"

    @contextlib.contextmanager
    def lock(self, keys: Iterable[FeatureKey], *, on_wait=None) -> Iterator[None]:
        """Hold exclusive per-key locks (sorted, so two callers cannot deadlock).

        `on_wait(key)` is called before blocking on a key another process holds.
        Once a key is held, what a killed writer of it left behind is deleted
        (see `clean_up`).
        """
        (self.root / ".locks").mkdir(exist_ok=True)
        with contextlib.ExitStack() as stack:
            for key in sorted(set(keys), key=lambda k: k.digest):
                handle = stack.enter_context(open(self._lock_path(key), "a+"))
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if on_wait is not None:
                        on_wait(key)
                    fcntl.flock(handle, fcntl.LOCK_EX)
                self._remove_leftovers(key)
            yield

    def _remove_leftovers(self, key: FeatureKey) -> None:
        """Delete a killed writer's temporary entry files, and the chunks of a committed entry.

        Only while holding the key's lock: the lock holder is the only writer.
        """
        for stray in self.root.glob(f".tmp-{key.entry_name}-*"):
            stray.unlink(missing_ok=True)
        if self.has(key):
            shutil.rmtree(self.root / ".partial" / key.digest, ignore_errors=True)

    def clean_up(self, keys: Iterable[FeatureKey]) -> None:
        """Delete what killed writers of `keys` left behind, for keys no process is writing.

        A writer killed inside `commit` leaves a temporary entry file; one killed
        right after the commit leaves the chunks of a complete entry. Neither is
        ever read; this frees their space. Never waits; keys whose lock another
        process holds are left alone, as are read-only stores.
        """
        for key in keys:
            partial = self.root / ".partial" / key.digest
            if not (next(self.root.glob(f".tmp-{key.entry_name}-*"), None) or (partial.is_dir() and self.has(key))):
                continue
            with contextlib.suppress(OSError), open(self._lock_path(key), "a+") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                self._remove_leftovers(key)

    # -- writing ------------------------------------------------------------
    def partial(self, key: FeatureKey, fingerprint: Mapping[str, Any]) -> PartialEntry:
        """The resumable, chunked work area of `key` (hold `lock([key])`)."""
        return PartialEntry(self.root / ".partial" / key.digest, fingerprint)

    def commit(
        self,
        key: FeatureKey,
        partial: PartialEntry,
        n_chunks: int,
        *,
        sample_ids: Sequence[str],
        labels: np.ndarray,
        splits: Sequence[str],
        class_names: Sequence[str],
        metadata: Mapping[str, Any],
    ) -> Path:
        """Assemble the committed chunks into one entry, atomically, chunk by chunk.

        Memory stays at one chunk whatever the dataset size.

        Raises:
            IncompleteEntryError: If a chunk is missing.
            CorruptEntryError: If a chunk is unreadable or fails its checksum.
            StoreError: If the entry cannot be written (e.g. the disk is full).
        """
        missing = sorted(set(range(n_chunks)) - partial.committed())
        if missing:
            raise IncompleteEntryError(
                f"Cannot commit {key.entry_name}: chunks {missing[:10]} are not computed yet."
            )
        if n_chunks < 1:
            raise ValueError(f"An entry needs at least one chunk. Received: n_chunks={n_chunks!r}")
        layouts = [partial.chunk_layout(index) for index in range(n_chunks)]
        n_total = sum(n_rows for n_rows, _, _ in layouts)
        _, feature_shape, dtype = layouts[0]
        mixed = [i for i, (_, shape, kind) in enumerate(layouts) if (shape, kind) != (feature_shape, dtype)]
        if mixed:
            raise partial._corrupt(
                mixed[0], f"its features do not have chunk 0's per-sample shape {feature_shape} and dtype {dtype}"
            )
        skipped = []
        sample_ids = np.asarray(sample_ids, dtype=object)
        labels = np.asarray(labels, dtype=np.int64)
        splits = np.asarray(splits, dtype=object)
        sha = hashlib.sha256(f"{np.dtype(dtype).str}{(n_total, *feature_shape)}".encode())
        kept = []
        path = self.path_for(key)
        with _atomic_h5(path) as handle:
            out = handle.create_dataset(
                "features",
                shape=(n_total, *feature_shape),
                dtype=dtype,
                chunks=(max(1, min(n_total, 1024)), *feature_shape) if n_total else None,
            )
            offset = 0
            for index in range(n_chunks):
                features, indices, chunk_skipped = partial.read_chunk(index)
                out[offset : offset + len(features)] = features
                sha.update(np.ascontiguousarray(features).tobytes())
                offset += len(features)
                kept.append(indices)
                skipped.extend(chunk_skipped)
            kept_indices = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
            covered = np.sort(np.concatenate([kept_indices, np.asarray([i for i, _ in skipped], dtype=np.int64)]))
            if not np.array_equal(covered, np.arange(len(sample_ids))):
                raise CorruptEntryError(
                    f"Cannot commit {key.entry_name}: the chunks in {partial.directory} do not hold each of "
                    f"the dataset's {len(sample_ids)} samples exactly once ({len(covered)} rows). Delete "
                    f"that folder and extract again."
                )
            handle.create_dataset("labels", data=labels[kept_indices])
            handle.create_dataset("sample_ids", data=sample_ids[kept_indices], dtype=_STRING)
            handle.create_dataset("splits", data=splits[kept_indices], dtype=_STRING)
            handle.create_dataset("class_names", data=_strings(class_names), dtype=_STRING)
            skipped_group = handle.create_group("skipped")
            skipped_group.create_dataset("sample_ids", data=_strings(sample_ids[i] for i, _ in skipped), dtype=_STRING)
            skipped_group.create_dataset("reasons", data=_strings(r for _, r in skipped), dtype=_STRING)
            full_metadata = dict(metadata)
            full_metadata.update(
                n_samples=n_total,
                feature_shape=list(feature_shape),
                n_skipped=len(skipped),
                features_sha256="sha256:" + sha.hexdigest(),
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            )
            handle.attrs["encoding-type"] = ENCODING_TYPE
            handle.attrs["encoding-version"] = ENCODING_VERSION
            handle.attrs["key"] = json.dumps(key.to_dict(), sort_keys=True)
            handle.attrs["metadata"] = json.dumps(full_metadata, sort_keys=True, default=str)
        partial.discard()
        return path

    # -- reading ------------------------------------------------------------
    def _corrupt(self, path: Path, problem: str) -> CorruptEntryError:
        return CorruptEntryError(
            f"Store entry {path.stem!r} in {self.root} is corrupt: {problem}. Remove it with "
            f"`layerprobe store rm {self.root} {path.stem}` (or delete {path}) and extract again; "
            f"other entries are not affected."
        )

    def _open(self, path: Path) -> h5py.File:
        try:
            handle = h5py.File(path, "r")
        except OSError as error:
            raise self._corrupt(path, f"not a readable HDF5 file ({error})") from error
        if handle.attrs.get("encoding-type") != ENCODING_TYPE:
            handle.close()
            raise self._corrupt(path, "it is not a layerprobe feature entry")
        version = handle.attrs.get("encoding-version")
        if version != ENCODING_VERSION:
            handle.close()
            raise self._corrupt(
                path,
                f"encoding-version {version!r} is not the {ENCODING_VERSION!r} this layerprobe reads "
                f"(written by another version; upgrade layerprobe or re-extract)",
            )
        return handle

    def _header(self, path: Path, handle: h5py.File) -> tuple[FeatureKey, dict]:
        try:
            key = FeatureKey.from_dict(json.loads(handle.attrs["key"]))
            metadata = json.loads(handle.attrs["metadata"])
        except (KeyError, TypeError, ValueError) as error:
            raise self._corrupt(path, f"its key/metadata attributes are unreadable ({error})") from error
        if path.stem != key.entry_name:
            raise self._corrupt(path, f"its key belongs to entry {key.entry_name!r}, not to this file")
        return key, metadata

    def resolve(self, name: str) -> Path:
        """Path of the entry named `name` (entry name, file name, or a unique digest prefix).

        Raises:
            EntryNotFoundError: If nothing or more than one entry matches.
        """
        candidates = [self.root / name, self.root / f"{name}.h5"]
        for candidate in candidates:
            if candidate.is_file() and candidate.parent == self.root:
                return candidate
        matches = [p for p in self._entry_paths() if p.stem.rsplit(".", 1)[-1].startswith(name)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(p.stem for p in self._entry_paths()[:10]) or "none"
        problem = "matches several entries" if matches else "matches no entry"
        raise EntryNotFoundError(
            f"{name!r} {problem} in {self.root}. `layerprobe store ls {self.root}` lists the "
            f"entries (first ones: {known}). Received: name={name!r}"
        )

    def _entry_paths(self) -> list[Path]:
        return sorted(p for p in self.root.glob("*.h5") if not p.name.startswith(".tmp-"))

    def entries(self) -> list[dict[str, Any]]:
        """A summary row per entry; unreadable entries get `status: "corrupt: ..."`."""
        rows = []
        for path in self._entry_paths():
            row: dict[str, Any] = {"entry": path.stem, "size_mb": round(path.stat().st_size / 2**20, 2)}
            try:
                with self._open(path) as handle:
                    key, metadata = self._header(path, handle)
                row.update(key.to_dict())
                row.update(
                    n_samples=metadata.get("n_samples"),
                    feature_shape=metadata.get("feature_shape"),
                    n_skipped=metadata.get("n_skipped"),
                    created=metadata.get("created"),
                    status="ok",
                )
            except CorruptEntryError as error:
                row["status"] = f"corrupt: {error}"
            rows.append(row)
        return rows

    def info(self, name: str) -> dict[str, Any]:
        """Key, metadata and dataset shapes of one entry."""
        path = self.resolve(name)
        with self._open(path) as handle:
            key, metadata = self._header(path, handle)
            shapes = {
                dataset_name: list(handle[dataset_name].shape)
                for dataset_name in ("features", "labels", "sample_ids", "splits")
                if dataset_name in handle
            }
            try:
                skipped = list(
                    zip(
                        _read_strings(handle["skipped/sample_ids"]).tolist(),
                        _read_strings(handle["skipped/reasons"]).tolist(),
                    )
                )
            except KeyError as error:
                raise self._corrupt(path, f"its list of skipped files is missing ({error})") from error
        return {
            "entry": path.stem,
            "path": str(path),
            "key": key.to_dict(),
            "metadata": metadata,
            "datasets": shapes,
            "skipped": skipped,
        }

    def remove(self, name: str) -> Path:
        """Delete one committed entry (readers holding it open keep their copy)."""
        path = self.resolve(name)
        path.unlink()
        return path

    def load(self, key: FeatureKey | str, *, split: str | None = None, verify: bool = True) -> FeatureSet:
        """Read one entry (by key or name), checked against its own metadata.

        Args:
            key: A `FeatureKey` or an entry name / digest prefix.
            split: Only this split, e.g. `"train"`.
            verify: Recompute the features checksum and compare it with the
                one recorded at commit (about 1 s per GB).

        Raises:
            IncompleteEntryError: No committed entry for this key (not extracted,
                or an extraction was interrupted: run it again to resume).
            CorruptEntryError: The file is unreadable or inconsistent.
        """
        if isinstance(key, FeatureKey):
            path = self.path_for(key)
            if not path.is_file():
                partial = (self.root / ".partial" / key.digest).is_dir()
                state = "an interrupted extraction left partial work; run the extraction again to resume" if partial else "it was never extracted"
                raise IncompleteEntryError(
                    f"No complete features for {key.backbone} layer {key.layer!r} ({key.pooling}) in "
                    f"{self.root}: {state}."
                )
        else:
            path = self.resolve(key)
        with self._open(path) as handle:
            stored_key, metadata = self._header(path, handle)
            try:
                X = handle["features"][()]
                y = handle["labels"][()]
                sample_ids = _read_strings(handle["sample_ids"])
                splits = _read_strings(handle["splits"])
                class_names = tuple(_read_strings(handle["class_names"]).tolist())
            except (KeyError, OSError) as error:
                raise self._corrupt(path, f"a dataset is missing or unreadable ({error})") from error
        lengths = {len(X), len(y), len(sample_ids), len(splits)}
        if len(lengths) != 1 or len(X) != metadata.get("n_samples"):
            raise self._corrupt(
                path,
                f"row counts disagree (features {len(X)}, labels {len(y)}, sample_ids {len(sample_ids)}, "
                f"splits {len(splits)}, metadata n_samples {metadata.get('n_samples')})",
            )
        if list(X.shape[1:]) != list(metadata.get("feature_shape", [])):
            raise self._corrupt(path, f"feature shape {X.shape[1:]} differs from metadata {metadata.get('feature_shape')}")
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise self._corrupt(path, f"labels outside [0, {len(class_names)})")
        if verify:
            actual = array_digest(X)
            if actual != metadata.get("features_sha256"):
                raise self._corrupt(path, "its features do not match the checksum recorded at commit")
        features = FeatureSet(
            X=X, y=y, sample_ids=sample_ids, splits=splits, class_names=class_names, key=stored_key, metadata=metadata
        )
        return features.split(split) if split is not None else features


def library_versions() -> dict[str, str]:
    """Versions recorded in every entry's metadata (not part of the key)."""
    versions = {"python": sys.version.split()[0], "h5py": h5py.__version__, "numpy": np.__version__}
    with contextlib.suppress(Exception):
        import keras

        versions["keras"] = keras.__version__
        versions["keras_backend"] = keras.backend.backend()
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        versions["layerprobe"] = version("layerprobe")
    return versions
