"""Reading a whole file that should be small: the one way layerprobe reads its configs and records.

Configs, CSV manifests, results tables, classifier sidecars, row records,
checkpoint states, plans and `.layerprobe.json` files are read whole into
memory. A path can name something that never ends or never starts: a FIFO
(whose `open` waits for a writer), a character device such as `/dev/zero`
(endless bytes), or a regular file far too large. So `read_bounded_bytes`
opens without blocking, refuses anything but a regular file before reading a
byte, and reads at most `max_bytes` (a file that grows while read is refused
too), raising one `UnusableFileError` line that names the file, what it should
have been, and the limit.
"""

from __future__ import annotations

import os
import stat

from .errors import UnusableFileError

__all__ = ["RECORD_MAX_BYTES", "TABLE_MAX_BYTES", "file_kind", "read_bounded_bytes", "read_bounded_text"]

RECORD_MAX_BYTES = 64 << 20
"""The largest config, sidecar, row record, plan or state file layerprobe reads (64 MiB)."""
TABLE_MAX_BYTES = 1 << 30
"""The largest CSV (a dataset manifest, a results table, a training history) layerprobe reads (1 GiB)."""

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a `st_mode` describes, for messages: "a regular file", "a FIFO (named pipe)", "a character device"..."""
    return next((kind for test, kind in _KINDS if test(mode)), "a regular file" if stat.S_ISREG(mode) else
                "not a regular file")


def _size_text(n_bytes: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n_bytes >= 1 << shift:
            return f"{n_bytes / (1 << shift):.1f} {unit}"
    return f"{n_bytes} bytes"


def _too_large(path: str, what: str, size: str, max_bytes: int) -> UnusableFileError:
    return UnusableFileError(
        f"The {what} {path} is {size}, more than the {_size_text(max_bytes)} layerprobe accepts for it: it cannot "
        f"be one. Check the path. Received: path={path!r}"
    )


def read_bounded_bytes(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file at `path` (links followed), at most `max_bytes` of them.

    Args:
        path: The file.
        what: What the file should be, for the message ("experiment config", "CSV file").
        max_bytes: The largest size accepted.

    Raises:
        UnusableFileError: (an `OSError` and a `LayerprobeError`) If `path` is not a
            regular file (a folder, a FIFO, a device, a socket), or holds more than
            `max_bytes`; nothing is read then.
        OSError: If it cannot be opened (`FileNotFoundError`, `PermissionError`...).

    Example:
        >>> text = read_bounded_bytes("run.toml", "experiment config", RECORD_MAX_BYTES).decode()
    """
    name = os.fspath(path)
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens at once, and is refused below
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnusableFileError(
                f"The {what} {name} is {file_kind(info.st_mode)}, not a regular file: layerprobe reads regular "
                f"files only (a FIFO or a device can block or never end). Give the path of the file itself. "
                f"Received: path={name!r}"
            )
        if info.st_size > max_bytes:
            raise _too_large(name, what, _size_text(info.st_size), max_bytes)
        parts, n_read = [], 0
        while n_read <= max_bytes:
            part = os.read(fd, min(max_bytes + 1 - n_read, 1 << 24) or 1)
            if not part:
                break
            parts.append(part)
            n_read += len(part)
        if n_read > max_bytes:  # it grew while read
            raise _too_large(name, what, f"more than {_size_text(max_bytes)}", max_bytes)
        return b"".join(parts)
    finally:
        os.close(fd)


def read_bounded_text(
    path: str | os.PathLike, what: str, max_bytes: int, *, encoding: str = "utf-8", errors: str = "strict"
) -> str:
    """`read_bounded_bytes`, decoded (`UnicodeDecodeError` as `bytes.decode` raises it)."""
    return read_bounded_bytes(path, what, max_bytes).decode(encoding, errors)
