"""Content digests: the one canonical form for hashing arrays and files.

An array is hashed as its dtype (`dtype.str`, byte order included), its shape
and its C-ordered bytes, in that order and in blocks (constant extra memory);
a sequence of strings as its length and each string's length and UTF-8 bytes
(file names that are not UTF-8 as their own bytes, see `encode_text`); a file
as its bytes. Every digest is the text `sha256:<hex>`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Iterable

import numpy as np

from .errors import UnusableFileError
from .files import file_kind

_BLOCK_BYTES = 1 << 24


def start_array(sha: "hashlib._Hash", dtype: np.dtype, shape: tuple) -> None:
    """Feed the header of an array's canonical form (dtype, shape) into `sha`; its bytes follow
    in C order, in any number of `update_with_block` calls (e.g. as rows are read from disk)."""
    sha.update(f"{np.dtype(dtype).str}{tuple(shape)}".encode())


def update_with_block(sha: "hashlib._Hash", block: np.ndarray) -> None:
    """Feed the C-ordered bytes of `block` into `sha` without copying them (when already contiguous)."""
    block = np.ascontiguousarray(block)
    if block.size:
        sha.update(memoryview(block).cast("B"))


def update_with_array(sha: "hashlib._Hash", array: np.ndarray) -> None:
    """Feed one array's canonical form (dtype, shape, bytes) into `sha`, in blocks (no copy of a
    contiguous array; a non-contiguous one is copied one block at a time)."""
    array = np.asarray(array)
    start_array(sha, array.dtype, array.shape)
    if array.ndim == 0 or array.flags.c_contiguous:
        flat = np.ascontiguousarray(array).reshape(-1)
        step = max(1, _BLOCK_BYTES // max(1, flat.itemsize))
        for start in range(0, flat.size, step):
            update_with_block(sha, flat[start:start + step])
        return
    rows = max(1, _BLOCK_BYTES // max(1, array[:1].nbytes))
    for start in range(0, len(array), rows):
        update_with_block(sha, array[start:start + rows])


def array_digest(array: np.ndarray) -> str:
    """sha256 of one array's dtype, shape and bytes."""
    sha = hashlib.sha256()
    update_with_array(sha, array)
    return "sha256:" + sha.hexdigest()


def arrays_digest(arrays: Iterable[np.ndarray]) -> str:
    """sha256 of a sequence of arrays, each in canonical form, in order (e.g. a model's weights)."""
    sha = hashlib.sha256()
    for array in arrays:
        update_with_array(sha, array)
    return "sha256:" + sha.hexdigest()


def encode_text(text: str | bytes) -> bytes:
    """A string's bytes, losslessly: UTF-8, with the undecodable bytes of a file name (which Python
    holds as surrogate escapes, `os.fsdecode`) given back as they were."""
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def strings_digest(values: Iterable[str | bytes]) -> str:
    """sha256 of a sequence of strings (or their bytes, see `encode_text`): the count, then each one's
    length and bytes, so that no two sequences share a digest."""
    values = values if isinstance(values, (list, tuple)) else list(values)
    return StringsDigest(len(values)).update(values).digest()


class StringsDigest:
    """`strings_digest` fed in parts (the count given first), for a sequence written a block at a
    time, so that it is never held encoded all at once."""

    def __init__(self, count: int):
        self._sha = hashlib.sha256(f"strings{count}".encode())
        self._left = count

    def update(self, values: Iterable[str | bytes]) -> StringsDigest:
        for value in values:
            value = encode_text(value)
            self._sha.update(len(value).to_bytes(8, "little"))
            self._sha.update(value)
            self._left -= 1
        return self

    def digest(self) -> str:
        """The digest, once exactly the announced count of strings was fed."""
        if self._left != 0:
            raise ValueError(f"StringsDigest was fed {'fewer' if self._left > 0 else 'more'} strings than its count")
        return "sha256:" + self._sha.hexdigest()


def file_digest(path: str | os.PathLike, *, block_bytes: int = 1 << 20) -> str:
    """sha256 of a regular file's bytes, read in blocks (constant memory).

    Raises:
        UnusableFileError: If `path` is not a regular file (a FIFO would block, /dev/zero never end).
    """
    sha = hashlib.sha256()
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise UnusableFileError(f"Cannot digest {os.fspath(path)}: it is {file_kind(mode)}, not a regular file.")
        for block in iter(lambda: handle.read(block_bytes), b""):
            sha.update(block)
    return "sha256:" + sha.hexdigest()
