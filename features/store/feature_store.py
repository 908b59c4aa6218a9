"""`FeatureStore`: the store directory, its entries and their life cycle (list, info, load, commit, remove).

Layout of a store directory::

    STORE/
      <entry_name>.h5            one committed entry per feature key
      .partial/<digest>/         chunks of an unfinished extraction (`partial.py`)
      .locks/<digest>.lock       per-key lock, naming its holder (`locks.py`)

Every file is written under a temporary name (`.tmp-<final name>.<random>`,
see `layerprobe.core.atomic`) and committed by atomic rename, so a killed
extraction leaves committed chunks, perhaps a stray temporary file (ignored,
and deleted by the next holder of the key's lock), but never a file that
reads as a complete entry. Readers need no lock: they only open committed files.

Reading: `load` returns an entry's arrays whole; `stream` hands its features out in row
blocks (`FeatureStream`), so that a pass over a layer of any size holds one block.

Errors reading an entry say what is wrong: `CorruptEntryError` (remove it with
`layerprobe store rm`) only when its content is wrong; `EntryLockedError` when
another process holds HDF5's lock on it; `StoreError` for permission denied;
`EntryNotFoundError` when it disappeared.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ...core.atomic import TMP_PREFIX
from ...core.digests import encode_text, start_array
from ...core.errors import (
    CorruptEntryError,
    EntryLockedError,
    EntryNotFoundError,
    IncompleteEntryError,
    StoreError,
)
from ..environment import environment_differences, numerics_environment
from ..keys import FeatureKey
from . import hdf5, locks
from .feature_set import FeatureSet, FeatureStream
from .partial import PARTIAL_FOLDER, PartialEntry

__all__ = ["FeatureStore"]


class FeatureStore:
    """A directory of committed feature entries, one HDF5 file per key.

    Args:
        root: Store directory; created if missing.
        lock_timeout: Seconds an extraction waits for a key another process is
            extracting before it gives up with `EntryLockedError` naming that
            process; None: `$LAYERPROBE_LOCK_TIMEOUT`, else 3600.

    Raises:
        StoreError: If `root` exists but is not a directory, or cannot be created.
    """

    def __init__(self, root: str | os.PathLike, *, lock_timeout: float | None = None):
        self.root = Path(root).expanduser()
        self.lock_timeout = lock_timeout
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

        `on_wait(key)` is called before waiting for a key another process holds
        (`lock_holder(key)` says who). Once the keys are held, what killed writers
        of them left behind is deleted (see `clean_up`).

        Raises:
            EntryLockedError: If another process holds a key longer than `lock_timeout`.
            StoreError: If the lock files cannot be created (see `locks`).
        """
        with locks.hold(self.root, keys, on_wait=on_wait, timeout=self.lock_timeout) as held:
            for key in held:
                self._remove_leftovers(key)
            yield

    def lock_holder(self, key: FeatureKey) -> str:
        """Who holds (or last held) `key`'s lock: "pid N on HOST since TIME"."""
        return locks.holder(locks.lock_path(self.root, key))

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
        root: str | os.PathLike | None = None,
    ) -> Path:
        """Assemble the committed chunks into one entry, atomically, chunk by chunk.

        Memory stays at one chunk whatever the dataset size. With `root` (the dataset's
        folder), the sample ids (file paths) are stored relative to it and `root` is
        recorded as `metadata["dataset_root"]`, so that a moved dataset keeps working.
        The chunks' numerics environment is recorded as `metadata["environment"]`.

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
        root = None if root is None else os.path.abspath(root)
        labels = np.asarray(labels, dtype=np.int64)
        splits = np.asarray(splits, dtype=object)
        kept, skipped = [], []
        path = self.path_for(key)
        # Sample ids (as given: at least as long as relative ones), splits, labels, skipped reasons:
        # their size, for the free-space check.
        extra = sum(len(encode_text(str(sample_id))) + 40 for sample_id in sample_ids)
        with hdf5.new_entry(path, n_samples=n_total, feature_shape=feature_shape, dtype=dtype, extra_bytes=extra) as entry:
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
            stored_ids = _StoredSampleIds(sample_ids, kept_indices, root)
            entry.finish(
                labels=labels[kept_indices],
                sample_ids=stored_ids,
                splits=splits[kept_indices],
                class_names=class_names,
                skipped=[(stored_ids.stored(sample_ids[i]), reason) for i, reason in skipped],
                key=key.to_dict(),
                sample_ids_relative=root is not None,
                metadata={
                    **metadata,
                    **({"dataset_root": root} if root is not None else {}),
                    **({"environment": partial.fingerprint["environment"]} if "environment" in partial.fingerprint else {}),
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

    def _problem(self, path: Path, problem: hdf5.FileProblem) -> StoreError:
        """The error for an entry that cannot be read, by why: only wrong content is "corrupt"."""
        if problem.kind == "locked":
            holders = hdf5.holders_of(path)
            who = f" It is held by {', '.join(holders)}." if holders else ""
            if "does not support" in str(problem):
                return EntryLockedError(
                    f"Store entry {path.stem!r} in {self.root} cannot be opened: {problem}. The entry is not "
                    f"corrupt. Set HDF5_USE_FILE_LOCKING=FALSE (committed entries are never written in place, "
                    f"so readers do not need HDF5's lock) and run again."
                )
            return EntryLockedError(
                f"Store entry {path.stem!r} in {self.root} is locked: {problem}.{who} The entry is not corrupt: "
                f"wait until that process closes it (layerprobe itself never opens a committed entry for "
                f"writing, so it is another program, e.g. an h5py session in mode 'a' or 'r+') and run again."
            )
        if problem.kind == "permission":
            return StoreError(
                f"Cannot read store entry {path.stem!r} in {self.root}: {problem}. The entry is not corrupt; "
                f"this user may not read it. Ask its owner to run `chmod a+r {path}` (or `chmod -R g+rX "
                f"{self.root}` for a group-shared store), or use a store of your own."
            )
        if problem.kind == "missing":
            return EntryNotFoundError(
                f"Store entry {path.stem!r} disappeared from {self.root} while it was being read "
                f"(removed by another process?). `layerprobe store ls {self.root}` lists the entries."
            )
        return self._corrupt(path, str(problem))

    @contextlib.contextmanager
    def _reading(self, path: Path) -> Iterator[hdf5.EntryReader]:
        """Open the entry at `path`; a problem with it inside the block becomes the matching `StoreError`."""
        try:
            with hdf5.open_entry(path) as entry:
                yield entry
        except hdf5.FileProblem as problem:
            raise self._problem(path, problem) from problem

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
        """A summary row per entry, with its `status`: "ok", or why it cannot be read.

        Statuses: `"ok"`, `"corrupt: ..."` (remove it), `"locked: ..."` (another process
        holds it), `"unreadable: ..."` (permission denied). An entry removed while listing
        is left out.
        """
        rows = []
        for path in self._entry_paths():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            row: dict[str, Any] = {"entry": path.stem, "size_mb": round(size / 2**20, 2)}
            try:
                with self._reading(path) as entry:
                    key, metadata = self._header(path, entry)
                row.update(key.to_dict())
                row.update(
                    n_samples=metadata.get("n_samples"),
                    feature_shape=metadata.get("feature_shape"),
                    n_skipped=metadata.get("n_skipped"),
                    created=metadata.get("created"),
                    weights_source=metadata.get("weights_source"),
                    dataset_root=metadata.get("dataset_root"),
                    status="ok",
                )
            except CorruptEntryError as error:
                row["status"] = f"corrupt: {error}"
            except EntryLockedError as error:
                row["status"] = f"locked: {error}"
            except EntryNotFoundError:
                continue
            except StoreError as error:
                row["status"] = f"unreadable: {error}"
            rows.append(row)
        return rows

    def info(self, name: str, *, root: str | os.PathLike | None = None) -> dict[str, Any]:
        """Key, metadata (numerics environment included), dataset shapes and skipped files of one entry.

        Args:
            name: Entry name, file name or unique digest prefix.
            root: The dataset's folder now; skipped sample ids stored relative to the dataset
                root are made absolute against it (default: the root at extraction).

        Raises:
            EntryNotFoundError: If no entry matches `name`.
            CorruptEntryError: If the entry's content is wrong.
            EntryLockedError: If another process holds HDF5's lock on it.
            StoreError: If this user may not read it.
        """
        path = self.resolve(name)
        with self._reading(path) as entry:
            key, metadata = self._header(path, entry)
            shapes = entry.shapes()
            skipped = entry.skipped()
            relative = entry.sample_ids_relative
            version = entry.version
        if relative:
            base = _base(root, metadata)
            skipped = [(_absolute(sample_id, base), reason) for sample_id, reason in skipped]
        return {
            "entry": path.stem,
            "path": str(path),
            "encoding_version": version,
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

    def load(
        self,
        key: FeatureKey | str,
        *,
        split: str | None = None,
        verify: bool = True,
        strict_environment: bool = False,
        root: str | os.PathLike | None = None,
    ) -> FeatureSet:
        """Read one entry (by key or name), checked against its own metadata.

        Args:
            key: A `FeatureKey` or an entry name / digest prefix.
            split: Only this split, e.g. `"train"` (only its rows are held in memory).
            verify: Check everything read (features, labels, sample ids, splits,
                class names, skipped files, key and metadata) against the checksums
                recorded at commit; the features are hashed while they are read (one
                sha256 pass; memory stays at the features plus one 16 MB block). An
                entry written before every part was checksummed (encoding version 1
                or 2) has only its features checked, with a `UserWarning` saying so.
            strict_environment: Refuse an entry computed in another numerics
                environment (backend, its version, Keras, device, oneDNN/XLA/TF32
                flags, Pillow... see `layerprobe.features.environment`) than this
                process's. By default such an entry is used: the environment is
                recorded in `metadata["environment"]`, not part of the key.
            root: The dataset's folder now. Sample ids stored relative to the dataset
                root are made absolute against it (default: the folder recorded at
                extraction, `metadata["dataset_root"]`).

        Raises:
            IncompleteEntryError: No committed entry for this key (not extracted,
                or an extraction was interrupted: run it again to resume).
            CorruptEntryError: The file's content is wrong or inconsistent, or (with
                `verify`) a part does not match its checksum; the message names it.
            EntryLockedError: Another process holds HDF5's lock on the file.
            StoreError: This user may not read the file; or, with `strict_environment`,
                the entry was computed in another environment (the message lists
                the fields that differ).
            InputError: If `split` names a split the entry does not have.
        """
        path = self._entry_path(key)
        if strict_environment:
            with self._reading(path) as entry:
                _, recorded = self._header(path, entry)
            self._check_environment(path, recorded)
        if split is not None:  # only that split's rows are held, read in one streamed pass
            return self.stream(key, split=split, verify=verify, root=root).load()
        features, unchecked = self._read(path, verify=verify, root=root)
        if unchecked:
            warnings.warn(f"Store entry {path.stem!r}: {unchecked}", UserWarning, stacklevel=2)
        return features

    def stream(
        self,
        key: FeatureKey | str,
        *,
        split: str | None = None,
        verify: bool = True,
        root: str | os.PathLike | None = None,
    ) -> FeatureStream:
        """One entry's features as a `FeatureStream`: handed out in row blocks, never whole.

        Labels, sample ids, splits, class names, key and metadata are read and checked
        now (as `load` does); the features are read block by block each time the stream
        is iterated, and (with `verify`) hashed as they stream: the first full pass ends
        with a `CorruptEntryError` if they do not match their checksum.

        Args:
            key, split, verify, root: As `load`.

        Raises:
            As `load` (a corrupt features dataset: when a pass reaches its end).
        """
        path = self._entry_path(key)
        parts, unchecked, features_digest, dtype = self._read_parts(path, verify=verify, root=root, with_features=False)
        if unchecked:
            warnings.warn(f"Store entry {path.stem!r}: {unchecked}", UserWarning, stacklevel=2)
        stream = FeatureStream(
            blocks=lambda block_rows, check: self._feature_blocks(path, block_rows, features_digest if check else None),
            view=lambda: self._feature_view(path),
            n_rows=len(parts["y"]),
            dtype=dtype,
            verified=not verify,
            **{name: value for name, value in parts.items() if name != "X"},
        )
        return stream.split(split) if split is not None else stream

    def _feature_blocks(self, path: Path, block_rows: int | None, digest: str | None) -> Iterator[tuple[int, np.ndarray]]:
        """The entry's feature blocks (`EntryReader.feature_blocks`); with `digest`, a `CorruptEntryError`
        after the last block if they do not match it."""
        with self._reading(path) as entry:
            sha = None
            if digest is not None:
                sha = hashlib.sha256()
                shape = tuple(entry.shapes()["features"])
                dtype = entry.feature_dtype
                start_array(sha, dtype, shape)
            yield from entry.feature_blocks(block_rows=block_rows, sha=sha)
        if sha is not None and "sha256:" + sha.hexdigest() != digest:
            raise self._corrupt(path, "its features do not match the checksum recorded at commit")

    def _feature_view(self, path: Path) -> np.ndarray | None:
        with self._reading(path) as entry:
            return entry.feature_view()

    def _entry_path(self, key: FeatureKey | str) -> Path:
        """The committed entry of `key` (or of a name / digest prefix).

        Raises:
            IncompleteEntryError: No committed entry for this key.
            EntryNotFoundError: No entry of this name.
        """
        if not isinstance(key, FeatureKey):
            return self.resolve(key)
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
        return path

    def verify(self, name: str) -> str:
        """Check one entry against every checksum it records; says what was checked.

        Returns:
            "features, labels, ... match their checksums", or for an entry written before
            every part was checksummed (encoding version 1 or 2), that only its features
            match and what it has no checksum of.

        Raises:
            CorruptEntryError: If a part does not match its checksum (the message names it),
                or the entry is otherwise inconsistent.
            EntryNotFoundError, EntryLockedError, StoreError: As `info`.
        """
        _, unchecked = self._read(self.resolve(name), verify=True)
        if unchecked:
            return f"features match their checksum; {unchecked}"
        return f"{', '.join(hdf5.CHECKSUMS[:-2])}, key and metadata match their checksums"

    def _read(self, path: Path, *, verify: bool, root=None) -> tuple[FeatureSet, str | None]:
        """The entry at `path`, checked (see `load`), and None or, for an entry that records no
        checksum of its other parts, a note saying so."""
        parts, unchecked, _, _ = self._read_parts(path, verify=verify, root=root, with_features=True)
        return FeatureSet(**parts), unchecked

    def _read_parts(
        self, path: Path, *, verify: bool, root, with_features: bool
    ) -> tuple[dict[str, Any], str | None, str | None, np.dtype]:
        """The fields of the entry's `FeatureSet` (X None without `with_features`), checked; the note of
        `_read`; the features' recorded digest (for a stream to check them against) and dtype."""
        with self._reading(path) as entry:
            stored_key, metadata = self._header(path, entry)
            X, y, sample_ids, splits, class_names, digests = entry.arrays(verify=verify, with_features=with_features)
            shape = tuple(entry.shapes()["features"]) if X is None else X.shape
            dtype = entry.feature_dtype
            recorded = entry.checksums() if verify else None
            relative = entry.sample_ids_relative
            version = entry.version
        if relative:  # in place: the relative ids are let go one by one
            base = _base(root, metadata)
            for index, sample_id in enumerate(sample_ids):
                sample_ids[index] = _absolute(sample_id, base)
        lengths = {shape[0], len(y), len(sample_ids), len(splits)}
        if len(lengths) != 1 or shape[0] != metadata.get("n_samples"):
            raise self._corrupt(
                path,
                f"row counts disagree (features {shape[0]}, labels {len(y)}, sample_ids {len(sample_ids)}, "
                f"splits {len(splits)}, metadata n_samples {metadata.get('n_samples')})",
            )
        if list(shape[1:]) != list(metadata.get("feature_shape", [])):
            raise self._corrupt(path, f"feature shape {shape[1:]} differs from metadata {metadata.get('feature_shape')}")
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise self._corrupt(path, f"labels outside [0, {len(class_names)})")
        unchecked = None
        features_digest = None
        if verify and recorded is not None:
            features_digest = recorded["features"]
            # (a stream's features, not read here, have digest None: checked as they stream)
            wrong = [name for name in hdf5.CHECKSUMS if digests[name] is not None and digests[name] != recorded[name]]
            if wrong:
                raise self._corrupt(path, f"its {', '.join(wrong)} do not match the checksums recorded at commit")
        elif verify:
            features_digest = metadata.get("features_sha256")
            if with_features and digests["features"] != features_digest:
                raise self._corrupt(path, "its features do not match the checksum recorded at commit")
            others = ", ".join(hdf5.CHECKSUMS[1:-1])
            unchecked = (
                f"this entry (encoding version {version}) has no checksum of its {others} and metadata, so only "
                f"its features are verified: it was written by an older layerprobe. To have all of it verified, "
                f"remove it (`layerprobe store rm {self.root} {path.stem}`) and extract again."
            )
        parts = dict(
            X=X, y=y, sample_ids=sample_ids, splits=splits, class_names=class_names, key=stored_key, metadata=metadata
        )
        return parts, unchecked, features_digest, dtype

    def _check_environment(self, path: Path, metadata: Mapping[str, Any]) -> None:
        """Raise a `StoreError` listing the fields where the entry's environment differs from this process's."""
        recorded = metadata.get("environment")
        if not isinstance(recorded, dict):
            raise StoreError(
                f"Store entry {path.stem!r} in {self.root} records no numerics environment (written by an "
                f"older layerprobe), so strict_environment=True cannot check it. Remove it with "
                f"`layerprobe store rm {self.root} {path.stem}` and extract again, or load it with "
                f"strict_environment=False."
            )
        differences = environment_differences(recorded, numerics_environment(probe_device=True))
        if differences:
            listed = "; ".join(f"{field}: {then!r} then, {now!r} now" for field, (then, now) in differences.items())
            raise StoreError(
                f"Store entry {path.stem!r} in {self.root} was computed in another numerics environment: "
                f"{listed}. Its features may differ from this environment's in the last bits. Extract it "
                f"again here (remove it with `layerprobe store rm {self.root} {path.stem}`, or use another "
                f"store), or load it with strict_environment=False."
            )


class _StoredSampleIds(Sequence[str]):
    """The sample ids an entry stores, made as they are written: the kept samples' ids, relative to
    the dataset root where one is given. A commit writes them a block at a time (`hdf5`), so a
    million paths are not copied whole, once per layer."""

    def __init__(self, sample_ids: Sequence[str], kept: np.ndarray, root: str | None):
        self._sample_ids, self._kept, self._root = sample_ids, kept, root

    def __len__(self) -> int:
        return len(self._kept)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.stored(self._sample_ids[i]) for i in self._kept[index].tolist()]
        return self.stored(self._sample_ids[int(self._kept[index])])

    def stored(self, sample_id: str) -> str:
        """One sample id as stored."""
        return sample_id if self._root is None else _relative(sample_id, self._root)


def _relative(sample_id: str, root: str) -> str:
    """A file sample id as a POSIX path relative to the dataset root (array ids are kept).

    A normalised path under `root` loses its prefix; only others go through
    `os.path.relpath`, whose cost per call, once for every sample of every layer, was
    most of a commit's time (measured in benchmarks/RESULTS.md, vit_depth_sweep).
    """
    if sample_id.startswith("array:") or not os.path.isabs(sample_id):
        return sample_id
    prefix = root.rstrip(os.sep) + os.sep
    if sample_id.startswith(prefix) and os.path.normpath(sample_id) == sample_id:
        relative = sample_id[len(prefix):]
    else:
        relative = os.path.relpath(sample_id, root)
    return relative.replace(os.sep, "/")


def _base(root: str | os.PathLike | None, metadata: Mapping[str, Any]) -> str | None:
    """The folder relative sample ids are resolved against: `root`, else the one recorded at extraction."""
    if root is not None:
        return os.path.abspath(os.path.expanduser(os.fspath(root)))
    return metadata.get("dataset_root")


def _absolute(sample_id: str, base: str | None) -> str:
    if base is None or sample_id.startswith("array:") or posixpath.isabs(sample_id):
        return sample_id
    return os.path.normpath(os.path.join(base, *sample_id.split("/")))
