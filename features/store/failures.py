"""How a failed write to the store is reported: a `StoreError` that says what to do."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from pathlib import Path
from typing import Iterator

from ...core.errors import StoreError

__all__ = ["check_free_space", "write_error", "writing"]

# Room left beyond a file's estimated size: HDF5's own metadata, and other writers.
_FREE_SPACE_MARGIN = 1 << 20


def write_error(path: Path, error: OSError) -> StoreError:
    """A `StoreError` saying why `path` could not be written and what to do."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space" in str(error):
        return StoreError(
            f"The disk is full while writing {path.name} in {path.parent}: {error}. "
            f"Free some space (or point the store elsewhere) and run again; committed work "
            f"is kept and the extraction resumes from it."
        )
    if error.errno == errno.EFBIG:
        return StoreError(
            f"Could not write {path.name} in {path.parent}: {error}. This process may not write files that large "
            f"(its file-size limit, `ulimit -f`): raise it (`ulimit -f unlimited`) and run again; committed work is "
            f"kept and the extraction resumes from it."
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return StoreError(
            f"Could not write {path}: {error}. This user may not write there (a store shared with "
            f"other users needs group write permission: ask its owner to run `chmod -R g+w "
            f"{path.parent}`), or choose another store path."
        )
    if error.errno == errno.EROFS:
        return StoreError(
            f"Could not write {path}: {error}. The store is on a read-only file system; choose another "
            f"store path (cached entries can still be read from this one)."
        )
    return StoreError(f"Could not write {path}: {error}")


def check_free_space(path: Path, n_bytes: int) -> None:
    """Refuse to start writing about `n_bytes` at `path` when its file system has less room, or the
    process may not write a file that large (`RLIMIT_FSIZE`, `ulimit -f`: the write would fail with EFBIG).

    HDF5 left a file whose close-time write failed half-closed, which crashed the process later
    (see `hdf5`), so both are checked before the first byte.

    Raises:
        StoreError: "The disk is full ..." or "... file-size limit ..." (see `write_error`), before
            anything is written.
    """
    needed = int(n_bytes * 1.05) + _FREE_SPACE_MARGIN
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < needed:
        raise write_error(
            path,
            OSError(errno.EFBIG, f"File too large: the file-size limit is {limit:,} bytes, about {needed:,} needed"),
        )
    try:
        stats = os.statvfs(path.parent)
    except OSError:
        return  # no statistics (or no folder yet): let the write itself tell
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        raise write_error(
            path,
            OSError(errno.ENOSPC, f"No space left on device: {free / 2**20:.1f} MiB free, about "
                                  f"{needed / 2**20:.1f} MiB needed"),
        )


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an `OSError` raised inside the block (while writing `path`) into `write_error`."""
    try:
        yield
    except OSError as error:
        raise write_error(path, error) from error
