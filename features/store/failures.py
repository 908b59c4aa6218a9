"""How a failed write to the store is reported: a `StoreError` that says what to do."""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Iterator

from layerprobe.features.errors import StoreError

__all__ = ["write_error", "writing"]


def write_error(path: Path, error: OSError) -> StoreError:
    """A `StoreError` saying why `path` could not be written and what to do."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space" in str(error):
        return StoreError(
            f"The disk is full while writing {path.name} in {path.parent}: {error}. "
            f"Free some space (or point the store elsewhere) and run again; committed work "
            f"is kept and the extraction resumes from it."
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


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an `OSError` raised inside the block (while writing `path`) into `write_error`."""
    try:
        yield
    except OSError as error:
        raise write_error(path, error) from error
