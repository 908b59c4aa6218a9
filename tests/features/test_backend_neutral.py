"""Extraction on every Keras backend: values, one forward pass, resume, mixed precision.

The tests marked `backend` use nothing backend-specific, so they run under
`KERAS_BACKEND=tensorflow` (the default of the test suite), `jax` and `torch`:

    KERAS_BACKEND=jax python -m pytest -m backend tests/features/test_backend_neutral.py

`test_backend_tests_pass_under` re-runs them that way in a child process for
each other backend that is installed, so the README's `python -m pytest` covers
JAX too (`pip install -e ".[test]"` installs it) and PyTorch where it is installed.
On a GPU, float32 convolutions may run in TF32, so values are compared with a
looser tolerance there.
"""

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import ImageDataset, from_arrays
from layerprobe.features.registry import BACKBONES, BackboneSpec, register_backbone
from layerprobe.features.store import FeatureStore, IncompleteEntryError

REPO = Path(__file__).resolve().parents[2]
THIS_FILE = Path(__file__).resolve()
RERUN_ENV = "LAYERPROBE_BACKEND_RERUN"  # set in the child run: it must not start children itself
TINY = "BackendNeutralTinyNet"


def _tiny_net(include_top=False, weights=None, input_shape=(32, 32, 3), **kwargs):
    """Three conv/BN/ReLU/max-pool stages: a backbone that builds in milliseconds."""
    inputs = keras.Input(input_shape, name="pixels")
    x = inputs
    for stage, filters in enumerate((8, 16, 32), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"stage{stage}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"stage{stage}_bn")(x)
        x = keras.layers.Activation("relu", name=f"stage{stage}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    return keras.Model(inputs, x, name="tiny_net")


TINY_SPEC = BackboneSpec(
    name=TINY,
    constructor=_tiny_net,
    preprocess_module="keras.applications.vgg16",
    default_input_size=32,
    min_input_size=16,
    stage_pattern=r"stage\d+_pool$",
)


@pytest.fixture
def tiny_net():
    register_backbone(TINY_SPEC, overwrite=True)
    yield TINY
    BACKBONES.pop(TINY, None)


def _images(n=24, size=32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return X, np.arange(n) % 3


def _on_accelerator() -> bool:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    return False


def _assert_close(actual, expected, *, cpu=1e-4, accelerator=1e-2):
    """Equal up to `cpu` (or `accelerator`, for TF32 convolutions) times the largest |value|."""
    scale = max(1.0, float(np.max(np.abs(expected))))
    tolerance = accelerator if _on_accelerator() else cpu
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance * scale)


def _direct_features(extractor, layer_name, X):
    """What a user would compute by hand: truncate, preprocess a copy, predict all at once, pool.

    `predict_on_batch` compiles the truncated model once; an eager call would compile
    every operation separately under JAX, which takes minutes on a busy CPU.
    """
    backbone = extractor.backbone
    truncated = keras.Model(backbone.model.input, backbone.model.get_layer(layer_name).output)
    x = backbone.spec.preprocess_input(X.astype("float32").copy())
    out = np.asarray(keras.ops.convert_to_numpy(truncated.predict_on_batch(x)), dtype="float32")
    return out.mean(axis=(1, 2))


@pytest.mark.backend
def test_keras_runs_on_the_requested_backend():
    assert keras.backend.backend() == os.environ.get("KERAS_BACKEND", "tensorflow")


@pytest.mark.backend
@pytest.mark.parametrize(
    "model, model_kwargs, layers",
    [
        (TINY, None, "stages"),
        ("VGG16", None, ["block2_pool", "block5_pool"]),
    ],
)
def test_stored_features_equal_a_direct_keras_call(tmp_path, tiny_net, model, model_kwargs, layers):
    X, y = _images()
    extractor = FeatureExtractor(
        model, weights=None, layers=layers, input_size=32, batch_size=8, model_kwargs=model_kwargs
    )
    store = FeatureStore(tmp_path / "store")
    report = extractor.extract(from_arrays(X, y), store, progress=False)
    assert sorted(report.computed) == sorted(extractor.layer_names) and report.n_forward == len(X)
    for name in extractor.layer_names:
        stored = store.load(report.keys[name])
        assert stored.X.dtype == np.float32 and np.isfinite(stored.X).all()
        _assert_close(stored.X, _direct_features(extractor, name, X))
        np.testing.assert_array_equal(stored.y, y)


@pytest.mark.backend
def test_all_layers_come_from_one_forward_pass_per_batch(tmp_path, tiny_net, forward_passes):
    X, y = _images(n=20)
    extractor = FeatureExtractor(TINY, weights=None, layers="stages", input_size=32, batch_size=8)
    assert extractor.layer_names == ["stage1_pool", "stage2_pool", "stage3_pool"]
    report = extractor.extract(from_arrays(X, y), FeatureStore(tmp_path), progress=False)
    assert forward_passes == [3, 3, 3]  # ceil(20 / 8) batches, each returning all three stage pools
    assert report.n_forward == 20


class _CrashingDataset(ImageDataset):
    """The same samples, but decoding sample 16 or later raises: a run that stops part-way."""

    crash_from = 16

    def load(self, index, size, **kwargs):
        if index >= self.crash_from:
            raise RuntimeError(f"simulated crash while decoding sample {index}")
        return super().load(index, size, **kwargs)


@pytest.mark.backend
def test_an_interrupted_extraction_resumes_to_identical_features(tmp_path, tiny_net):
    X, y = _images(n=40, size=40)  # resized to 32 per sample, so every sample goes through `load`
    dataset = from_arrays(X, y)
    crashing = _CrashingDataset(**{f.name: getattr(dataset, f.name) for f in dataclasses.fields(dataset)})
    settings = dict(weights=None, layers=["stage1_pool", "stage3_pool"], input_size=32, batch_size=4)
    store = FeatureStore(tmp_path / "interrupted")
    first = FeatureExtractor(TINY, **settings)
    assert first.keys(crashing) == first.keys(dataset)
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.extract(crashing, store, chunk_size=8, progress=False)
    for key in first.keys(dataset).values():
        assert not store.has(key)
        with pytest.raises(IncompleteEntryError):
            store.load(key)

    # A new extractor, as after a restart: the same seed gives the same weights.
    extractor = FeatureExtractor(TINY, **settings)
    resumed = extractor.extract(dataset, store, chunk_size=8, progress=False)
    # Chunks of 8: those before sample 16 were committed and are not redone.
    assert 40 - 16 <= resumed.n_forward < 40
    reference_store = FeatureStore(tmp_path / "reference")
    reference = extractor.extract(dataset, reference_store, chunk_size=8, progress=False)
    assert reference.n_forward == 40
    for name in extractor.layer_names:
        np.testing.assert_array_equal(store.load(resumed.keys[name]).X, reference_store.load(reference.keys[name]).X)


@pytest.mark.backend
def test_mixed_precision_features_are_close_to_float32(tmp_path, tiny_net):
    X, y = _images(n=16)
    settings = dict(weights=None, layers="stages", input_size=32, batch_size=8)
    store = FeatureStore(tmp_path)
    full = FeatureExtractor(TINY, **settings).extract(from_arrays(X, y), store, progress=False)
    mixed_extractor = FeatureExtractor(TINY, mixed_precision=True, **settings)
    mixed = mixed_extractor.extract(from_arrays(X, y), store, progress=False)
    assert mixed_extractor.compute_dtype == "mixed_float16"
    assert keras.config.dtype_policy().name == "float32"  # restored after the extraction
    assert set(mixed.keys.values()).isdisjoint(full.keys.values())  # the compute dtype is in the key
    for name in mixed.keys:
        expected = store.load(full.keys[name]).X
        stored = store.load(mixed.keys[name]).X
        assert stored.dtype == np.float32
        _assert_close(stored, expected, cpu=2e-2, accelerator=2e-2)


@pytest.mark.parametrize("backend, module", [("jax", "jax"), ("torch", "torch")])
def test_backend_tests_pass_under(backend, module):
    """The `backend` tests above, re-run in a child process with KERAS_BACKEND=<backend>."""
    if os.environ.get(RERUN_ENV):
        pytest.skip("already inside a re-run of the backend tests")
    if keras.backend.backend() == backend:
        pytest.skip(f"this run is already on {backend}: the backend tests ran above")
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[{backend}]')")
    env = {**os.environ, "KERAS_BACKEND": backend, RERUN_ENV: "1"}
    command = [sys.executable, "-m", "pytest", "-m", "backend", "-p", "no:cacheprovider", "-q",
               str(THIS_FILE.relative_to(REPO))]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"KERAS_BACKEND={backend} {' '.join(command[1:])} failed:\n{output[-6000:]}"
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= 5, output[-3000:]
    assert not re.search(r"\d+ (failed|error|skipped)", done.stdout), output[-3000:]
