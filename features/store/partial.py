"""The committed chunks of one key's unfinished extraction, and the settings they were computed with.

Layout, under the store's `.partial/<key digest>/`::

    chunk_000012.h5      one committed chunk (see `layerprobe.features.store.hdf5`)
    fingerprint.json     settings the chunks were computed with (batch size, chunk size...)

A killed extraction leaves committed chunks (and perhaps a stray temporary
file); the next run resumes from them, after checking each against the
checksum it was written with. Only the holder of the key's lock writes here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from layerprobe.features.atomic import TMP_PREFIX, write_text_atomically
from layerprobe.features.errors import CorruptEntryError
from layerprobe.features.store import hdf5
from layerprobe.features.store.failures import writing

__all__ = ["PARTIAL_FOLDER", "PartialEntry"]

PARTIAL_FOLDER = ".partial"
_FINGERPRINT = "fingerprint.json"


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

    Raises:
        StoreError: If the work area cannot be written.
    """

    def __init__(self, directory: Path, fingerprint: Mapping[str, Any]):
        self.directory = directory
        self.discarded: list[str] = []
        fingerprint = dict(fingerprint)
        fingerprint_path = directory / _FINGERPRINT
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
        with writing(fingerprint_path):
            directory.mkdir(parents=True, exist_ok=True)
            for stray in directory.glob(f"{TMP_PREFIX}*"):
                stray.unlink(missing_ok=True)
            if not fingerprint_path.exists():
                write_text_atomically(fingerprint_path, json.dumps(fingerprint, sort_keys=True))
        for index in sorted(self.committed()):
            try:
                hdf5.read_chunk(self._chunk_path(index))
            except hdf5.FileProblem as problem:
                self._chunk_path(index).unlink(missing_ok=True)
                self.discarded.append(f"chunk {index}: {problem}")

    def _chunk_path(self, index: int) -> Path:
        return self.directory / f"chunk_{index:06d}.h5"

    def corrupt(self, index: int, problem: str) -> CorruptEntryError:
        """The error for chunk `index`, saying what is wrong with it and what to do."""
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
        """Commit one chunk atomically.

        Raises:
            StoreError: If it cannot be written (e.g. the disk is full).
        """
        hdf5.write_chunk(self._chunk_path(index), features, sample_indices, skipped)

    def chunk_layout(self, index: int) -> tuple[int, tuple, np.dtype]:
        """Row count, per-sample feature shape and dtype of a committed chunk (header only).

        Raises:
            CorruptEntryError: The file is unreadable.
        """
        try:
            return hdf5.chunk_layout(self._chunk_path(index))
        except hdf5.FileProblem as problem:
            raise self.corrupt(index, str(problem)) from problem

    def read_chunk(self, index: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        """Features, sample indices and skipped (index, reason) of a committed chunk, checked.

        Raises:
            CorruptEntryError: The file is unreadable, inconsistent or fails its checksum.
        """
        try:
            return hdf5.read_chunk(self._chunk_path(index))
        except hdf5.FileProblem as problem:
            raise self.corrupt(index, str(problem)) from problem

    def discard(self) -> None:
        """Delete the work area (after its entry is committed)."""
        shutil.rmtree(self.directory, ignore_errors=True)
