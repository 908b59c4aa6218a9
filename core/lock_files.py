"""Exclusive lock files: one process at a time, its holder named, waits bounded, files opened safely.

A lock is a file held with `fcntl.flock`: the operating system releases it
when its holder exits or is killed, so a crash never leaves anything locked.
The holder writes its pid, host and start time into the file, so that a
process kept waiting can say who it waits for (`holder`). Waiting is bounded:
after `timeout` seconds (`LAYERPROBE_LOCK_TIMEOUT`, default 3600) it gives up
naming the holder.

Lock files live in folders other users may write (a group-shared feature
store, a shared `LAYERPROBE_LOCK_DIR`), so a lock file is opened without
following a symbolic link (`O_NOFOLLOW`), and used only if it is a regular
file with one link (a hard link would make the holder record overwrite
another file) owned by this user or by one of its groups; anything else is
refused, naming the file. Lock files are created with mode 0o664 (less the
umask: never writable by every user), and a folder that every user may write
must have the sticky bit, as /tmp has, or anyone could delete a lock file
while it is held.

The feature store's per-key locks (`layerprobe.features.store.locks`), the
results table of a run and its finetuning checkpoints use these. `hold_lock_file`
removes its file when the block ends (still holding it, so a process waiting
on that file sees it gone and takes a new one): an output folder keeps no lock
files.
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
from typing import IO, Callable, Iterator

from .errors import LayerprobeError

__all__ = ["DEFAULT_LOCK_TIMEOUT", "check_lock_folder", "hold_lock_file", "holder", "lock_timeout",
           "open_lock_file", "take"]

DEFAULT_LOCK_TIMEOUT = 3600.0
_POLL_SECONDS = (0.05, 0.1, 0.2, 0.5, 1.0)  # back-off between tries, then every second
_LOCK_FILE_MODE = 0o664  # less the umask; the group writes in a group-shared folder
_HOLDER_RECORD_BYTES = 4096


def lock_timeout(timeout: float | None = None, *, error: type[LayerprobeError] = LayerprobeError) -> float:
    """Seconds to wait for a lock: `timeout`, else `$LAYERPROBE_LOCK_TIMEOUT`, else 3600.

    Raises:
        error: If the value is not a number >= 0.
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
        raise error(f"The lock timeout must be a number of seconds >= 0. Received: {source}={timeout!r}")
    return value


def holder(path: Path) -> str:
    """Who holds (or last held) the lock file at `path`, as recorded there: "pid N on HOST since TIME".

    Read without following a symbolic link, and at most 4 KiB (a FIFO there cannot block it).
    """
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


def _unsafe(path: Path, problem: str, error: type[LayerprobeError]) -> LayerprobeError:
    """The error for something other than a lock file of this user or its group where a lock file goes."""
    return error(
        f"The lock file {path} {problem}. layerprobe writes its lock record into that file, so it uses only "
        f"a regular file with one link, owned by this user or one of its groups. If you did not put it "
        f"there, another user who may write {path.parent} did: remove it (`rm {path}`) and run again, or "
        f"set LAYERPROBE_LOCK_DIR to a folder only your group may write. Nothing was computed."
    )


def check_lock_folder(directory: Path, *, error: type[LayerprobeError] = LayerprobeError) -> None:
    """Refuse a lock folder every user may write without the sticky bit (any user could delete a held lock).

    Raises:
        error: For such a folder.
    """
    try:
        mode = directory.stat().st_mode
    except OSError:
        return  # opening the lock file reports it
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise error(
            f"The lock folder {directory} is writable by every user and lacks the sticky bit, so any user "
            f"could delete or replace a lock file while another process holds it, and two processes would "
            f"write the same files. Run `chmod +t {directory}` (as /tmp is), or `chmod o-w {directory}`, or "
            f"set LAYERPROBE_LOCK_DIR to another folder. Nothing was computed."
        )


def open_lock_file(path: Path, *, error: type[LayerprobeError] = LayerprobeError) -> IO[bytes]:
    """Open (creating if needed) the lock file at `path`, refusing anything but a lock file.

    Never follows a symbolic link; an existing file is opened without `O_CREAT`, so a
    sticky folder's `protected_regular` lets group members open each other's lock files.

    Raises:
        error: A symbolic link, not a regular file, several hard links, or another
            owner (see the module docstring).
        OSError: If it cannot be opened or created.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(100):  # a file removed or created between the two opens: try again
        try:
            fd = os.open(path, flags)
            break
        except FileNotFoundError:
            pass
        except OSError as failure:
            if failure.errno == errno.ELOOP and os.path.islink(path):
                raise _unsafe(path, f"is a symbolic link (to {os.readlink(path)!r})", error) from None
            if failure.errno in (errno.EISDIR, errno.ENXIO):
                raise _unsafe(path, "is not a regular file", error) from None
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
            raise _unsafe(path, "is not a regular file", error)
        if opened.st_nlink != 1:
            raise _unsafe(path, f"has {opened.st_nlink} hard links: it is also another file", error)
        if opened.st_uid != os.geteuid() and opened.st_gid not in {os.getegid(), *os.getgroups()}:
            raise _unsafe(
                path, f"is owned by uid {opened.st_uid} and gid {opened.st_gid}, neither this user nor one of its "
                      f"groups", error
            )
        return open(fd, "r+b", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def take(
    handle: IO[bytes],
    path: Path,
    timeout: float,
    *,
    gave_up: Callable[[str], LayerprobeError],
    on_wait: Callable[[], None] | None = None,
) -> None:
    """Take the flock on `handle` (the lock file at `path`), waiting at most `timeout` seconds, and
    record this process as its holder.

    `on_wait()` is called once before waiting for another holder.

    Raises:
        LayerprobeError: `gave_up(holder)` after `timeout` seconds, with the holder's description.
    """
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if on_wait is not None:
            on_wait()
        deadline = time.monotonic() + timeout
        for attempt in range(1 << 62):
            left = deadline - time.monotonic()
            if left <= 0:
                raise gave_up(holder(path)) from None
            time.sleep(min(left, _POLL_SECONDS[min(attempt, len(_POLL_SECONDS) - 1)]))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                continue
    _record_holder(handle)


@contextlib.contextmanager
def hold_lock_file(
    path: Path,
    *,
    doing: str,
    error: type[LayerprobeError],
    timeout: float | None = None,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Hold the lock file at `path` (its folder created if needed) for the block.

    Args:
        path: The lock file.
        doing: What its holder does, for the message of a wait that gives up
            (e.g. "writing the results table OUT/results.csv").
        error: The `LayerprobeError` subclass of every failure.
        timeout: Seconds to wait for another holder (see `lock_timeout`).
        on_wait: Called once before waiting for another holder.

    Raises:
        error: If the lock file is unsafe (see `open_lock_file`), cannot be created, or
            another process holds it longer than `timeout`.
    """
    seconds = lock_timeout(timeout, error=error)
    while True:
        try:
            path.parent.mkdir(mode=0o775, parents=True, exist_ok=True)
            check_lock_folder(path.parent, error=error)
            handle = open_lock_file(path, error=error)
        except OSError as failure:
            raise error(f"Cannot create or open the lock file {path}: {failure}.") from failure
        with handle:
            take(
                handle, path, seconds, on_wait=on_wait,
                gave_up=lambda who: error(
                    f"Gave up after waiting {seconds:g} s for the lock file {path}, held by {who}, which is {doing}. "
                    f"Wait for that process and run again, raise the limit (LAYERPROBE_LOCK_TIMEOUT in seconds), or "
                    f"stop it (the lock is released when it exits, even if killed)."
                ),
            )
            if not _still_at(handle, path):  # its holder removed it while this process waited: take the new one
                continue
            try:
                yield
            finally:
                with contextlib.suppress(OSError):  # removed while held, so a waiter on it sees it gone and retries
                    path.unlink()
            return


def _still_at(handle: IO[bytes], path: Path) -> bool:
    """Whether the open lock file is still the file at `path` (not removed, nor replaced by a new one)."""
    try:
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False
