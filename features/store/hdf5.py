"""The store's HDF5 files, written and read: the only module that imports h5py.

Two kinds of file: an *entry* (the features of one key, committed whole) and a
*chunk* (the features of some samples of an unfinished extraction). Each is
written under a temporary name and committed by atomic rename
(`layerprobe.core.atomic`): HDF5 cannot survive a writer killed while the
file is open, so nothing is ever written in place. Each carries
`encoding-type`/`encoding-version` attributes, and readers refuse other types
and versions. A file that cannot be read as what it should be raises
`FileProblem`, whose `kind` says why: `"corrupt"` (the content is wrong),
`"locked"` (another process holds HDF5's lock on it), `"permission"` or
`"missing"`; callers turn it into the matching `StoreError` that says what to do.

Encoding versions: entries are version 3, chunks version 2. Version-3
entries carry a `checksums` attribute: the digest of every part `load`
returns (features, labels, sample ids, splits, class names, skipped files,
key and metadata; `CHECKSUMS`), so that no stored byte is read unchecked.
Version-2 entries (only the features checksummed, in the metadata's
`features_sha256`) and version-1 entries are still read. Since version 2,
entries store each file sample's id relative to the dataset root (`sample-ids`
attribute `"relative-to-dataset-root"`, the root at extraction in the
metadata's `dataset_root`); version-1 ids are absolute paths. Version-2 chunks
carry the fingerprint (settings and numerics environment) they were computed
with; version-1 chunks are recomputed.

Strings (sample ids, class names, splits, reasons) are stored as UTF-8; a
file name that is not UTF-8 keeps its own bytes (`digests.encode_text`) and
reads back as the same Python string, so any name the file system allows
round-trips.

HDF5's own file locks: `HDF5_USE_FILE_LOCKING=FALSE` (or `BEST_EFFORT`) is
honoured at every open, not only when the HDF5 library starts. Committed files
are never written in place, so readers of a store do not need HDF5's lock; on
NFS without lock support set it to `FALSE`.

A full disk: HDF5 writes its metadata when a file is closed, and when that
write fails (ENOSPC) h5py 3.14 / HDF5 1.14 leave the file half-closed in the
library, which later crashes the process (a segmentation fault at an unrelated
HDF5 call; found by the tmpfs test in tests/reliability). So a chunk is built
in memory (the `core` driver) and reaches the disk in one plain write, which
fails cleanly; an entry, written to disk chunk by chunk to bound memory, is
started only when the file system has room for it (`failures.check_free_space`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from ...core.atomic import atomic_path
from ...core.digests import (
    StringsDigest,
    array_digest,
    encode_text,
    start_array,
    strings_digest,
    update_with_block,
)
from .failures import check_free_space, writing

__all__ = [
    "CHECKSUMS",
    "CHUNK_ENCODING_TYPE",
    "CHUNK_ENCODING_VERSION",
    "ENCODING_TYPE",
    "ENCODING_VERSION",
    "H5PY_VERSION",
    "READABLE_ENTRY_VERSIONS",
    "SAMPLE_IDS_RELATIVE",
    "EntryReader",
    "EntryWriter",
    "FileProblem",
    "holders_of",
    "chunk_layout",
    "new_entry",
    "open_entry",
    "read_chunk",
    "write_chunk",
]

ENCODING_TYPE = "layerprobe.feature-entry"
ENCODING_VERSION = "3"
# 1: sample ids stored as given (absolute paths); 1 and 2: only the features checksummed.
READABLE_ENTRY_VERSIONS = ("1", "2", "3")
CHECKSUMS = ("features", "labels", "sample_ids", "splits", "class_names", "skipped", "key", "metadata")
"""The parts of a version-3 entry that each carry a checksum, in the order a report names them."""
CHUNK_ENCODING_TYPE = "layerprobe.feature-chunk"
CHUNK_ENCODING_VERSION = "2"
SAMPLE_IDS_RELATIVE = "relative-to-dataset-root"
H5PY_VERSION = h5py.__version__
_STRING = h5py.string_dtype(encoding="utf-8")
STRING_BLOCK = 65_536  # strings encoded and written at a time (`_write_strings`)
# Rows of features read (and hashed) at a time when loading an entry: about this many bytes.
_READ_BLOCK_BYTES = 1 << 24


class FileProblem(Exception):
    """A store file that cannot be read as what it should be; the message says why.

    Attributes:
        kind: `"corrupt"` (its content is wrong), `"locked"` (another process holds
            HDF5's lock on it, or the file system has no locks), `"permission"`
            (this user may not read it) or `"missing"` (deleted meanwhile).
        error: The `OSError` behind a `"locked"`, `"permission"` or `"missing"` problem.
    """

    def __init__(self, message: str, kind: str = "corrupt", error: OSError | None = None):
        super().__init__(message)
        self.kind = kind
        self.error = error


def _locking() -> bool | str | None:
    """h5py's `locking` argument from `HDF5_USE_FILE_LOCKING`, read at each open (HDF5 reads it once)."""
    value = os.environ.get("HDF5_USE_FILE_LOCKING", "").strip().upper()
    return {"FALSE": False, "0": False, "BEST_EFFORT": "best-effort", "TRUE": True, "1": True}.get(value)


def _open_problem(path: Path, error: OSError) -> FileProblem:
    """Why `h5py.File(path)` failed: locked, permission, missing, or (anything else) corrupt."""
    text = str(error)
    if "unable to lock file" in text or error.errno == errno.ENOLCK:
        if error.errno in (errno.ENOLCK, errno.ENOSYS) or f"errno = {errno.ENOLCK}," in text:
            return FileProblem(
                f"its file system does not support HDF5's file locks ({error})", "locked", error
            )
        return FileProblem(f"another process has it open for writing ({error})", "locked", error)
    if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM):
        return FileProblem(f"permission denied ({error})", "permission", error)
    if isinstance(error, FileNotFoundError) or error.errno == errno.ENOENT:
        return FileProblem(f"the file disappeared ({error})", "missing", error)
    return FileProblem(f"unreadable, not a valid HDF5 file ({error})")


def _open_for_reading(path: Path) -> h5py.File:
    """`h5py.File(path, "r")`, honouring `HDF5_USE_FILE_LOCKING`.

    Raises:
        FileProblem: With the `kind` of the failure (see `_open_problem`).
    """
    locking = _locking()
    try:
        return h5py.File(path, "r") if locking is None else h5py.File(path, "r", locking=locking)
    except OSError as error:
        raise _open_problem(path, error) from error


def holders_of(path: Path, *, limit: int = 5) -> list[str]:
    """"pid N (command)" of the processes of this machine that have `path` open, as far as /proc shows."""
    try:
        target = os.path.realpath(path)
        stat = os.stat(target)
    except OSError:
        return []
    holders = []
    with contextlib.suppress(OSError):
        for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
            if int(pid) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        opened = os.stat(f"/proc/{pid}/fd/{fd}")
                        if (opened.st_dev, opened.st_ino) == (stat.st_dev, stat.st_ino):
                            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                            holders.append(f"pid {pid} ({command.decode(errors='replace').strip()[:80]})")
                            break
            if len(holders) >= limit:
                break
    return holders


def _strings(values: Iterable[str]) -> np.ndarray:
    """Strings as the bytes to store (`encode_text`: lossless for file names that are not UTF-8)."""
    return np.asarray([encode_text(value) for value in values], dtype=object)


def _write_strings(handle, name: str, values: Sequence[str], digest: StringsDigest) -> None:
    """`values` as a new string dataset, encoded and written `STRING_BLOCK` at a time and fed to
    `digest` as stored: a million sample ids are never held encoded all at once."""
    dataset = handle.create_dataset(name, shape=(len(values),), dtype=_STRING)
    for start in range(0, len(values), STRING_BLOCK):
        block = _strings(values[start:start + STRING_BLOCK])
        dataset[start:start + len(block)] = block
        digest.update(block)


def _raw_strings(dataset, rows=()) -> list[bytes]:
    """The stored bytes of a string dataset (or of `rows` of it), as written (what its checksum covers)."""
    return [value if isinstance(value, bytes) else encode_text(value) for value in dataset[rows].tolist()]


def _decode(raw: Sequence[bytes]) -> np.ndarray:
    return np.asarray([value.decode("utf-8", "surrogateescape") for value in raw], dtype=object)


def _read_strings(dataset) -> np.ndarray:
    return _decode(_raw_strings(dataset))


def _read_strings_in_blocks(dataset, digest: StringsDigest | None, *, shared: bool = False) -> np.ndarray:
    """A string dataset decoded into an object array, read `STRING_BLOCK` at a time and fed to
    `digest` as stored: a million sample ids are held once, as strings, not also as bytes.
    `shared`: equal strings become one object (the splits: a million rows, a few values)."""
    out = np.empty(len(dataset), dtype=object)
    seen: dict[str, str] = {}
    for start in range(0, len(dataset), STRING_BLOCK):
        raw = _raw_strings(dataset, slice(start, start + STRING_BLOCK))
        if digest is not None:
            digest.update(raw)
        decoded = _decode(raw)
        out[start:start + len(raw)] = [seen.setdefault(value, value) for value in decoded] if shared else decoded
    return out


def _sample_ids_digest(sample_ids_kind: str, count: int) -> StringsDigest:
    """The digest of an entry's sample ids, to be fed its `count` ids: `sample_ids_kind` (relative
    or as given) decides what the ids mean, so it is covered with them."""
    return StringsDigest(count + 1).update([sample_ids_kind])


def _entry_checksums(
    *, features: str, labels: np.ndarray, sample_ids: str, splits: str, class_names: Sequence,
    skipped: Sequence[tuple], key: str, metadata: str,
) -> dict[str, str]:
    """The digest of each part of an entry (`CHECKSUMS`), from what is (or was) stored; `features`,
    `sample_ids` and `splits` are digests already (fed as they were written or read).

    The key and metadata are covered as their stored JSON text.
    """
    return {
        "features": features,
        "labels": array_digest(np.asarray(labels, dtype=np.int64)),
        "sample_ids": sample_ids,
        "splits": splits,
        "class_names": strings_digest(class_names),
        "skipped": strings_digest([part for pair in skipped for part in pair]),
        "key": strings_digest([key]),
        "metadata": strings_digest([metadata]),
    }


@contextlib.contextmanager
def _write_failures_as_os_errors() -> Iterator[None]:
    """HDF5 reports a write that fails while a file is flushed or closed (e.g. ENOSPC) as a
    `RuntimeError` ("file write failed: ... errno = 28"): turn it into the `OSError` it is."""
    try:
        yield
    except RuntimeError as error:
        match = re.search(r"errno = (\d+)", str(error))
        if match is None:
            raise
        code = int(match.group(1))
        raise OSError(code, f"{os.strerror(code)} (HDF5: {str(error).splitlines()[0]})") from error


@contextlib.contextmanager
def _new_file(path: Path) -> Iterator[h5py.File]:
    """An HDF5 file written under a temporary name, committed as `path` if the block succeeds.

    Raises:
        StoreError: If it cannot be written (disk full, read-only...).
    """
    locking = _locking()
    options = {} if locking is None else {"locking": locking}
    with (
        writing(path),
        atomic_path(path) as tmp,
        _write_failures_as_os_errors(),
        h5py.File(tmp, "w", **options) as handle,
    ):
        yield handle


_IMAGE_BLOCK = 1 << 20


def _write_image(handle, image: bytes) -> None:
    """Write a file image in 1 MiB pieces (a separate function so that tests can kill it midway)."""
    view = memoryview(image)
    for start in range(0, len(view), _IMAGE_BLOCK):
        handle.write(view[start : start + _IMAGE_BLOCK])


@contextlib.contextmanager
def _new_file_in_memory(path: Path, *, durable: bool = True) -> Iterator[h5py.File]:
    """Like `_new_file`, for small files: built in memory, then committed in one plain write.

    HDF5 never writes to the disk, so a full disk is a clean `OSError` from that write
    (see the module docstring). Memory: about twice the file. `durable`: see `atomic_path`.

    Raises:
        StoreError: If it cannot be written (disk full, read-only...).
    """
    with writing(path):
        handle = h5py.File(f"layerprobe-{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False)
        try:
            yield handle
            handle.flush()
            image = handle.id.get_file_image()
        finally:
            handle.close()
        with atomic_path(path, durable=durable) as tmp, open(tmp, "wb") as out:
            _write_image(out, image)


# --------------------------------------------------------------------------- chunks


def write_chunk(
    path: Path,
    features: np.ndarray,
    sample_indices: np.ndarray,
    skipped: Sequence[tuple[int, str]],
    fingerprint: Mapping[str, Any] | None = None,
) -> None:
    """Commit one chunk: its features, their sample indices, the skipped (index, reason), a checksum
    and the fingerprint (settings and numerics environment) it was computed with.

    Not synced to the disk: a chunk lost or torn by a power failure fails its check
    when the extraction resumes and is computed again (`PartialEntry`).
    """
    with _new_file_in_memory(path, durable=False) as handle:
        handle.attrs["encoding-type"] = CHUNK_ENCODING_TYPE
        handle.attrs["encoding-version"] = CHUNK_ENCODING_VERSION
        handle.attrs["features_sha256"] = array_digest(features)
        handle.attrs["fingerprint"] = json.dumps(dict(fingerprint or {}), sort_keys=True)
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
        with _open_for_reading(path) as handle:
            features = handle["features"]
            return features.shape[0], features.shape[1:], features.dtype
    except (OSError, KeyError) as error:
        raise FileProblem(f"unreadable ({error})") from error


def read_chunk(
    path: Path, fingerprint: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Features, sample indices and skipped (index, reason) of a chunk, checked against its checksum.

    Args:
        path: The chunk file.
        fingerprint: If given, the chunk must have been computed with exactly this one.

    Raises:
        FileProblem: The file is unreadable, of another encoding or fingerprint, inconsistent
            or fails its checksum.
    """
    try:
        with _open_for_reading(path) as handle:
            kind = (handle.attrs.get("encoding-type"), handle.attrs.get("encoding-version"))
            if kind != (CHUNK_ENCODING_TYPE, CHUNK_ENCODING_VERSION):
                raise FileProblem(f"not a version-{CHUNK_ENCODING_VERSION} layerprobe chunk (encoding {kind})")
            if fingerprint is not None:
                try:
                    stored = json.loads(handle.attrs.get("fingerprint", ""))
                except (TypeError, ValueError):
                    stored = None
                if stored != json.loads(json.dumps(dict(fingerprint), sort_keys=True)):
                    raise FileProblem("computed with other settings or in another numerics environment")
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
        # Contiguous and uncompressed: a reader can memory-map it (`EntryReader.feature_view`).
        self._features = handle.create_dataset("features", shape=(n_samples, *feature_shape), dtype=dtype)
        # The canonical form of `digests.array_digest` (dtype, shape, C-ordered bytes) fed one
        # chunk at a time; `FeatureStore.load` checks the result with `array_digest` itself.
        self._sha = hashlib.sha256()
        start_array(self._sha, dtype, (n_samples, *feature_shape))

    def append(self, features: np.ndarray) -> None:
        """Write the next rows of features."""
        self._features[self._offset : self._offset + len(features)] = features
        update_with_block(self._sha, features)
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
        sample_ids_relative: bool = False,
    ) -> None:
        """Write the per-sample datasets, the skipped files, the key and metadata attributes, and
        the checksum of each (`CHECKSUMS`).

        `sample_ids_relative`: the sample ids (kept and skipped) are paths relative to the
        dataset root recorded in the metadata (`dataset_root`).
        """
        handle = self._handle
        labels = np.asarray(labels, dtype=np.int64)
        kind = SAMPLE_IDS_RELATIVE if sample_ids_relative else "as-given"
        handle.create_dataset("labels", data=labels)
        sample_ids_digest, splits_digest = _sample_ids_digest(kind, len(sample_ids)), StringsDigest(len(splits))
        _write_strings(handle, "sample_ids", sample_ids, sample_ids_digest)
        _write_strings(handle, "splits", splits, splits_digest)
        strings = {
            "class_names": _strings(class_names),
            "skipped/sample_ids": _strings(s for s, _ in skipped),
            "skipped/reasons": _strings(r for _, r in skipped),
        }
        for name, values in strings.items():
            handle.create_dataset(name, data=values, dtype=_STRING)
        key_text = json.dumps(dict(key), sort_keys=True)
        metadata_text = json.dumps(dict(metadata), sort_keys=True, default=str)
        checksums = _entry_checksums(
            features=self.features_digest, labels=labels, sample_ids=sample_ids_digest.digest(),
            splits=splits_digest.digest(), class_names=strings["class_names"],
            skipped=list(zip(strings["skipped/sample_ids"], strings["skipped/reasons"])),
            key=key_text, metadata=metadata_text,
        )
        handle.attrs["encoding-type"] = ENCODING_TYPE
        handle.attrs["encoding-version"] = ENCODING_VERSION
        handle.attrs["sample-ids"] = kind
        handle.attrs["key"] = key_text
        handle.attrs["metadata"] = metadata_text
        handle.attrs["checksums"] = json.dumps(checksums, sort_keys=True)
        self._finished = True


@contextlib.contextmanager
def new_entry(
    path: Path, *, n_samples: int, feature_shape: tuple, dtype: np.dtype, extra_bytes: int = 0
) -> Iterator[EntryWriter]:
    """Write an entry; it is committed as `path` only if the block succeeds and called `finish`.

    `extra_bytes`: the size of everything but the features (sample ids...), for the
    free-space check made before anything is written.

    Raises:
        StoreError: If it cannot be written (disk full, read-only...).
    """
    features_bytes = n_samples * int(np.prod(feature_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    check_free_space(path, features_bytes + extra_bytes)
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

    @property
    def version(self) -> str:
        """The entry's encoding version (see the module docstring)."""
        return str(self._handle.attrs.get("encoding-version"))

    @property
    def sample_ids_relative(self) -> bool:
        """Whether sample ids are stored relative to the dataset root (version 2), not as given."""
        return self._handle.attrs.get("sample-ids") == SAMPLE_IDS_RELATIVE

    def header(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The key fields and the metadata, as stored."""
        try:
            return json.loads(self._handle.attrs["key"]), json.loads(self._handle.attrs["metadata"])
        except (KeyError, TypeError, ValueError) as error:
            raise FileProblem(f"its key/metadata attributes are unreadable ({error})") from error

    def checksums(self) -> dict[str, str] | None:
        """The checksum of each part (`CHECKSUMS`) recorded at commit; None for an entry older than version 3."""
        if self.version not in ("1", "2"):
            try:
                recorded = json.loads(self._handle.attrs["checksums"])
            except (KeyError, TypeError, ValueError) as error:
                raise FileProblem(f"its checksums attribute is missing or unreadable ({error})") from error
            missing = [name for name in CHECKSUMS if not isinstance(recorded, dict) or name not in recorded]
            if missing:
                raise FileProblem(f"its checksums attribute lacks {missing}")
            return recorded
        return None

    @property
    def feature_dtype(self) -> np.dtype:
        """The dtype of the stored features."""
        return self._handle["features"].dtype

    def shapes(self) -> dict[str, list[int]]:
        """Shape of each per-sample dataset present."""
        names = ("features", "labels", "sample_ids", "splits")
        return {name: list(self._handle[name].shape) for name in names if name in self._handle}

    def _raw_skipped(self) -> list[tuple[bytes, bytes]]:
        try:
            return list(
                zip(_raw_strings(self._handle["skipped/sample_ids"]), _raw_strings(self._handle["skipped/reasons"]))
            )
        except KeyError as error:
            raise FileProblem(f"its list of skipped files is missing ({error})") from error

    def skipped(self) -> list[tuple[str, str]]:
        """(sample id, reason) of each sample that could not be decoded."""
        return [tuple(_decode(pair).tolist()) for pair in self._raw_skipped()]

    def feature_view(self) -> np.ndarray | None:
        """The features as a read-only memory map (no copy, nothing read yet), or None where the
        layout does not allow it: a chunked or compressed dataset (entries written before the
        layout was contiguous), or an empty one.

        The map stays valid after the file is closed (committed entries are never rewritten).
        It is not checked against the checksum: `FeatureStore.stream` checks as it reads.
        """
        offset = self._contiguous_offset()
        if offset is None:
            return None
        dataset = self._handle["features"]
        return np.memmap(self._handle.filename, dtype=dataset.dtype, mode="r", offset=offset, shape=dataset.shape)

    def _contiguous_offset(self) -> int | None:
        """Where the features' bytes start in the file, if they lie there in one uncompressed run."""
        dataset = self._handle["features"]
        if dataset.chunks is not None or dataset.compression is not None or dataset.size == 0:
            return None
        return dataset.id.get_offset()

    def feature_blocks(
        self, *, block_rows: int | None = None, sha: "hashlib._Hash | None" = None, out: np.ndarray | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """The features in consecutive row blocks `(start, block)`, each read once and fed to `sha`.

        A block is a read-only memory map of its rows where the layout allows (see
        `feature_view`; one map per block, so the address space stays at one block), else
        read into a new array; with `out`, rows are read straight into `out[start:stop]`.

        Args:
            block_rows: Rows per block; default: about 16 MB.
            sha: A hash started with `start_array`; every block's bytes are fed to it, in order.
            out: An array of the dataset's shape to read into (the blocks are its slices).
        """
        dataset = self._handle["features"]
        n_samples = dataset.shape[0]
        row_bytes = max(1, int(np.prod(dataset.shape[1:], dtype=np.int64)) * dataset.dtype.itemsize)
        step = max(1, block_rows or _READ_BLOCK_BYTES // row_bytes)
        offset = self._contiguous_offset() if out is None else None  # one map per block, not one of them all
        for start in range(0, n_samples, step):
            stop = min(n_samples, start + step)
            if offset is not None:
                block = np.memmap(
                    self._handle.filename, dtype=dataset.dtype, mode="r", offset=offset + start * row_bytes,
                    shape=(stop - start, *dataset.shape[1:]),
                )
            else:
                block = out[start:stop] if out is not None else np.empty((stop - start, *dataset.shape[1:]), dataset.dtype)
                dataset.read_direct(block, np.s_[start:stop])
            if sha is not None:
                update_with_block(sha, block)
            yield start, block

    def features(self, *, digest: bool = False) -> tuple[np.ndarray, str | None]:
        """The features, and (if `digest`) their `array_digest`, computed while reading.

        Rows are read in blocks of about 16 MB straight into the returned array and hashed
        block by block, so memory stays at the array plus one block.
        """
        dataset = self._handle["features"]
        out = np.empty(dataset.shape, dtype=dataset.dtype)
        sha = hashlib.sha256() if digest else None
        if sha is not None:
            start_array(sha, out.dtype, out.shape)
        for _ in self.feature_blocks(sha=sha, out=out):
            pass
        return out, (None if sha is None else "sha256:" + sha.hexdigest())

    def arrays(
        self, *, verify: bool = False, with_features: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...], dict[str, str]]:
        """Features, labels, sample ids, splits, class names and (if `verify`) the digest of each part
        (`CHECKSUMS`) as read, to compare with `checksums()`; an empty dict without `verify`.

        Without `with_features` the features are not read: None, and their digest None (the
        caller checks them as it streams them, `feature_blocks`).
        """
        handle = self._handle
        try:
            features, features_digest = self.features(digest=verify) if with_features else (None, None)
            labels = handle["labels"][()]
            kind = str(handle.attrs.get("sample-ids", ""))
            ids_digest = _sample_ids_digest(kind, len(handle["sample_ids"])) if verify else None
            splits_digest = StringsDigest(len(handle["splits"])) if verify else None
            sample_ids = _read_strings_in_blocks(handle["sample_ids"], ids_digest)
            splits = _read_strings_in_blocks(handle["splits"], splits_digest, shared=True)
            class_names = _raw_strings(handle["class_names"])
            digests = {}
            if verify:
                digests = _entry_checksums(
                    features=features_digest, labels=labels, sample_ids=ids_digest.digest(),
                    splits=splits_digest.digest(), class_names=class_names, skipped=self._raw_skipped(),
                    key=str(handle.attrs.get("key", "")), metadata=str(handle.attrs.get("metadata", "")),
                )
            return (
                features,
                labels,
                sample_ids,
                splits,
                tuple(_decode(class_names).tolist()),
                digests,
            )
        except (KeyError, OSError, TypeError, ValueError) as error:
            raise FileProblem(f"a dataset is missing or unreadable ({error})") from error


@contextlib.contextmanager
def open_entry(path: Path) -> Iterator[EntryReader]:
    """Open a committed entry for reading, after checking its encoding type and version.

    Raises:
        FileProblem: Not a readable HDF5 file, not a layerprobe entry, or another encoding
            version (`kind` "corrupt"); locked by another process, not readable by this
            user, or deleted meanwhile (`kind` "locked", "permission", "missing").
    """
    handle = _open_for_reading(path)
    with handle:
        if handle.attrs.get("encoding-type") != ENCODING_TYPE:
            raise FileProblem("it is not a layerprobe feature entry")
        version = handle.attrs.get("encoding-version")
        if version not in READABLE_ENTRY_VERSIONS:
            raise FileProblem(
                f"encoding-version {version!r} is not one of the versions {list(READABLE_ENTRY_VERSIONS)} "
                f"this layerprobe reads (written by another version; upgrade layerprobe or re-extract)"
            )
        yield EntryReader(handle)
