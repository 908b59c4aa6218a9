"""The per-entry lock: at most one process writes a feature key at a time.

One lock file per key, `.locks/<key digest>.lock` in the store (or in
`$LAYERPROBE_LOCK_DIR` when set, for a shared store whose `.locks/` this user
cannot write), held with `fcntl.flock`: the operating system releases it when
its holder exits or is killed, so a crash never leaves a key locked. Readers
take no lock: they only open committed files.

The holder writes its pid, host and start time into the lock file, so that a
process kept waiting can say who it waits for. Waiting is bounded: after
`timeout` seconds (`LAYERPROBE_LOCK_TIMEOUT`, default 3600) it gives up with
an `EntryLockedError` naming the holder.

A store shared with a group (or a shared `LAYERPROBE_LOCK_DIR`) lets other
users put files where lock files go, so a lock file is opened without
following a symbolic link (`O_NOFOLLOW`), and used only if it is a regular
file with one link (a hard link would make the holder record overwrite
another file) owned by this user or by one of its groups; anything else is a
`StoreError` naming the file, before any work. Lock files are created with mode
0o664 (less the umask: never writable by every user), and a lock folder that
every user may write must have the sticky bit, as /tmp has, or anyone could
delete a lock file while it is held.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from ..core.errors import EntryLockedError, StoreError
from ..keys import FeatureKey

__all__ = ["DEFAULT_LOCK_TIMEOUT", "LOCKS_FOLDER", "hold", "hold_if_free", "holder", "lock_path", "lock_timeout"]

LOCKS_FOLDER = ".locks"
DEFAULT_LOCK_TIMEOUT = 3600.0
_POLL_SECONDS = (0.05, 0.1, 0.2, 0.5, 1.0)  # back-off between tries, then every second
_LOCK_FILE_MODE = 0o664  # less the umask; the group writes in a group-shared store
_HOLDER_RECORD_BYTES = 4096


def lock_directory(root: Path) -> Path:
    """Where the lock files of the store at `root` are: `$LAYERPROBE_LOCK_DIR` if set, else `root/.locks`."""
    override = os.environ.get("LAYERPROBE_LOCK_DIR")
    return Path(override).expanduser() if override else root / LOCKS_FOLDER


def lock_path(root: Path, key: FeatureKey) -> Path:
    """The lock file of `key` in the store at `root`."""
    return lock_directory(root) / f"{key.digest}.lock"


def lock_timeout(timeout: float | None = None) -> float:
    """Seconds to wait for a lock: `timeout`, else `$LAYERPROBE_LOCK_TIMEOUT`, else 3600.

    Raises:
        StoreError: If the value is not a number >= 0.
    """
    source = "timeout"
    if timeout is None:
        text = os.environ.get("LAYERPROBE_LOCK_TIMEOUT")
        if not text:
            return DEFAULT_LOCK_TIMEOUT
        source, timeout = "LAYERPROBE_LOCK_TIMEOUT", text
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        value = -1.0
    if not value >= 0:
        raise StoreError(f"The lock timeout must be a number of seconds >= 0. Received: {source}={timeout!r}")
    return value


def holder(path: Path) -> str:
    """Who holds (or last held) the lock file at `path`, as recorded there: "pid N on HOST since TIME"."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            text = os.read(fd, _HOLDER_RECORD_BYTES) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
        finally:
            os.close(fd)
        record = json.loads(text.decode("utf-8") or "null")
        return f"pid {record['pid']} on {record['host']} since {record['since']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "a process that did not record itself"


def _record_holder(handle: IO[bytes]) -> None:
    """Write this process's pid, host and start time into the lock file it now holds.

    Best effort: on a full disk the record is simply missing. The file is unbuffered, so
    nothing failed stays buffered to fail again when it is closed.
    """
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with contextlib.suppress(OSError):
        handle.seek(0)
        handle.truncate(0)
        handle.write(json.dumps(record).encode())


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


def _unsafe(path: Path, problem: str) -> StoreError:
    """The error for something other than a lock file of this user or its group where a lock file goes."""
    return StoreError(
        f"The lock file {path} {problem}. layerprobe writes its lock record into that file, so it uses only "
        f"a regular file with one link, owned by this user or one of its groups. If you did not put it "
        f"there, another user who may write {path.parent} did: remove it (`rm {path}`) and run again, or "
        f"set LAYERPROBE_LOCK_DIR to a folder only your group may write. Nothing was computed."
    )


def _check_directory(directory: Path) -> None:
    """Refuse a lock folder every user may write without the sticky bit (any user could delete a held lock).

    Raises:
        StoreError: For such a folder.
    """
    try:
        mode = directory.stat().st_mode
    except OSError:
        return  # opening the lock file reports it
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise StoreError(
            f"The lock folder {directory} is writable by every user and lacks the sticky bit, so any user "
            f"could delete or replace a lock file while another process holds it, and two processes would "
            f"write one entry. Run `chmod +t {directory}` (as /tmp is), or `chmod o-w {directory}`, or set "
            f"LAYERPROBE_LOCK_DIR to another folder. Nothing was computed."
        )


def _open_lock_file(path: Path) -> IO[bytes]:
    """Open (creating if needed) the lock file at `path`, refusing anything but a lock file.

    Never follows a symbolic link; an existing file is opened without `O_CREAT`, so a
    sticky folder's `protected_regular` lets group members open each other's lock files.

    Raises:
        StoreError: A symbolic link, not a regular file, several hard links, or
            another owner (see the module docstring).
        OSError: If it cannot be opened or created.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(100):  # a file removed or created between the two opens: try again
        try:
            fd = os.open(path, flags)
            break
        except FileNotFoundError:
            pass
        except OSError as error:
            if error.errno == errno.ELOOP and os.path.islink(path):
                raise _unsafe(path, f"is a symbolic link (to {os.readlink(path)!r})") from None
            if error.errno in (errno.EISDIR, errno.ENXIO):
                raise _unsafe(path, "is not a regular file") from None
            raise
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, _LOCK_FILE_MODE)
            break
        except FileExistsError:
            continue
    else:
        raise OSError(errno.EAGAIN, f"{path} keeps appearing and disappearing")
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise _unsafe(path, "is not a regular file")
        if opened.st_nlink != 1:
            raise _unsafe(path, f"has {opened.st_nlink} hard links: it is also another file")
        if opened.st_uid != os.geteuid() and opened.st_gid not in {os.getegid(), *os.getgroups()}:
            raise _unsafe(
                path, f"is owned by uid {opened.st_uid} and gid {opened.st_gid}, neither this user nor one of its groups"
            )
        return open(fd, "r+b", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _open_lock(root: Path, key: FeatureKey) -> IO[bytes]:
    directory = lock_directory(root)
    try:
        directory.mkdir(mode=0o775, parents=True, exist_ok=True)
        _check_directory(directory)
        return _open_lock_file(lock_path(root, key))
    except OSError as error:
        raise _unusable(directory, error) from error


def _wait_for(handle: IO[bytes], path: Path, key: FeatureKey, timeout: float) -> None:
    """Block until the flock on `handle` is ours, or raise `EntryLockedError` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for attempt in range(1 << 62):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EntryLockedError(
                    f"Gave up after waiting {timeout:g} s for the lock of {key.entry_name}, held by "
                    f"{holder(path)} (lock file {path}). That process is still extracting these features "
                    f"(the lock is released when it exits, even if killed): wait and run again, raise the "
                    f"limit (lock_timeout, or LAYERPROBE_LOCK_TIMEOUT in seconds), or stop that process."
                ) from None
            time.sleep(min(left, _POLL_SECONDS[min(attempt, len(_POLL_SECONDS) - 1)]))


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
        StoreError: If the lock files cannot be created (a shared store this user cannot write).
    """
    seconds = lock_timeout(timeout)
    ordered = sorted(set(keys), key=lambda k: k.digest)
    with contextlib.ExitStack() as stack:
        for key in ordered:
            handle = stack.enter_context(_open_lock(root, key))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(key)
                _wait_for(handle, lock_path(root, key), key, seconds)
            _record_holder(handle)
        yield ordered


@contextlib.contextmanager
def hold_if_free(root: Path, key: FeatureKey) -> Iterator[bool]:
    """Hold `key`'s lock if no process does, without waiting; yields whether it is held.

    A lock file that cannot be opened (no `.locks` folder yet, read-only store) or is not safe to
    use (see `_open_lock_file`) counts as not held.
    """
    try:
        _check_directory(lock_directory(root))
        handle = _open_lock_file(lock_path(root, key))
    except (OSError, StoreError):
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        _record_holder(handle)
        yield True
