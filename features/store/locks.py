"""The per-entry lock: at most one process writes a feature key at a time.

One lock file per key, `.locks/<key digest>.lock` in the store, held with
`fcntl.flock`: the operating system releases it when its holder exits or is
killed, so a crash never leaves a key locked. Readers take no lock: they only
open committed files.
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Callable, Iterable, Iterator

from layerprobe.features.keys import FeatureKey

__all__ = ["LOCKS_FOLDER", "hold", "hold_if_free", "lock_path"]

LOCKS_FOLDER = ".locks"


def lock_path(root: Path, key: FeatureKey) -> Path:
    """The lock file of `key` in the store at `root`."""
    return root / LOCKS_FOLDER / f"{key.digest}.lock"


@contextlib.contextmanager
def hold(
    root: Path, keys: Iterable[FeatureKey], *, on_wait: Callable[[FeatureKey], None] | None = None
) -> Iterator[list[FeatureKey]]:
    """Hold the exclusive locks of `keys`, taken in digest order (so two callers cannot deadlock).

    `on_wait(key)` is called before blocking on a key another process holds.
    Yields the keys, in the order they were locked.
    """
    (root / LOCKS_FOLDER).mkdir(exist_ok=True)
    ordered = sorted(set(keys), key=lambda k: k.digest)
    with contextlib.ExitStack() as stack:
        for key in ordered:
            handle = stack.enter_context(open(lock_path(root, key), "a+"))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(key)
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield ordered


@contextlib.contextmanager
def hold_if_free(root: Path, key: FeatureKey) -> Iterator[bool]:
    """Hold `key`'s lock if no process does, without waiting; yields whether it is held.

    A lock file that cannot be opened (no `.locks` folder yet, read-only store) counts as not held.
    """
    try:
        handle = open(lock_path(root, key), "a+")
    except OSError:
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
