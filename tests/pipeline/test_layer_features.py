"""LayerFeatures: a scikit-learn transformer over the feature store."""

import os

import layerprobe
import numpy as np
import pytest
from layerprobe import FeatureExtractor, FeatureStore, LayerFeatures, from_arrays
from layerprobe.features.device import DeviceForward
from layerprobe.features.inputs import ImageDataset
from PIL import Image
from sklearn.base import clone
from sklearn.utils import estimator_checks
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

SETTINGS = dict(weights=None, input_size=32, batch_size=8, pooling="avg")


def _dataset(n=24, seed=0, class_names=None):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.integers(0, 120, size=(n, 32, 32, 3), dtype=np.uint8)
    X[y == 1] += 100  # brighter class: separable
    return from_arrays(X, y, class_names=class_names)


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


def test_class_names_go_in_and_come_out_and_extraction_shows_progress_by_default(tmp_path, capsys):
    data = _dataset(class_names=["ants", "bees"])
    assert list(data.y[:2]) == ["ants", "bees"]  # the names of data.labels
    features = LayerFeatures("VGG16", layer="block1_pool", store=tmp_path / "store", dataset=data,
                             **{**SETTINGS, "batch_size": 24})
    pipeline = Pipeline([("features", features), ("clf", LogisticRegression(max_iter=500))]).fit(data.sample_ids, data.y)
    assert "extracting" in capsys.readouterr().err  # as FeatureExtractor and the command line show it
    assert list(pipeline.classes_) == ["ants", "bees"]
    assert list(pipeline.predict(data.sample_ids[:2])) == ["ants", "bees"]


def test_unknown_sample_ids_are_a_clear_error(tmp_path):
    data = _dataset(n=8)
    transformer = LayerFeatures("VGG16", layer="block1_pool", store=tmp_path, dataset=data, **SETTINGS)
    transformer.fit(data.sample_ids)
    with pytest.raises(layerprobe.InputError, match=r"1 sample id\(s\) are neither ids of `dataset` nor image files: "
                                                    r"'array:99'"):
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


def test_a_relative_path_to_a_dataset_file_is_that_row(fitted_on_folder, forward_images, monkeypatch):
    tmp, data, pipeline, _ = fitted_on_folder
    monkeypatch.chdir(tmp)
    features = pipeline.named_steps["features"]
    relative = os.path.relpath(data.sample_ids[2])
    np.testing.assert_array_equal(features.transform([relative]), features.transform([data.sample_ids[2]]))
    assert forward_images == []  # not extracted again as a new image


def _folder(root, counts, seed=0):
    """PNG class folders under `root` (the class at position k is bright in channel k)."""
    rng = np.random.default_rng(seed)
    for position, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 90, (32, 32, 3))
            pixels[..., position] += 140
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def fitted_on_folder(tmp_path_factory):
    """A LayerFeatures + logistic regression fitted on a folder dataset, and new images outside it."""
    tmp = tmp_path_factory.mktemp("new_images")
    data = layerprobe.from_directory(_folder(tmp / "data", {"red": 4, "green": 4}))
    new = _folder(tmp / "new", {"red": 2, "green": 2}, seed=1)
    features = LayerFeatures("VGG16", layer="block1_pool", store=tmp / "store", dataset=data, **SETTINGS)
    pipeline = Pipeline([("features", features), ("clf", LogisticRegression(max_iter=500))])
    pipeline.fit(list(data.sample_ids), data.labels)
    return tmp, data, pipeline, sorted(str(path) for path in new.glob("*/*.png"))


def test_images_outside_the_fitted_dataset_are_extracted_on_the_fly(fitted_on_folder, forward_images):
    tmp, data, pipeline, new_paths = fitted_on_folder
    # before: InputError "4 sample(s) have no features ... (not in the dataset)"
    predicted = pipeline.predict(new_paths)
    assert [data.class_names[label] for label in predicted] == ["green", "green", "red", "red"]
    assert sum(forward_images) == 8  # the 4 new images, in one padded batch of 8; the dataset's are cached
    new_data = ImageDataset(new_paths, np.zeros(4, np.int64), ("any",), ("all",) * 4)  # the same files, directly
    extractor = FeatureExtractor("VGG16", layers=["block1_pool"], **SETTINGS)
    store = FeatureStore(tmp / "direct")
    direct = store.load(extractor.extract(new_data, store, progress=False).keys["block1_pool"])
    values = pipeline.named_steps["features"].transform(list(direct.sample_ids))
    np.testing.assert_array_equal(values, direct.X)
    assert sum(forward_images) == 16  # the direct extraction; the transform above was a cache hit


def test_dataset_ids_and_new_images_mix_in_order(fitted_on_folder):
    _, data, pipeline, new_paths = fitted_on_folder
    features = pipeline.named_steps["features"]
    both = features.transform([new_paths[0], data.sample_ids[3], new_paths[1]])
    np.testing.assert_array_equal(both[1], features.transform([data.sample_ids[3]])[0])
    np.testing.assert_array_equal(both[[0, 2]], features.transform(new_paths[:2]))


@pytest.mark.parametrize("X", [np.zeros((3, 4)), np.zeros((2, 32, 32, 3), np.uint8), [1, 2], "one/path.png"])
def test_numeric_or_non_id_input_is_a_one_line_error(fitted_on_folder, X):
    _, _, pipeline, _ = fitted_on_folder
    with pytest.raises(layerprobe.InputError) as error:  # before: ValueError: cannot reshape array of size 0
        pipeline.named_steps["features"].transform(X)
    message = str(error.value)
    assert message.startswith("LayerFeatures takes sample ids, one per row") and "Received: X of type" in message
    assert "\n" not in message


def test_missing_files_are_named(fitted_on_folder, tmp_path):
    _, _, pipeline, new_paths = fitted_on_folder
    with pytest.raises(layerprobe.InputError, match=r"2 sample id\(s\) are neither ids of `dataset` nor image files: "
                                                    r"'nowhere/a.png', 'nowhere/b.png'"):
        pipeline.predict([new_paths[0], "nowhere/a.png", "nowhere/b.png"])


def test_an_unreadable_image_is_named_or_a_nan_row(fitted_on_folder, tmp_path):
    _, _, pipeline, new_paths = fitted_on_folder
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    features = pipeline.named_steps["features"]
    with pytest.raises(layerprobe.InputError, match=rf"1 image\(s\) could not be read: {broken} \(.+\)\. .*unreadable='nan'"):
        features.transform([new_paths[0], str(broken)])
    values = clone(features).set_params(unreadable="nan").fit_transform([new_paths[0], str(broken)])
    assert np.isfinite(values[0]).all() and np.isnan(values[1]).all()
    with pytest.raises(ValueError, match="The 'unreadable' parameter of LayerFeatures must be one of"):
        clone(features).set_params(unreadable="skip").fit([new_paths[0]])


def test_n_features_in_and_a_short_repr(fitted_on_folder):
    _, data, pipeline, _ = fitted_on_folder
    features = pipeline.named_steps["features"]
    assert features.n_features_in_ == 1 and pipeline.n_features_in_ == 1
    text = repr(features)
    assert "ImageDataset(8 samples, 2 classes ['green', 'red'], splits {'all': 8}, root=" in text
    assert data.sample_ids[0] not in text and len(text) < 400


@pytest.mark.parametrize("check", [
    "check_no_attributes_set_in_init", "check_parameters_default_constructible", "check_get_params_invariance",
    "check_set_params", "check_estimator_cloneable", "check_estimator_repr", "check_estimator_tags_renamed",
    "check_valid_tag_types", "check_do_not_raise_errors_in_init_or_set_params",
])
def test_the_estimator_checks_that_need_no_numeric_data(check, tmp_path):
    getattr(estimator_checks, check)("LayerFeatures", LayerFeatures("VGG16", store=tmp_path, **SETTINGS))
