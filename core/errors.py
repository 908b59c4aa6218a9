"""The exceptions layerprobe raises for problems a user can fix.

Everything here derives from `LayerprobeError`, so a caller (and the CLI, which
prints these as one line and exits non-zero) can tell a user error from a bug:
any other exception is a bug in layerprobe or a library and keeps its traceback.
Classes that replace a built-in error keep it as a second base (`ConfigError`
is still a `ValueError`), as scikit-learn's `NotFittedError` does.
"""

from __future__ import annotations


class LayerprobeError(Exception):
    """Base class: something the user asked for cannot be done as asked; the message says how to fix it."""


class ConfigError(LayerprobeError, ValueError):
    """An experiment config is invalid; the message lists every problem found.

    Attributes:
        problems: One line per problem, each naming its section and key.
    """

    def __init__(self, problems: list[str], source: str):
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(
            f"The experiment config {source} has {len(self.problems)} problem(s); nothing was run. "
            f"Fix them and run again:\n{lines}"
        )

    def __reduce__(self):
        return type(self), (self.problems, self.args[0])


class InputError(LayerprobeError, ValueError):
    """Images, labels, a manifest or arrays that cannot be used as given."""


class UnreadableImageError(InputError):
    """An image file that cannot be decoded.

    Attributes:
        reason: Short text starting with the kind of failure: "file not found",
            "empty file", "not a regular file: ..." (a FIFO, a device; never read),
            "cannot open file: ...", "not an image: ...",
            "truncated or corrupt image: ..." or "too large: ...".
        path: The file, or None.
    """

    def __init__(self, reason: str, path: str | None = None):
        super().__init__(reason if path is None else f"{reason} (file: {path})")
        self.reason = reason
        self.path = path

    def __reduce__(self):
        return type(self), (self.reason, self.path)


class ImageReadError(InputError):
    """An image file that could not be read because of an I/O error (not its content).

    Raised after a few retries for errors such as EIO, ESTALE (NFS), EMFILE or
    ENOMEM: the image is not recorded as unreadable and the run stops, since
    the file itself may be fine.

    Attributes:
        path: The file.
        errno: The `errno` of the last failure (None for a `MemoryError`).
        attempts: How many times it was tried.
    """

    def __init__(self, message: str, path: str | None = None, errno: int | None = None, attempts: int = 1):
        super().__init__(message)
        self.path = path
        self.errno = errno
        self.attempts = attempts

    def __reduce__(self):
        return type(self), (self.args[0], self.path, self.errno, self.attempts)


class UnusableFileError(LayerprobeError, OSError):
    """A file layerprobe reads whole is not a regular file (a FIFO, a device, a folder) or is too large
    for what it should be; see `layerprobe.core.files`. An `OSError` too, so that readers which treat an
    unreadable cache or record as missing still do."""

    def __str__(self) -> str:  # OSError would add nothing, but keep the one-line message as given
        return str(self.args[0])


class BackboneError(LayerprobeError, ValueError):
    """A backbone, its arguments or its input size cannot be used."""


class UnknownLayerError(BackboneError):
    """A layer selector matches no layer of the backbone."""


class WeightsUnavailableError(BackboneError, RuntimeError):
    """The requested weights cannot be obtained (offline, missing or wrong file)."""


class OutputError(LayerprobeError):
    """A run's output folder cannot be used or written (a file in its place, read-only, disk full)."""


class StoreError(LayerprobeError):
    """A feature store cannot be used as asked (unwritable, full, bad name)."""


class CorruptEntryError(StoreError):
    """A stored entry cannot be read or does not match its own metadata."""


class IncompleteEntryError(StoreError):
    """Features were asked for that are not (fully) extracted yet."""


class EntryNotFoundError(StoreError, KeyError):
    """No entry matches the given name or digest."""

    def __str__(self) -> str:  # KeyError would quote the message.
        return str(self.args[0])


class EntryLockedError(StoreError):
    """Another process holds an entry's lock (or HDF5's file lock) longer than we may wait."""
