"""The per-entry lock: at most one process writes a feature key at a time.

One lock file per key, `.locks/<key digest>.lock` in the store (or in
`$LAYERPROBE_LOCK_DIR` when set, for a shared store whose `.locks/` this user
cannot write), held as `layerprobe.core.lock_files` holds any lock
file: released by the operating system when its holder exits or is killed,
its holder named, waits bounded (`LAYERPROBE_LOCK_TIMEOUT`, default 3600 s,
then an `EntryLockedError` naming the holder), and opened safely in a folder
other users may write (no symbolic links, hard links, other owners, or a
world-writable folder without the sticky bit). Readers take no lock: they only
open committed files.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from ...core.errors import EntryLockedError, StoreError
from ...core.lock_files import (
    DEFAULT_LOCK_TIMEOUT,
    check_lock_folder,
    holder,
    lock_timeout,
    open_lock_file,
    take,
)
from ..keys import FeatureKey

__all__ = ["DEFAULT_LOCK_TIMEOUT", "LOCKS_FOLDER", "hold", "hold_if_free", "holder", "lock_path", "lock_timeout"]

LOCKS_FOLDER = ".locks"


def lock_directory(root: Path) -> Path:
    """Where the lock files of the store at `root` are: `$LAYERPROBE_LOCK_DIR` if set, else `root/.locks`."""
    override = os.environ.get("LAYERPROBE_LOCK_DIR")
    return Path(override).expanduser() if override else root / LOCKS_FOLDER


def lock_path(root: Path, key: FeatureKey) -> Path:
    """The lock file of `key` in the store at `root`."""
    return lock_directory(root) / f"{key.digest}.lock"


def _unusable(directory: Path, error: OSError) -> StoreError:
    """The error for a lock folder this user cannot create or write (a shared store)."""
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(
            f"Cannot create or open lock files in {directory}: {error}. The feature store is shared "
            f"(made by another user, or under a umask that leaves it read-only to the group): ask its "
            f"owner to run `chmod -R g+w {directory.parent}` (and `chmod g+s` on its folders so that "
            f"new files keep the group), or set LAYERPROBE_LOCK_DIR to a folder every user of this "
            f"store can write (on the same file system when several machines share the store). "
            f"Nothing was computed."
        )
    return StoreError(f"Cannot create or open lock files in {directory}: {error}. Nothing was computed.")


def _open_lock(root: Path, key: FeatureKey) -> IO[bytes]:
    directory = lock_directory(root)
    try:
        directory.mkdir(mode=0o775, parents=True, exist_ok=True)
        check_lock_folder(directory, error=StoreError)
        return open_lock_file(lock_path(root, key), error=StoreError)
    except OSError as error:
        raise _unusable(directory, error) from error


@contextlib.contextmanager
def hold(
    root: Path,
    keys: Iterable[FeatureKey],
    *,
    on_wait: Callable[[FeatureKey], None] | None = None,
    timeout: float | None = None,
) -> Iterator[list[FeatureKey]]:
    """Hold the exclusive locks of `keys`, taken in digest order (so two callers cannot deadlock).

    `on_wait(key)` is called before waiting for a key another process holds (`holder`
    of its `lock_path` says who).
    Yields the keys, in the order they were locked.

    Raises:
        EntryLockedError: If a key stays locked by another process for `timeout` seconds
            (see `lock_timeout`); the message names the holder.
        StoreError: If the lock files cannot be created (a shared store this user cannot write),
            or one is not safe to use (see `layerprobe.core.lock_files`).
    """
    seconds = lock_timeout(timeout, error=StoreError)
    ordered = sorted(set(keys), key=lambda k: k.digest)
    with contextlib.ExitStack() as stack:
        for key in ordered:
            path = lock_path(root, key)
            take(
                stack.enter_context(_open_lock(root, key)), path, seconds,
                on_wait=None if on_wait is None else (lambda key=key: on_wait(key)),
                gave_up=lambda who, key=key, path=path: EntryLockedError(
                    f"Gave up after waiting {seconds:g} s for the lock of {key.entry_name}, held by "
                    f"{who} (lock file {path}). That process is still extracting these features "
                    f"(the lock is released when it exits, even if killed): wait and run again, raise the "
                    f"limit (lock_timeout, or LAYERPROBE_LOCK_TIMEOUT in seconds), or stop that process."
                ),
            )
        yield ordered


@contextlib.contextmanager
def hold_if_free(root: Path, key: FeatureKey) -> Iterator[bool]:
    """Hold `key`'s lock if no process does, without waiting; yields whether it is held.

    A lock file that cannot be opened (no `.locks` folder yet, read-only store) or is not safe to
    use counts as not held.
    """
    path = lock_path(root, key)
    try:
        check_lock_folder(path.parent, error=StoreError)
        handle = open_lock_file(path, error=StoreError)
    except (OSError, StoreError):
        yield False
        return
    with handle:
        try:
            take(handle, path, 0, gave_up=EntryLockedError)
        except EntryLockedError:
            yield False
            return
        yield True
