"""Shared test fixtures: quiet, deterministic Keras, and the optional ../shared data."""

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared_dir():
    """The ../shared folder beside the repo; tests using it skip where it is absent."""
    if not (SHARED_DIR / "datasets").is_dir():
        pytest.skip(f"../shared is absent ({SHARED_DIR}); shared-data tests are skipped")
    return SHARED_DIR


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "shared_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)
