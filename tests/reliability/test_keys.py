"""Every extraction setting really reaches the key it should change.

tests/features/test_extract.py checks that changing a key field changes the
digest; here each *setting* of `FeatureExtractor` is changed and extracted,
and the test checks that the right key field moved, that the store computed
new features (a cache miss, not a silent reuse), and for `mixed_precision`,
which no other test extracts with, that the numbers and the metadata differ.
"""

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
