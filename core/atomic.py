"""Atomic file writes: the one way layerprobe commits a file.

Every file layerprobe writes (store entries and chunks, plans, fitted models,
tables, checkpoints) is written under a temporary name beside its final path,
synced, given the usual permissions (by the umask) and renamed into place with
`os.replace`. A reader sees the old file or the complete new one, never a
half-written one, even if the writer is killed; a failed write leaves the final
path untouched and removes its temporary file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

TMP_PREFIX = ".tmp-"


def current_umask() -> int:
    """The process umask, read from /proc where possible (`os.umask` can only read it by setting it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temporary_path(path: str | os.PathLike) -> Path:
    """A unique temporary name beside `path`: `.tmp-<name>.<random>` (hidden, and findable by its prefix)."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to `path`.

    `durable`: sync the file and its folder to the disk too, so that the new
    content survives a power failure. Files whose loss or damage is detected and
    repaired later (the chunks of an unfinished extraction: verified on resume and
    recomputed) skip the two syncs; a killed process never leaves a half file either way.

    Example:
        >>> with atomic_path("table.csv") as tmp:
        ...     frame.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as written:
                os.fsync(written.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
        if durable:
            fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then commit it as `path` (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Commit `text` (UTF-8) as the whole content of `path`; the undecodable bytes of a file name
    (surrogate escapes, `os.fsdecode`) are written back as they were."""
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape"))
