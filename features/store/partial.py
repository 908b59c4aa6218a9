"""The committed chunks of one key's unfinished extraction, and the settings they were computed with.

Layout, under the store's `.partial/<key digest>/`::

    chunk_000012.h5      one committed chunk (see `layerprobe.features.store.hdf5`)
    fingerprint.json     settings the chunks were computed with (batch size, chunk size...)
                         and the numerics environment (`layerprobe.features.environment`)

A killed extraction leaves committed chunks (and perhaps a stray temporary
file); the next run resumes from them, after checking each against the
checksum and the fingerprint it was written with, so that an entry never
mixes chunks of two settings or two environments. Only files named exactly
`chunk_<6 digits>.h5` are chunks; anything else a user left here is ignored
(and listed in `ignored`). Only the holder of the key's lock writes here.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...core.atomic import TMP_PREFIX, write_text_atomically
from ...core.errors import CorruptEntryError, EntryLockedError, StoreError
from ...core.files import RECORD_MAX_BYTES, read_bounded_text
from ..environment import environment_differences
from . import hdf5
from .failures import writing

__all__ = ["PARTIAL_FOLDER", "PartialEntry"]

PARTIAL_FOLDER = ".partial"
_FINGERPRINT = "fingerprint.json"
_CHUNK_NAME = re.compile(r"chunk_(\d{6})\.h5")


def _what_differs(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """"other settings (batch_size 2 -> 4)" or "another numerics environment (env.TF_ENABLE_ONEDNN_OPTS '1' -> '0')"."""
    settings = [
        f"{name} {stored.get(name)!r} -> {current.get(name)!r}"
        for name in sorted((set(stored) | set(current)) - {"environment"})
        if stored.get(name) != current.get(name)
    ]
    if settings:
        return f"other settings ({', '.join(settings)})"
    changed = environment_differences(stored.get("environment") or {}, current.get("environment") or {})
    fields = [f"{name} {then!r} -> {now!r}" for name, (then, now) in changed.items()]
    if not stored.get("environment"):
        fields = ["no environment recorded"]
    return f"another numerics environment ({', '.join(fields) or 'details differ'})"


class PartialEntry:
    """Committed chunks of one key's unfinished extraction.

    Each chunk is one small HDF5 file, committed atomically, holding the
    features of the samples of chunk `i` that decoded, their sample indices,
    the indices and reasons of those that did not, and a checksum of the
    features.

    Opening the work area (under the key's lock) makes it safe to resume
    from: stray temporary files are deleted; chunks computed with other
    settings or in another numerics environment (the `"environment"` field of
    the fingerprint), or with no readable `fingerprint.json` to say which, are
    all discarded; a chunk that is unreadable, fails its checksum or carries
    another fingerprint is deleted, so that it is computed again. `discarded`
    says what was thrown away, `ignored` which foreign files were left alone.

    Raises:
        StoreError: If the work area cannot be written, or a chunk cannot be read
            for a reason other than its content (permission denied).
        EntryLockedError: If another process holds HDF5's lock on a chunk.
    """

    def __init__(self, directory: Path, fingerprint: Mapping[str, Any]):
        self.directory = directory
        self.discarded: list[str] = []
        self.ignored: list[str] = []
        # As stored (JSON), so that tuples and lists compare equal.
        self.fingerprint = json.loads(json.dumps(dict(fingerprint), sort_keys=True))
        fingerprint_path = directory / _FINGERPRINT
        if directory.is_dir():
            try:
                stored = json.loads(read_bounded_text(fingerprint_path, "chunk fingerprint", RECORD_MAX_BYTES))
            except (OSError, ValueError):
                stored = None
            if stored != self.fingerprint:
                # Chunks computed with other settings (batch size...) or in another numerics
                # environment (backend, device, oneDNN...) are discarded rather than mixed with new ones.
                if self.committed():
                    problem = (
                        _what_differs(stored, self.fingerprint)
                        if isinstance(stored, dict)
                        else "no readable fingerprint.json"
                    )
                    self.discarded.append(f"all {len(self.committed())} chunk(s): computed with {problem}")
                shutil.rmtree(directory)
        with writing(fingerprint_path):
            directory.mkdir(parents=True, exist_ok=True)
            for stray in directory.glob(f"{TMP_PREFIX}*"):
                stray.unlink(missing_ok=True)
            if not fingerprint_path.exists():
                write_text_atomically(fingerprint_path, json.dumps(self.fingerprint, sort_keys=True))
        self.ignored = sorted(
            path.name
            for path in directory.iterdir()
            if path.name != _FINGERPRINT and not _CHUNK_NAME.fullmatch(path.name)
        )
        for index in sorted(self.committed()):
            try:
                hdf5.read_chunk(self._chunk_path(index), self.fingerprint)
            except hdf5.FileProblem as problem:
                if problem.kind != "corrupt":
                    raise self._unreadable(index, problem) from problem
                self._chunk_path(index).unlink(missing_ok=True)
                self.discarded.append(f"chunk {index}: {problem}")

    def _chunk_path(self, index: int) -> Path:
        return self.directory / f"chunk_{index:06d}.h5"

    def _unreadable(self, index: int, problem: hdf5.FileProblem) -> StoreError:
        """The error for a chunk that cannot be read for a reason other than its content."""
        path = self._chunk_path(index)
        if problem.kind == "locked":
            holders = hdf5.holders_of(path)
            return EntryLockedError(
                f"Partial chunk {path} is {problem}{'; held by ' + ', '.join(holders) if holders else ''}. "
                f"Wait for that process to close it and run again (on a file system without locks, "
                f"set HDF5_USE_FILE_LOCKING=FALSE)."
            )
        return StoreError(f"Cannot read partial chunk {path}: {problem}. Fix its permissions or delete {self.directory}.")

    def corrupt(self, index: int, problem: str) -> CorruptEntryError:
        """The error for chunk `index`, saying what is wrong with it and what to do."""
        return CorruptEntryError(
            f"Partial chunk {self._chunk_path(index)} of an unfinished extraction is corrupt: {problem}. "
            f"Run the extraction again (corrupt chunks are recomputed when it starts), or delete "
            f"the folder {self.directory} to recompute this extraction from the start."
        )

    def committed(self) -> set[int]:
        """Indices of the chunks already committed (files named exactly `chunk_<6 digits>.h5`)."""
        if not self.directory.is_dir():
            return set()
        return {
            int(match.group(1))
            for path in self.directory.iterdir()
            if (match := _CHUNK_NAME.fullmatch(path.name))
        }

    def write_chunk(
        self,
        index: int,
        features: np.ndarray,
        sample_indices: np.ndarray,
        skipped: Sequence[tuple[int, str]],
    ) -> None:
        """Commit one chunk atomically.

        Raises:
            StoreError: If it cannot be written (e.g. the disk is full).
        """
        hdf5.write_chunk(self._chunk_path(index), features, sample_indices, skipped, self.fingerprint)

    def chunk_layout(self, index: int) -> tuple[int, tuple, np.dtype]:
        """Row count, per-sample feature shape and dtype of a committed chunk (header only).

        Raises:
            CorruptEntryError: The file is unreadable.
        """
        try:
            return hdf5.chunk_layout(self._chunk_path(index))
        except hdf5.FileProblem as problem:
            if problem.kind != "corrupt":
                raise self._unreadable(index, problem) from problem
            raise self.corrupt(index, str(problem)) from problem

    def read_chunk(self, index: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        """Features, sample indices and skipped (index, reason) of a committed chunk, checked.

        Raises:
            CorruptEntryError: The file is unreadable, inconsistent or fails its checksum.
        """
        try:
            return hdf5.read_chunk(self._chunk_path(index), self.fingerprint)
        except hdf5.FileProblem as problem:
            if problem.kind != "corrupt":
                raise self._unreadable(index, problem) from problem
            raise self.corrupt(index, str(problem)) from problem

    def discard(self) -> None:
        """Delete the work area (after its entry is committed)."""
        shutil.rmtree(self.directory, ignore_errors=True)
