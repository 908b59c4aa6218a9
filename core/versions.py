"""Installed versions, looked up in one place: `installed_version` and `library_versions`.

Versions are read from the installed distributions' metadata
(`importlib.metadata`), never by importing the library, so asking costs no
import of Keras, TensorFlow or h5py. They describe a result (entry metadata,
sidecars, the numerics environment); they are never part of a cache key.
"""

from __future__ import annotations

import sys
from importlib import metadata

__all__ = ["installed_version", "layerprobe_version", "library_versions"]

# What every store entry records (distribution names; Keras's backend is added by the caller).
_RECORDED = ("h5py", "numpy", "keras", "layerprobe")


def installed_version(*distributions: str) -> str | None:
    """The version of the first of `distributions` that is installed, or None if none is.

    Several names cover packages published under more than one distribution
    (e.g. `"tensorflow", "tensorflow-cpu"`).
    """
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def layerprobe_version() -> str:
    """This package's version, or `"0+unknown"` when it runs from a tree that was never installed."""
    return installed_version("layerprobe") or "0+unknown"


def library_versions() -> dict[str, str]:
    """Versions of Python, h5py, numpy, Keras (and its backend, where Keras is imported) and layerprobe."""
    versions = {"python": sys.version.split()[0]}
    for name in _RECORDED:
        found = installed_version(name)
        if found is not None:
            versions[name] = found
    keras = sys.modules.get("keras")
    if keras is not None:
        try:
            versions["keras_backend"] = keras.backend.backend()
        except Exception:  # a half-imported Keras: the backend is simply not recorded
            pass
    return versions
