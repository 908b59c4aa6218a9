"""Scoped seeding of Keras, numpy and Python randomness (restored on exit)."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np

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
    from keras.src.backend.common import global_state

    saved_python = random.getstate()
    saved_numpy = np.random.get_state()
    saved_keras = {
        name: global_state.get_global_attribute(name)
        for name in ("global_random_seed", "global_seed_generator")
    }
    keras.utils.set_random_seed(int(seed))
    try:
        yield
    finally:
        random.setstate(saved_python)
        np.random.set_state(saved_numpy)
        for name, value in saved_keras.items():
            global_state.set_global_attribute(name, value)
