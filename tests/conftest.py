"""Shared test fixtures: quiet, deterministic Keras, and the optional ../shared data."""

import os
import pickle
import pwd
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# layerprobe's own default (features/backend.py), set before any test module imports TensorFlow
# itself, so that this process and the dask workers it starts compute with the same kernels.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import pytest  # noqa: E402

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared_dir():
    """The ../shared folder beside the repo; tests using it skip where it is absent."""
    if not (SHARED_DIR / "datasets").is_dir():
        pytest.skip(f"../shared is absent ({SHARED_DIR}); shared-data tests are skipped")
    return SHARED_DIR


def _run_as_nobody(function):
    """`function()` in a child forked from this process that becomes user nobody (root writes
    and reads anywhere, so a permission test proves nothing as root); as this user when not root.

    Returns None, or (exception class names, message) of what it raised.
    """
    def call():
        try:
            function()
        except BaseException as error:  # reported to the parent
            return [cls.__name__ for cls in type(error).__mro__], str(error)
        return None

    if os.geteuid() != 0:
        return call()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, run, report, exit without running the parent's clean-ups
        try:
            os.close(read)
            nobody = pwd.getpwnam("nobody")
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.write(write, pickle.dumps(call()))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def _write_colour_images(root: Path, counts, *, size: int = 32, seed: int = 0) -> Path:
    """`counts[split][class]` noisy PNGs in `root/split/class/` (`root/class/` for split ""), returns `root`.

    The class at position k brightens channel k % 3, so the classes are easy to tell apart.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, classes in counts.items():
        for position, (name, count) in enumerate(classes.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 90, (size, size, 3))
                pixels[..., position % 3] += 140
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def write_colour_images():
    """Writes class-coloured PNG folders (see `_write_colour_images`); usable in fixtures of any scope."""
    return _write_colour_images


@pytest.fixture
def as_nobody():
    """Runs a function as user nobody (see `_run_as_nobody`); for real permission errors as root."""
    return _run_as_nobody


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "shared_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)


@pytest.fixture
def forward_passes(monkeypatch):
    """Records each batch's forward pass (any extractor's device loop) as the number of outputs it returned."""
    from layerprobe.features.device import DeviceForward

    calls = []
    original = DeviceForward.fetch

    def counting(self, pending):
        outputs = original(self, pending)
        calls.append(len(outputs))
        return outputs

    monkeypatch.setattr(DeviceForward, "fetch", counting)
    return calls
