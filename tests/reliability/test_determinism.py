"""The same settings and seed give the same entries, bit for bit, in fresh stores."""

import numpy as np

from features.extract import FeatureExtractor
from features.store import FeatureStore

SETTINGS = dict(model="VGG16", weights=None, layers=["block1_pool", "block3_pool"], input_size=32, batch_size=4, seed=7)


def _run(harness, store_dir, **options):
    store = FeatureStore(store_dir)
    extractor = FeatureExtractor(**SETTINGS)  # a fresh model, initialised from the seed
    report = extractor.extract(harness.dataset(), store, progress=False, **options)
    return store, report


def test_two_fresh_runs_give_identical_entries(harness, tmp_path):
    first_store, first = _run(harness, tmp_path / "one", chunk_size=8, n_workers=1)
    second_store, second = _run(harness, tmp_path / "two", chunk_size=12, n_workers=2)
    names = [sorted(p.name for p in store.root.glob("*.h5")) for store in (first_store, second_store)]
    assert names[0] == names[1] and len(names[0]) == 2
    assert first.keys == second.keys
    for name, key in first.keys.items():
        a, b = first_store.load(key), second_store.load(key)
        assert np.array_equal(a.X, b.X), name
        assert a.metadata["features_sha256"] == b.metadata["features_sha256"]
        np.testing.assert_array_equal(a.sample_ids, b.sample_ids)
    # A different seed is a different network: other keys, other numbers.
    other = FeatureExtractor(**{**SETTINGS, "seed": 8}).keys(harness.dataset())
    assert set(other.values()).isdisjoint(first.keys.values())
