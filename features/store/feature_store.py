"""`FeatureStore`: the store directory, its entries and their life cycle (list, info, load, commit, remove).

Layout of a store directory::

    STORE/
      <entry_name>.h5            one committed entry per feature key
      .partial/<digest>/         chunks of an unfinished extraction (`partial.py`)
      .locks/<digest>.lock       per-key lock (`locks.py`)

Every file is written under a temporary name (`.tmp-<final name>.<random>`,
see `layerprobe.features.atomic`) and committed by atomic rename, so a killed
extraction leaves committed chunks, perhaps a stray temporary file (ignored,
and deleted by the next holder of the key's lock), but never a file that
reads as a complete entry. Readers need no lock: they only open committed files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from layerprobe.features.atomic import TMP_PREFIX
from layerprobe.features.digests import array_digest
from layerprobe.features.errors import CorruptEntryError, EntryNotFoundError, IncompleteEntryError, StoreError
from layerprobe.features.keys import FeatureKey
from layerprobe.features.store import hdf5, locks
from layerprobe.features.store.feature_set import FeatureSet
from layerprobe.features.store.partial import PARTIAL_FOLDER, PartialEntry

__all__ = ["FeatureStore"]


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
        """Where the committed entry of `key` is (or would be)."""
        return self.root / f"{key.entry_name}.h5"

    def has(self, key: FeatureKey) -> bool:
        """Whether a committed entry exists for `key` (cheap: a file check)."""
        return self.path_for(key).is_file()

    def _partial_directory(self, key: FeatureKey) -> Path:
        return self.root / PARTIAL_FOLDER / key.digest

    def _temporary_files(self, key: FeatureKey) -> list[Path]:
        """Temporary entry files of `key` that a killed writer left (`atomic.temporary_path` names)."""
        name = self.path_for(key).name
        # The second pattern: the `.tmp-<stem>-<random>.h5` names the store used before `atomic.py`.
        patterns = (f"{TMP_PREFIX}{name}.*", f"{TMP_PREFIX}{key.entry_name}-*")
        return [path for pattern in patterns for path in self.root.glob(pattern)]

    def check_writable(self) -> None:
        """Fail early, before any work, if new entries cannot be written here.

        Raises:
            StoreError: If the directory is read-only.
        """
        try:
            with tempfile.NamedTemporaryFile(prefix=f"{TMP_PREFIX}probe-", dir=self.root):
                pass
        except OSError as error:
            raise StoreError(
                f"Cannot write to the feature store {self.root}: {error}. Make it writable or "
                f"choose another store path (--store). Nothing was computed."
            ) from error

    # -- locking ------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, keys: Iterable[FeatureKey], *, on_wait: Callable[[FeatureKey], None] | None = None) -> Iterator[None]:
        """Hold exclusive per-key locks (sorted, so two callers cannot deadlock).

        `on_wait(key)` is called before blocking on a key another process holds.
        Once the keys are held, what killed writers of them left behind is
        deleted (see `clean_up`).
        """
        with locks.hold(self.root, keys, on_wait=on_wait) as held:
            for key in held:
                self._remove_leftovers(key)
            yield

    def _remove_leftovers(self, key: FeatureKey) -> None:
        """Delete a killed writer's temporary entry files, and the chunks of a committed entry.

        Only while holding the key's lock: the lock holder is the only writer.
        """
        for stray in self._temporary_files(key):
            stray.unlink(missing_ok=True)
        if self.has(key):
            shutil.rmtree(self._partial_directory(key), ignore_errors=True)

    def clean_up(self, keys: Iterable[FeatureKey]) -> None:
        """Delete what killed writers of `keys` left behind, for keys no process is writing.

        A writer killed inside `commit` leaves a temporary entry file; one killed
        right after the commit leaves the chunks of a complete entry. Neither is
        ever read; this frees their space. Never waits; keys whose lock another
        process holds are left alone, as are read-only stores.
        """
        for key in keys:
            if not (self._temporary_files(key) or (self._partial_directory(key).is_dir() and self.has(key))):
                continue
            with contextlib.suppress(OSError), locks.hold_if_free(self.root, key) as held:
                if held:
                    self._remove_leftovers(key)

    # -- writing ------------------------------------------------------------
    def partial(self, key: FeatureKey, fingerprint: Mapping[str, Any]) -> PartialEntry:
        """The resumable, chunked work area of `key` (hold `lock([key])`)."""
        return PartialEntry(self._partial_directory(key), fingerprint)

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
            StoreError: If the entry cannot be written (e.g. the disk is full), or `n_chunks` < 1.
        """
        missing = sorted(set(range(n_chunks)) - partial.committed())
        if missing:
            raise IncompleteEntryError(
                f"Cannot commit {key.entry_name}: chunks {missing[:10]} are not computed yet."
            )
        if n_chunks < 1:
            raise StoreError(f"An entry needs at least one chunk. Received: n_chunks={n_chunks!r}")
        layouts = [partial.chunk_layout(index) for index in range(n_chunks)]
        n_total = sum(n_rows for n_rows, _, _ in layouts)
        _, feature_shape, dtype = layouts[0]
        mixed = [i for i, (_, shape, kind) in enumerate(layouts) if (shape, kind) != (feature_shape, dtype)]
        if mixed:
            raise partial.corrupt(
                mixed[0], f"its features do not have chunk 0's per-sample shape {feature_shape} and dtype {dtype}"
            )
        sample_ids = np.asarray(sample_ids, dtype=object)
        labels = np.asarray(labels, dtype=np.int64)
        splits = np.asarray(splits, dtype=object)
        kept, skipped = [], []
        path = self.path_for(key)
        with hdf5.new_entry(path, n_samples=n_total, feature_shape=feature_shape, dtype=dtype) as entry:
            for index in range(n_chunks):
                features, indices, chunk_skipped = partial.read_chunk(index)
                entry.append(features)
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
            entry.finish(
                labels=labels[kept_indices],
                sample_ids=sample_ids[kept_indices],
                splits=splits[kept_indices],
                class_names=class_names,
                skipped=[(sample_ids[i], reason) for i, reason in skipped],
                key=key.to_dict(),
                metadata={
                    **metadata,
                    "n_samples": n_total,
                    "feature_shape": list(feature_shape),
                    "n_skipped": len(skipped),
                    "features_sha256": entry.features_digest,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
        partial.discard()
        return path

    # -- reading ------------------------------------------------------------
    def _corrupt(self, path: Path, problem: str) -> CorruptEntryError:
        return CorruptEntryError(
            f"Store entry {path.stem!r} in {self.root} is corrupt: {problem}. Remove it with "
            f"`layerprobe store rm {self.root} {path.stem}` (or delete {path}) and extract again; "
            f"other entries are not affected."
        )

    @contextlib.contextmanager
    def _reading(self, path: Path) -> Iterator[hdf5.EntryReader]:
        """Open the entry at `path`; any problem with it inside the block becomes a `CorruptEntryError`."""
        try:
            with hdf5.open_entry(path) as entry:
                yield entry
        except hdf5.FileProblem as problem:
            raise self._corrupt(path, str(problem)) from problem

    def _header(self, path: Path, entry: hdf5.EntryReader) -> tuple[FeatureKey, dict]:
        key_fields, metadata = entry.header()
        try:
            key = FeatureKey.from_dict(key_fields)
        except (TypeError, ValueError) as error:
            raise hdf5.FileProblem(f"its key/metadata attributes are unreadable ({error})") from error
        if path.stem != key.entry_name:
            raise hdf5.FileProblem(f"its key belongs to entry {key.entry_name!r}, not to this file")
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
        return sorted(p for p in self.root.glob("*.h5") if not p.name.startswith(TMP_PREFIX))

    def entries(self) -> list[dict[str, Any]]:
        """A summary row per entry; unreadable entries get `status: "corrupt: ..."`."""
        rows = []
        for path in self._entry_paths():
            row: dict[str, Any] = {"entry": path.stem, "size_mb": round(path.stat().st_size / 2**20, 2)}
            try:
                with self._reading(path) as entry:
                    key, metadata = self._header(path, entry)
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
        """Key, metadata, dataset shapes and skipped files of one entry.

        Raises:
            EntryNotFoundError: If no entry matches `name`.
            CorruptEntryError: If the entry is unreadable.
        """
        path = self.resolve(name)
        with self._reading(path) as entry:
            key, metadata = self._header(path, entry)
            shapes = entry.shapes()
            skipped = entry.skipped()
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
            InputError: If `split` names a split the entry does not have.
        """
        if isinstance(key, FeatureKey):
            path = self.path_for(key)
            if not path.is_file():
                if self._partial_directory(key).is_dir():
                    state = "an interrupted extraction left partial work; run the extraction again to resume"
                else:
                    state = "it was never extracted"
                raise IncompleteEntryError(
                    f"No complete features for {key.backbone} layer {key.layer!r} ({key.pooling}) in "
                    f"{self.root}: {state}."
                )
        else:
            path = self.resolve(key)
        with self._reading(path) as entry:
            stored_key, metadata = self._header(path, entry)
            X, y, sample_ids, splits, class_names = entry.arrays()
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
        if verify and array_digest(X) != metadata.get("features_sha256"):
            raise self._corrupt(path, "its features do not match the checksum recorded at commit")
        features = FeatureSet(
            X=X, y=y, sample_ids=sample_ids, splits=splits, class_names=class_names, key=stored_key, metadata=metadata
        )
        return features.split(split) if split is not None else features
