"""sha256 of many image files, read in parallel threads and cached per file.

`file_digests(paths)` backs `ImageDataset.digest("content")`. Reading every
byte of a large dataset takes time, so each file's digest is cached, keyed by
its device and inode and checked against its size, modification time *and
change time* (`st_ctime_ns`, which no user can set back: writing new pixels
and restoring the mtime with `touch -d` still changes it). A rerun reads only
new or changed files; a dataset moved with `mv` keeps its inodes and its cache.

The cache is one small JSON file per dataset root,
`$LAYERPROBE_CACHE_DIR/file-digests/<root digest>.json` (default
`$XDG_CACHE_HOME/layerprobe`, else `~/.cache/layerprobe`). It is only a
cache: unreadable or unwritable, it is ignored (every file is read), and
concurrent writers at worst lose each other's additions.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from ...core.atomic import write_text_atomically
from ...core.cores import usable_cores
from ...core.digests import file_digest
from ...core.files import RECORD_MAX_BYTES, file_kind, read_bounded_text
from .decoding import with_io_retries

__all__ = ["cache_directory", "errno_name", "file_digests", "file_identity"]

_CACHE_VERSION = 1


def cache_directory() -> Path:
    """Where layerprobe caches file digests: `$LAYERPROBE_CACHE_DIR`, else `$XDG_CACHE_HOME/layerprobe`,
    else `~/.cache/layerprobe`."""
    if os.environ.get("LAYERPROBE_CACHE_DIR"):
        return Path(os.environ["LAYERPROBE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "layerprobe"


def _cache_file(root: str | None) -> Path:
    name = hashlib.sha256((root or "<no root>").encode("utf-8")).hexdigest()[:16]
    return cache_directory() / "file-digests" / f"{name}.json"


def _read_cache(path: Path) -> dict[str, list]:
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        stored = json.loads(read_bounded_text(path, "file-digest cache", RECORD_MAX_BYTES))
        if stored.get("version") == _CACHE_VERSION and isinstance(stored.get("files"), dict):
            return stored["files"]
    return {}


def _stamp(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def file_identity(info: os.stat_result) -> list[int]:
    """What tells a file from any other and from its own earlier content without reading it:
    device, inode, size, mtime and ctime (see the module docstring)."""
    return [info.st_dev, info.st_ino, *_stamp(info)]


def file_digests(
    paths: Sequence[str], *, root: str | None = None, n_workers: int | None = None, cache: bool = True
) -> list[str | None]:
    """The `sha256:<hex>` of each file's bytes; None for a file that does not exist.

    A file that exists but cannot be read for a reason of its own (permission denied,
    a directory) gets `"unreadable:<errno name>"`, and one that is not a regular file
    (a FIFO, a device such as /dev/zero) `"unreadable:<kind>"` without being opened: it
    will be skipped at decoding, and its digest changes when it becomes readable.

    Args:
        paths: The files.
        root: The dataset root, which names the cache file.
        n_workers: Reading threads (default: min(8, CPU count)); hashlib releases the
            GIL, so threads overlap reads and hashing.
        cache: Use and update the per-file cache (see the module docstring).

    Raises:
        ImageReadError: If an I/O error (EIO, ESTALE...) persists after retries.
    """
    cache_path = _cache_file(root)
    cached = _read_cache(cache_path) if cache else {}
    results: list[str | None] = [None] * len(paths)
    todo: list[tuple[int, str, list[int]]] = []
    for position, path in enumerate(paths):
        try:
            stat_result = with_io_retries(lambda: os.stat(path), path)
        except FileNotFoundError:
            continue
        except OSError as error:  # a path problem (ENOTDIR, ELOOP...): skipped at decoding
            results[position] = f"unreadable:{errno_name(error)}"
            continue
        if not stat.S_ISREG(stat_result.st_mode):  # a FIFO would block, /dev/zero never end: never read
            kind = "EISDIR" if stat.S_ISDIR(stat_result.st_mode) else file_kind(stat_result.st_mode)
            results[position] = f"unreadable:{kind}"  # skipped at decoding
            continue
        identity, stamp = f"{stat_result.st_dev}:{stat_result.st_ino}", _stamp(stat_result)
        entry = cached.get(identity)
        if entry is not None and entry[:3] == stamp:
            results[position] = entry[3]
        else:
            todo.append((position, identity, stamp))

    def read(item: tuple[int, str, list[int]]) -> str | None:
        path = paths[item[0]]
        try:
            return with_io_retries(lambda: file_digest(path), path)
        except FileNotFoundError:
            return None
        except OSError as error:  # EACCES, EISDIR...: about the file itself
            return f"unreadable:{errno_name(error)}"

    workers = n_workers or min(8, usable_cores())
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="layerprobe-digest") as executor:
        digests = list(executor.map(read, todo))
    fresh = {}
    for (position, identity, stamp), digest in zip(todo, digests, strict=True):
        results[position] = digest
        if digest is not None and digest.startswith("sha256:"):
            fresh[identity] = [*stamp, digest]
    if cache and fresh:
        with contextlib.suppress(OSError):
            merged = {**_read_cache(cache_path), **fresh}
            write_text_atomically(cache_path, json.dumps({"version": _CACHE_VERSION, "files": merged}))
    return results


def errno_name(error: OSError) -> str:
    """"EACCES" for a PermissionError, the exception's class name without an errno."""
    return errno.errorcode.get(error.errno, str(error.errno)) if error.errno is not None else type(error).__name__
