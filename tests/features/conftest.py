"""Fixtures of the features tests: photo-like pixels for image files written in a test."""

import numpy as np
import pytest


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: JPEG blocks with real detail, like a photo; (height, width, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def photo():
    """`photo(width, height, seed)`: photo-like (height, width, 3) uint8 pixels."""
    return _photo
