"""`library_versions`: the library versions recorded in every entry's metadata (not in its key)."""

from __future__ import annotations

import contextlib
import sys

import numpy as np

from layerprobe.features.store.hdf5 import H5PY_VERSION

__all__ = ["library_versions"]


def library_versions() -> dict[str, str]:
    """Versions of Python, h5py, numpy, Keras (and its backend) and layerprobe, where installed."""
    versions = {"python": sys.version.split()[0], "h5py": H5PY_VERSION, "numpy": np.__version__}
    with contextlib.suppress(Exception):
        import keras

        versions["keras"] = keras.__version__
        versions["keras_backend"] = keras.backend.backend()
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        versions["layerprobe"] = version("layerprobe")
    return versions
