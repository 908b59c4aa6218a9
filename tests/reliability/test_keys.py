"""Every extraction setting really reaches the key it should change.

tests/features/test_extract.py checks that changing a key field changes the
digest; here each *setting* of `FeatureExtractor` is changed and extracted,
and the test checks that the right key field moved, that the store computed
new features (a cache miss, not a silent reuse), and for `mixed_precision`,
which no other test extracts with, that the numbers and the metadata differ.
"""

import os
import shutil

import numpy as np
import pytest

from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import from_arrays, from_directory
from layerprobe.features.store import FeatureStore

BASE = dict(weights=None, layers=["block1_pool"], input_size=32, batch_size=4, pooling="avg", dtype="float32")

# setting changed -> (constructor change, key field that must change)
SETTINGS = {
    "seed": ({"seed": 1}, "weights"),
    "layers": ({"layers": ["block2_pool"]}, "layer"),
    "pooling": ({"pooling": "max"}, "pooling"),
    "input_size": ({"input_size": 40}, "input_size"),
    "dtype": ({"dtype": "float16"}, "dtype"),
    "mixed_precision": ({"mixed_precision": True}, "compute_dtype"),
    "max_pixels": ({"max_pixels": 10**6}, "dataset"),
    "dataset_digest": ({"dataset_digest": "content"}, "dataset"),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("keys")
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    for i, pixels in enumerate(X):
        (root / "images" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "images" / f"c{i % 2}" / f"{i}.png")
    store = FeatureStore(root / "store")
    base = FeatureExtractor("VGG16", **BASE)
    first = base.extract(from_directory(root / "images"), store, progress=False)
    return root, store, first


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_each_setting_changes_its_key_field_and_misses_the_cache(data, setting, monkeypatch):
    root, store, first = data
    monkeypatch.setenv("LAYERPROBE_CACHE_DIR", str(root / "digest-cache"))
    change, field = SETTINGS[setting]
    extractor = FeatureExtractor("VGG16", **{**BASE, **change})
    report = extractor.extract(from_directory(root / "images"), store, progress=False)
    assert report.computed and not report.cached, setting
    (name, key), = report.keys.items()
    (_, base_key), = first.keys.items()
    changed = {f for f, value in key.to_dict().items() if value != base_key.to_dict()[f]}
    assert changed == {field}, (setting, changed)


def test_mixed_precision_changes_the_key_the_numbers_and_the_metadata(data):
    root, store, first = data
    extractor = FeatureExtractor("VGG16", **{**BASE, "mixed_precision": True})
    report = extractor.extract(from_directory(root / "images"), store, progress=False)
    mixed, full = store.load(report.keys["block1_pool"]), store.load(first.keys["block1_pool"])
    assert mixed.key.compute_dtype == "mixed_float16" and full.key.compute_dtype == "float32"
    assert mixed.metadata["compute_dtype"] == "mixed_float16" and full.metadata["compute_dtype"] == "float32"
    assert mixed.X.dtype == np.float32  # stored as asked; computed in float16
    assert not np.array_equal(mixed.X, full.X)
    np.testing.assert_allclose(mixed.X, full.X, rtol=0.05, atol=0.05)


def test_labels_reach_the_key(data):
    root, store, first = data
    X = np.zeros((4, 32, 32, 3), np.uint8)
    extractor = FeatureExtractor("VGG16", **BASE)
    keys = [extractor.keys(from_arrays(X, labels))["block1_pool"] for labels in ([0, 1, 0, 1], [1, 0, 1, 0])]
    assert keys[0].dataset != keys[1].dataset


# ---------------------------------------------------------------- the plan shortcut of `layerprobe run` (issue 24, item 2)


@pytest.fixture(scope="module")
def two_weights(tmp_path_factory):
    """Two VGG16 weights files of the same size (random weights of seeds 1 and 2)."""
    from layerprobe.features.backbone import load_backbone

    folder = tmp_path_factory.mktemp("weights")
    for seed in (1, 2):
        load_backbone("VGG16", weights=None, input_size=32, seed=seed).model.save_weights(folder / f"{seed}.weights.h5")
    return folder / "1.weights.h5", folder / "2.weights.h5"


def _copies(two_weights, folder):
    """Fresh copies of both weights files in `folder` (each test replaces one)."""
    return [shutil.copy2(source, folder / name) for source, name in zip(two_weights, ["w.weights.h5", "other.weights.h5"])]


def _swap_keeping_size_and_mtime(path, replacement, how):
    """Put `replacement`'s bytes at `path` (same size), then set the old atime and mtime back."""
    before = os.stat(path)
    assert os.path.getsize(replacement) == before.st_size
    if how == "replaced":  # a new file renamed over the old one (a new inode)
        os.replace(replacement, path)
    else:  # rewritten in place (the same inode; only its ctime tells)
        shutil.copyfile(replacement, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns and os.path.getsize(path) == before.st_size


@pytest.mark.parametrize("how", ["replaced", "rewritten-in-place"])
def test_a_weights_file_swapped_with_its_size_and_mtime_kept_is_a_plan_miss(two_weights, tmp_path, how):
    from layerprobe.features.plans import plan_signature

    weights, other = _copies(two_weights, tmp_path)
    settings = {"model": "VGG16", "weights": str(weights), "layers": ["block1_pool"], "input_size": 32}
    before = plan_signature(settings)
    assert plan_signature(settings) == before  # nothing changed: the shortcut holds
    _swap_keeping_size_and_mtime(weights, other, how)
    assert plan_signature(settings) != before  # before the fix: path, size and mtime only, so equal


@pytest.mark.slow  # two runs; test_a_weights_file_swapped_... checks the signature itself
def test_layerprobe_run_with_a_swapped_weights_file_extracts_and_fits_again(helpers, two_weights, tmp_path):
    from layerprobe.pipeline.config import load_config
    from layerprobe.pipeline.run import run_experiment

    helpers.write_images(tmp_path / "images", {"train": {"red": 4, "green": 4}, "test": {"red": 2, "green": 2}})
    weights, other = _copies(two_weights, tmp_path)
    config = load_config(helpers.write_experiment(
        tmp_path / "run.toml", backbones={"model": "VGG16", "weights": "w.weights.h5", "layers": ["block1_pool"]},
        classifiers={"names": ["logreg"]},
    ))
    first = run_experiment(config, log=lambda line: None, progress=False)
    assert first.n_forward == 12
    _swap_keeping_size_and_mtime(weights, other, "replaced")
    second = run_experiment(config, log=lambda line: None, progress=False)
    # Before the fix: the plan of the old file was trusted, so its features and rows were reused.
    assert second.n_forward == 12 and second.n_fitted == 1 and second.n_reused == 0
    assert second.results["store_entry"][0] != first.results["store_entry"][0]
