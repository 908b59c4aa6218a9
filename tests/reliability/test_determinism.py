"""The same settings and seeds give the same entries, bit for bit, in fresh stores, and the same results."""

import dataclasses

import numpy as np
import pandas as pd

from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import open_dataset
from layerprobe.features.store import FeatureStore
from layerprobe.pipeline.config import load_config
from layerprobe.pipeline.run import run_experiment, split_dataset

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


def test_same_config_and_seeds_give_identical_result_tables(helpers, tmp_path):
    images = helpers.write_images(tmp_path / "images", {"": {"red": 6, "green": 6, "blue": 6}})
    sections = dict(
        data={"path": str(images), "test_size": 0.3, "seed": 3},  # a single split: a seeded split is made
        classifiers={
            "names": ["linear_svm", "sgd"],
            "grids": {"linear_svm": {"C": [0.1, 1.0]}, "sgd": {"alpha": [1e-4, 1e-3]}},
            "pca_components": 4,
            "seed": 5,
        },
    )
    results = []
    for name in ("one", "two"):  # each with a fresh store and output folder
        config = load_config(helpers.write_experiment(tmp_path / name / "run.toml", **sections))
        results.append(run_experiment(config, log=lambda line: None, progress=False))
    first, second = results
    # linear_svm and sgd on 2 layers, and the ridge curve the advice reads (issue 31)
    assert (first.n_fitted, second.n_fitted, second.n_reused) == (6, 6, 0)
    times_and_places = ["fit_seconds", "model_path"]
    pd.testing.assert_frame_equal(
        first.results.drop(columns=times_and_places), second.results.drop(columns=times_and_places), check_exact=True
    )
    for a, b in zip(first.results["model_path"], second.results["model_path"]):
        predictions = [pd.read_csv(path.replace(".skops", ".predictions.csv")) for path in (a, b)]
        pd.testing.assert_frame_equal(*predictions, check_exact=True)
    # The split seed is used: another seed puts other images in the test split.
    dataset, data = open_dataset(images), config.data
    made = [split_dataset(dataset, dataclasses.replace(data, seed=seed))[0].splits for seed in (3, 4)]
    assert made[0] != made[1]
