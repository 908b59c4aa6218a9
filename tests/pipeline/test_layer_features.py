"""LayerFeatures: a scikit-learn transformer over the feature store."""

import layerprobe
import numpy as np
import pytest
from layerprobe import FeatureExtractor, FeatureStore, LayerFeatures, from_arrays
from layerprobe.features.device import DeviceForward
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

SETTINGS = dict(weights=None, input_size=32, batch_size=8, pooling="avg")


def _dataset(n=24, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.integers(0, 120, size=(n, 32, 32, 3), dtype=np.uint8)
    X[y == 1] += 100  # brighter class: separable
    return from_arrays(X, y)


@pytest.fixture
def forward_images(monkeypatch):
    """Counts the images (padding rows included) dispatched to any extractor's device."""
    counted = []
    original = DeviceForward.dispatch

    def counting(self, batch):
        counted.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(DeviceForward, "dispatch", counting)
    return counted


def test_get_params_and_clone_keep_parameters_unmodified(tmp_path):
    transformer = LayerFeatures("VGG16", layer="block2_pool", store=tmp_path, cache_layers=["stages"], **SETTINGS)
    params = transformer.get_params()
    assert params["layer"] == "block2_pool" and params["cache_layers"] == ["stages"] and params["weights"] is None
    cloned = clone(transformer)
    assert cloned.get_params()["store"] == tmp_path and cloned is not transformer
    with pytest.raises(Exception, match="fit"):
        cloned.transform(["a.jpg"])


def test_transform_equals_the_stored_features_of_the_layer(tmp_path):
    data = _dataset()
    transformer = LayerFeatures("VGG16", layer="block3_pool", store=tmp_path / "store", dataset=data, **SETTINGS)
    rows = [5, 0, 17]
    values = transformer.fit(data.sample_ids).transform(np.asarray(data.sample_ids)[rows])
    extractor = FeatureExtractor("VGG16", layers=["block3_pool"], **SETTINGS)
    store = FeatureStore(tmp_path / "store")
    stored = store.load(extractor.extract(data, store, progress=False).keys["block3_pool"])
    np.testing.assert_array_equal(values, stored.X[rows])
    assert transformer.n_features_out_ == 256 and transformer.layer_name_ == "block3_pool"
    assert list(transformer.get_feature_names_out()[:2]) == ["block3_pool_0", "block3_pool_1"]


def test_grid_search_over_layers_costs_one_forward_pass_per_image(tmp_path, forward_images):
    data = _dataset()
    features = LayerFeatures(
        "VGG16", layer="block1_pool", store=tmp_path / "store", dataset=data,
        cache_layers=["block1_pool", "block2_pool"], **SETTINGS,
    )
    pipeline = Pipeline([("features", features), ("clf", LogisticRegression(max_iter=500))])
    search = GridSearchCV(pipeline, param_grid={"features__layer": ["block1_pool", "block2_pool"]}, cv=2)
    search.fit(np.asarray(data.sample_ids), data.labels)
    # 24 images in batches of 8: one forward pass over the dataset, for both layers and all folds.
    assert sum(forward_images) == 24
    assert search.best_params_["features__layer"] in ("block1_pool", "block2_pool")
    assert search.score(np.asarray(data.sample_ids), data.labels) > 0.9


def test_unknown_sample_ids_are_a_clear_error(tmp_path):
    data = _dataset(n=8)
    transformer = LayerFeatures("VGG16", layer="block1_pool", store=tmp_path, dataset=data, **SETTINGS)
    transformer.fit(data.sample_ids)
    with pytest.raises(layerprobe.InputError, match="have no features"):
        transformer.transform(["array:99"])


def test_image_paths_without_a_dataset(tmp_path):
    paths = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(path)
        paths.append(str(path))
    transformer = LayerFeatures("VGG16", layer="block1_pool", store=tmp_path / "store", **SETTINGS)
    values = transformer.fit_transform(paths)
    assert values.shape == (4, 64)
    assert not np.allclose(values[0], values[3])


def test_folder_dataset_rows_are_found_by_their_file_paths(tmp_path):
    for label, value in (("dark", 20), ("bright", 220)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((36, 36, 3), value - 5 * i, np.uint8)).save(tmp_path / "data" / label / f"{i}.png")
    data = layerprobe.from_directory(tmp_path / "data")
    transformer = LayerFeatures("VGG16", layer="block1_pool", store=tmp_path / "store", dataset=data, **SETTINGS)
    everything = transformer.fit_transform(list(data.sample_ids))
    subset = transformer.transform([data.sample_ids[4], data.sample_ids[1]])
    np.testing.assert_array_equal(subset, everything[[4, 1]])
