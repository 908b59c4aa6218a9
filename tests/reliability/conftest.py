"""Shared set-up of the fault and bad-input suite.

One tiny workload everywhere: 24 random 32x32 images, VGG16 with random
weights, two layers, batches of 4 and chunks of 8 (3 chunks of 2 batches), so
that where a fault lands is predictable. `Harness.run_script` runs that
extraction in a fresh Python process with a fault-injection prelude, the
technique of tests/features/test_extract.py's SIGKILL test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from features.extract import FeatureExtractor
from features.inputs import from_arrays
from features.store import FeatureStore

REPO = Path(__file__).resolve().parents[2]

SETTINGS = dict(model="VGG16", weights=None, layers=["block1_pool", "block3_pool"], input_size=32, batch_size=4)
CHUNK_SIZE = 8
N_SAMPLES = 24

_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, {repo!r})
    import numpy as np
    from features import store as store_module
    from features.extract import FeatureExtractor
    from features.inputs import from_arrays
    from features.store import FeatureStore

    STORE = {store!r}
    LOG = []

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def log(message):
        LOG.append(message)

    # ---- fault injection
    {fault}
    # ----

    data = np.load({data!r})
    extractor = FeatureExtractor(**{settings!r})
    report = extractor.extract(
        from_arrays(data["X"], data["y"]), FeatureStore(STORE), chunk_size={chunk_size}, progress=False, log=log
    )
    print(json.dumps(dict(computed=report.computed, cached=report.cached, n_forward=report.n_forward, log=LOG)))
    """
)


class Harness:
    """The workload, a reference run of it, and a runner for faulty copies of it."""

    def __init__(self, root: Path):
        self.root = root
        rng = np.random.default_rng(0)
        self.X = rng.integers(0, 256, size=(N_SAMPLES, 32, 32, 3), dtype=np.uint8)
        self.y = np.arange(N_SAMPLES) % 3
        self.data_path = root / "data.npz"
        np.savez(self.data_path, X=self.X, y=self.y)
        self.extractor = FeatureExtractor(**SETTINGS)
        self.layers = self.extractor.layer_names
        self.keys = self.extractor.keys(self.dataset())
        store = FeatureStore(root / "reference")
        self.extract(store)
        self.reference = {name: store.load(key) for name, key in self.keys.items()}

    def dataset(self):
        return from_arrays(self.X, self.y)

    def extract(self, store: FeatureStore, **kwargs):
        """The workload, in this process."""
        kwargs.setdefault("chunk_size", CHUNK_SIZE)
        return self.extractor.extract(self.dataset(), store, progress=False, **kwargs)

    def run_script(self, store_dir: Path, fault: str = "", *, settings=None, background=False):
        """The workload in a fresh process after running `fault` (Python code).

        The prelude may call `die()` (SIGKILL itself) and use `STORE` and `log`.
        Returns the CompletedProcess, or the Popen when `background`.
        """
        script = _SCRIPT.format(
            repo=str(REPO),
            store=str(store_dir),
            data=str(self.data_path),
            settings=settings or SETTINGS,
            chunk_size=CHUNK_SIZE,
            fault=textwrap.dedent(fault).strip(),
        )
        command = [sys.executable, "-c", script]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
        if background:
            return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)

    def assert_matches_reference(self, store: FeatureStore, names=None) -> None:
        """Bit-identical features, same rows and the same recorded checksum as the reference run."""
        for name in self.layers if names is None else names:
            loaded = store.load(self.keys[name])
            reference = self.reference[name]
            assert np.array_equal(loaded.X, reference.X), name
            np.testing.assert_array_equal(loaded.sample_ids, reference.sample_ids)
            assert loaded.metadata["features_sha256"] == reference.metadata["features_sha256"]


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    return Harness(tmp_path_factory.mktemp("reliability"))


def stray_files(root: Path) -> list[Path]:
    """Temporary files anywhere in a store (entries, chunks, fingerprints, probes)."""
    return sorted(root.rglob(".tmp-*"))


def decoder_threads_stop(timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t.name.startswith("layerprobe-decode")]:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def helpers():
    """Small functions shared by the test modules (conftest is not importable as a module)."""

    class _Helpers:
        stray_files = staticmethod(stray_files)
        decoder_threads_stop = staticmethod(decoder_threads_stop)
        report_of = staticmethod(lambda stdout: json.loads(stdout.strip().splitlines()[-1]))

    return _Helpers
