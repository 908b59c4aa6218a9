"""Scoped seeding of Keras, numpy and Python randomness (restored on exit)."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np

from .backend import (
    get_global_seed_state,
    isolated_default_seeds,
    set_global_seed_state,
)

__all__ = ["keras_seed"]


@contextlib.contextmanager
def keras_seed(seed: int | None) -> Iterator[None]:
    """Seed Keras (and numpy/Python) inside the block; restore their state after.

    Weight initialisation and shuffling inside the block are reproducible for a
    given seed, and code outside the block is not affected. `None` is a no-op.
    """
    if seed is None:
        yield
        return
    import keras

    saved_python = random.getstate()
    saved_numpy = np.random.get_state()
    saved_keras = get_global_seed_state()
    keras.utils.set_random_seed(int(seed))
    try:
        # Default seeds come from a private generator: other threads using `random` cannot change them.
        with isolated_default_seeds(int(seed)):
            yield
    finally:
        random.setstate(saved_python)
        np.random.set_state(saved_numpy)
        set_global_seed_state(saved_keras)
