"""Shared set-up of the fault and bad-input suite.

One tiny workload everywhere: 24 random 32x32 images, VGG16 with random
weights, two layers, batches of 4 and chunks of 8 (3 chunks of 2 batches), so
that where a fault lands is predictable. The images come as an in-memory
array (`Harness.dataset`) or as the same pixels in PNG files
(`Harness.files_dataset`, which goes through decoding, the file digests and
the store's root-relative sample ids); `Harness.reference` and
`Harness.file_reference` hold an uninterrupted run of each.
`Harness.run_script` runs that extraction in a fresh Python process with a
fault-injection prelude, the technique of tests/features/test_extract.py's
SIGKILL test.

The pipeline cases write a small `layerprobe run` experiment instead
(`write_images`, `write_experiment`): 32x32 images whose dominant colour is
their class, VGG16 with random weights, two layers and two classifiers.
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
from typing import Mapping

import keras
import numpy as np
import pytest
from PIL import Image

from layerprobe.features.device import DeviceForward
from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import from_arrays, from_directory
from layerprobe.features.store import FeatureStore, PartialEntry


SETTINGS = dict(model="VGG16", weights=None, layers=["block1_pool", "block3_pool"], input_size=32, batch_size=4)
CHUNK_SIZE = 8
N_SAMPLES = 24

_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import numpy as np
    from layerprobe.features import store as store_module
    from layerprobe.features.extract import FeatureExtractor
    from layerprobe.features.inputs import from_arrays, from_directory
    from layerprobe.features.store import FeatureStore

    STORE = {store!r}
    LOG = []

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def on_batch(action, number=None):
        # Call `action()` as the forward pass of batch `number` (1-based; None: every batch) is dispatched.
        from layerprobe.features.device import DeviceForward
        dispatch, calls = DeviceForward.dispatch, []
        def hooked(self, batch):
            calls.append(1)
            if number is None or len(calls) == number:
                action()
            return dispatch(self, batch)
        DeviceForward.dispatch = hooked

    def wait_for_chunk_files(n, timeout=60):
        # Wait until the writer thread has committed `n` chunk files (over all layers).
        import glob, time
        deadline = time.time() + timeout
        while len(glob.glob(os.path.join(STORE, ".partial", "*", "chunk_*.h5"))) < n and time.time() < deadline:
            time.sleep(0.01)

    def log(message):
        LOG.append(message)

    # ---- fault injection
    {fault}
    # ----

    if {images!r}:
        dataset = from_directory({images!r})
    else:
        data = np.load({data!r})
        dataset = from_arrays(data["X"], data["y"])
    extractor = FeatureExtractor(**{settings!r})
    report = extractor.extract(dataset, FeatureStore(STORE), chunk_size={chunk_size}, progress=False, log=log)
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
        # The same pixels as PNG files, sorted like the array rows: images/<class>/<row>.png.
        self.images = root / "images"
        for row, (pixels, label) in enumerate(zip(self.X, self.y)):
            (self.images / f"class{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(self.images / f"class{label}" / f"{row:02d}.png")
        self.extractor = FeatureExtractor(**SETTINGS)
        self.layers = self.extractor.layer_names
        self.keys = self.extractor.keys(self.dataset())
        self.file_keys = self.extractor.keys(self.files_dataset())
        store = FeatureStore(root / "reference")
        self.extract(store)
        self.reference = {name: store.load(key) for name, key in self.keys.items()}
        self._file_reference = None

    def dataset(self):
        return from_arrays(self.X, self.y)

    def files_dataset(self):
        """The workload's pixels as PNG files in class folders (a `from_directory` dataset)."""
        return from_directory(self.images)

    @property
    def file_reference(self):
        """Layer name -> FeatureSet of an uninterrupted extraction of `files_dataset` (made once)."""
        if self._file_reference is None:
            store = FeatureStore(self.root / "file-reference")
            self.extract(store, files=True)
            self._file_reference = {name: store.load(key) for name, key in self.file_keys.items()}
        return self._file_reference

    def extract(self, store: FeatureStore, *, files: bool = False, **kwargs):
        """The workload, in this process (`files`: from the PNG files)."""
        kwargs.setdefault("chunk_size", CHUNK_SIZE)
        dataset = self.files_dataset() if files else self.dataset()
        return self.extractor.extract(dataset, store, progress=False, **kwargs)

    def run_script(
        self, store_dir: Path, fault: str = "", *, settings=None, background=False, files=False, env=None
    ):
        """The workload in a fresh process after running `fault` (Python code).

        The prelude may call `die()` (SIGKILL itself) and use `STORE` and `log`.
        `files`: extract the PNG files rather than the array; `env`: extra environment variables.
        Returns the CompletedProcess, or the Popen when `background`.
        """
        script = _SCRIPT.format(
            store=str(store_dir),
            data=str(self.data_path),
            images=str(self.images) if files else "",
            settings=settings or SETTINGS,
            chunk_size=CHUNK_SIZE,
            fault=textwrap.dedent(fault).strip(),
        )
        return run_python(script, background=background, env=env)

    def interrupt(self, store: FeatureStore, monkeypatch, *, files: bool = False, at: str = "write") -> None:
        """The workload, stopped like Ctrl-C.

        `at="write"`: as chunk 2 is written, so chunks 0 and 1 of both layers are
        committed. `at="dispatch"`: as batch 5 (the first of chunk 2) is dispatched;
        chunk 0 is committed (the writer finishes what it was given), chunk 1's
        batches were still on the device and are lost with it: a crash loses at most
        the chunks in flight.
        """
        calls = []
        if at == "write":
            original, target = PartialEntry.write_chunk, (PartialEntry, "write_chunk")

            def crash_at(entry, index, *args):
                if index == 2:
                    raise Crash()
                return original(entry, index, *args)
        else:
            original, target = DeviceForward.dispatch, (DeviceForward, "dispatch")

            def crash_at(forward, batch):
                calls.append(1)
                if len(calls) == 5:
                    raise Crash()
                return original(forward, batch)

        with monkeypatch.context() as patch:
            patch.setattr(*target, crash_at)
            with pytest.raises(Crash):
                self.extract(store, files=files)

    def assert_matches_reference(self, store: FeatureStore, names=None, *, files: bool = False) -> None:
        """Bit-identical features, same rows and the same recorded checksum as the reference run."""
        for name in self.layers if names is None else names:
            loaded = store.load((self.file_keys if files else self.keys)[name])
            reference = (self.file_reference if files else self.reference)[name]
            assert np.array_equal(loaded.X, reference.X), name
            np.testing.assert_array_equal(loaded.sample_ids, reference.sample_ids)
            assert loaded.metadata["features_sha256"] == reference.metadata["features_sha256"]


class Crash(BaseException):
    """Stands for Ctrl-C or a signal turned into an exception."""


def run_python(code: str, *, background: bool = False, env: Mapping[str, str] | None = None):
    """`code` in a fresh process of this interpreter, which imports the installed layerprobe.

    Returns the CompletedProcess (text output), or the Popen when `background`.
    """
    command = [sys.executable, "-c", code]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


def write_images(root: Path, counts: Mapping[str, Mapping[str, int]], *, seed: int = 0) -> Path:
    """`counts[split][class]` PNGs in `root/split/class/` (in `root/class/` for split "").

    Each is 32x32 noise whose dominant channel follows the class's position.
    """
    rng = np.random.default_rng(seed)
    for split, classes in counts.items():
        for position, (name, count) in enumerate(classes.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 100, (32, 32, 3))
                pixels[..., position % 3] += 150
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def _toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + " }"
    return json.dumps(value)  # strings, numbers, booleans and lists read the same in TOML


def write_experiment(path: Path, **sections) -> Path:
    """A `layerprobe run` config at `path`: VGG16 (random weights) at 32x32, layers block1_pool
    and block2_pool, logreg and sgd. Relative paths are under `path`'s folder (`images`, `store`,
    `out`); each keyword updates the keys of one section (`backbones`: of its one table).
    """
    raw = {
        "data": {"path": "images"},
        "features": {"store": "store", "input_size": 32, "batch_size": 8},
        "backbones": {"model": "VGG16", "weights": "none", "layers": ["block1_pool", "block2_pool"]},
        "classifiers": {
            "names": ["logreg", "sgd"],
            "cv": 2,
            "grids": {"logreg": {"C": [0.1]}, "sgd": {"alpha": [1e-3]}},
        },
        "output": {"dir": "out"},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    lines = []
    for name, table in raw.items():
        lines.append(f"[[{name}]]" if name == "backbones" else f"[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


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


@pytest.fixture(scope="session")
def helpers():
    """Small functions shared by the test modules (conftest is not importable as a module)."""

    class _Helpers:
        stray_files = staticmethod(stray_files)
        decoder_threads_stop = staticmethod(decoder_threads_stop)
        report_of = staticmethod(lambda stdout: json.loads(stdout.strip().splitlines()[-1]))
        run_python = staticmethod(run_python)
        write_images = staticmethod(write_images)
        write_experiment = staticmethod(write_experiment)

    return _Helpers
