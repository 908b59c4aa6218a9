"""Import Keras once, with the backend's C++ start-up notices muted."""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["import_keras_quietly"]


def import_keras_quietly() -> Any:
    """Import Keras and create its device context with C++ stderr muted; return the module.

    TensorFlow prints start-up notices (oneDNN, missing CUDA) from C++ before
    its logging is configured, so no environment variable silences them all.
    Python errors still surface: they are raised after stderr is restored.
    Callers import Keras through this only when they need it, so work that is
    all cached never pays for the import.
    """
    if "keras" in sys.modules:
        import keras

        return keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras

            keras.ops.zeros((1,))
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return keras
