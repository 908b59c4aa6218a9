"""Content digests: the one canonical form for hashing arrays and files.

An array is hashed as its dtype (`dtype.str`, byte order included), its shape
and its C-ordered bytes, in that order and in blocks (constant extra memory);
a file as its bytes. Every digest is the text `sha256:<hex>`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable

import numpy as np

_BLOCK_BYTES = 1 << 24


def update_with_array(sha: "hashlib._Hash", array: np.ndarray) -> None:
    """Feed one array's canonical form (dtype, shape, bytes) into `sha`."""
    array = np.asarray(array)
    sha.update(f"{array.dtype.str}{array.shape}".encode())
    flat = np.ascontiguousarray(array).reshape(-1)
    step = max(1, _BLOCK_BYTES // max(1, flat.itemsize))
    for start in range(0, flat.size, step):
        sha.update(flat[start:start + step].tobytes())


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


def file_digest(path: str | os.PathLike, *, block_bytes: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in blocks (constant memory)."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_bytes), b""):
            sha.update(block)
    return "sha256:" + sha.hexdigest()
