"""`layerprobe export`: a row's classifier as one Keras model, loaded without layerprobe, predicting as the pipeline."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC

import layerprobe.pipeline.run.multi_layer as multi_layer_module
from layerprobe.core.errors import InputError
from layerprobe.features.inputs import from_directory
from layerprobe.features.model_files import read_model_metadata
from layerprobe.features.store import FeatureStore
from layerprobe.pipeline.classifiers import flat_features
from layerprobe.pipeline.cli import main
from layerprobe.pipeline.config import config_from_dict
from layerprobe.pipeline.export import export_model, linear_head, required_packages, token_pooling
from layerprobe.pipeline.persistence import load_classifier
from layerprobe.pipeline.predict import class_scores, predict_images
from layerprobe.pipeline.probes.ridge import RidgeProbeCV
from layerprobe.pipeline.run import run_experiment

CLASSES = {"red": 6, "green": 6, "blue": 6}


@pytest.fixture(scope="module")
def run(tmp_path_factory, write_colour_images):
    """A tiny run: logreg, ridge and linear_svm on two VGG16 layers, and the multi-layer row on both."""
    tmp = tmp_path_factory.mktemp("export")
    images = write_colour_images(tmp / "images", {"train": CLASSES, "test": {name: 3 for name in CLASSES}})
    config = config_from_dict({
        "data": {"path": str(images), "train_split": "train", "test_split": "test"},
        "features": {"store": str(tmp / "store"), "input_size": 32, "batch_size": 16},
        "backbones": [{"model": "VGG16", "weights": "none", "layers": ["block1_pool", "block2_pool"]}],
        "classifiers": {"names": ["logreg", "ridge", "linear_svm"], "cv": 2, "screening": False, "multi_layer": True,
                        "grids": {"logreg": {"C": [1.0]}, "linear_svm": {"C": [0.1]}}},
        "output": {"dir": str(tmp / "out")},
    }, "/")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(multi_layer_module, "MULTI_LAYER_TOL", 0.0)  # both layers join: the concatenation is exported
        result = run_experiment(config, log=lambda line: None, progress=False)
    return tmp, images, result.results


def _test_split(tmp, row):
    """(test sample ids, their pixels as the loader decodes them, the row's class scores on its stored features)."""
    estimator, sidecar = load_classifier(row["model_path"])
    store = FeatureStore(tmp / "store")
    parts = [store.load(entry, split="test") for entry in sidecar["store_entries"]]
    data = from_directory(tmp / "images").subset("test")
    assert list(data.sample_ids) == list(parts[0].sample_ids)
    pixels = np.stack([data.load(i, 32) for i in range(len(data))])
    return list(data.sample_ids), pixels, class_scores(estimator, np.hstack([flat_features(part) for part in parts]))


_LOAD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    for path, pixels, out in json.loads(sys.argv[1]):
        model = keras.saving.load_model(path)
        np.save(out, np.asarray(model.predict(np.load(pixels), verbose=0)))
    assert "layerprobe" not in sys.modules
    print(keras.backend.backend())
""")


@pytest.fixture(scope="module")
def exported(run):
    """Every row exported; the test pixels and the pipeline's scores beside each model."""
    tmp, _, frame = run
    rows = []
    for number, row in frame.iterrows():
        path = tmp / "exported" / f"row{number}.keras"
        export_model(row["model_path"], path)
        _, pixels, (kind, reference) = _test_split(tmp, row)
        np.save(tmp / "exported" / f"row{number}.pixels.npy", pixels)
        rows.append((row, path, pixels, kind, reference))
    return rows


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_exported_models_load_without_layerprobe_and_predict_as_the_pipeline(run, exported, backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    tmp, _, frame = run
    assert set(frame["classifier"]) == {"logreg", "ridge", "linear_svm"}
    multi = frame[frame["layer"].str.startswith("multi:")]
    assert list(multi["layer"]) == ["multi:block1_pool+block2_pool"]
    jobs = [(str(path), str(path.with_suffix(".pixels.npy")), str(path.with_suffix(f".{backend}.npy")))
            for _, path, *_ in exported]
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _LOAD, json.dumps(jobs)], capture_output=True, text=True, timeout=600,
                          cwd=tmp, env={**env, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == backend
    for (row, path, pixels, kind, reference), (_, _, out) in zip(exported, jobs):
        got = np.load(out)
        assert kind == ("probabilities" if row["classifier"] == "logreg" else "scores")
        assert got.shape == reference.shape == (9, 3)
        np.testing.assert_array_equal(got.argmax(axis=1), reference.argmax(axis=1))
        np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_the_exported_model_takes_uint8_and_float_pixels(exported):
    import keras

    _, path, pixels, *_ = exported[0]
    model = keras.saving.load_model(path)
    as_uint8 = np.asarray(model.predict(pixels, verbose=0))
    np.testing.assert_array_equal(as_uint8, np.asarray(model.predict(pixels.astype(np.float32), verbose=0)))
    assert model.input_shape == (None, 32, 32, 3)
    assert {type(layer).__module__.split(".")[0] for layer in model.layers} == {"keras"}


def test_metadata_beside_the_model_and_predict_reads_it(run, exported, tmp_path):
    _, images, _ = run
    row, path, *_ = exported[0]
    metadata = read_model_metadata(path)
    assert metadata["class_names"] == ["blue", "green", "red"] and metadata["input_size"] == 32
    assert metadata["outputs"] == "probabilities" and metadata["preprocessing"] == "none"
    lines = []
    from_keras = predict_images(path, images / "test", out=tmp_path / "keras.csv", log=lines.append)
    from_skops = predict_images(row["model_path"], images / "test", out=tmp_path / "skops.csv", progress=False,
                                log=lines.append)
    keras_frame, skops_frame = pd.read_csv(from_keras), pd.read_csv(from_skops)
    assert list(keras_frame.columns) == list(skops_frame.columns)
    assert keras_frame["predicted_label"].tolist() == skops_frame["predicted_label"].tolist()
    np.testing.assert_allclose(keras_frame.filter(like="proba_"), skops_frame.filter(like="proba_"), atol=1e-4)
    accuracy = [line for line in lines if line.startswith("accuracy ")]
    assert len(accuracy) == 2 and accuracy[0] == accuracy[1] and accuracy[0].endswith("of 9 labelled images)")


def test_cli_export_and_its_errors(run, tmp_path, capsys):
    tmp, _, frame = run
    model_path = frame[frame["classifier"] == "ridge"]["model_path"].iloc[0]
    assert main(["export", model_path, "--out", str(tmp_path / "ridge.keras")]) == 0
    assert "exported" in capsys.readouterr().out and (tmp_path / "ridge.layerprobe.json").is_file()
    assert main(["export", model_path, "--out", str(tmp_path / "ridge.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("layerprobe export: error: The exported model is saved in Keras's format") and err.count("\n") == 1
    assert main(["predict", str(tmp_path / "other.keras"), "--data", str(tmp / "images" / "test")]) == 2
    assert "No model file at" in capsys.readouterr().err


# --------------------------------------------------------------------------- predict (issue 26 item 4)


def test_predict_prints_accuracy_scores_linear_svm_and_says_where_features_go(run, tmp_path, capsys):
    tmp, images, frame = run
    row = frame[(frame["classifier"] == "linear_svm") & (frame["layer"] == "block2_pool")].iloc[0]
    model_path = row["model_path"]
    out = tmp_path / "svm.csv"
    assert main(["predict", model_path, "--data", str(images / "test"), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"features cached in {tmp / 'store'} (the classifier's training store; --store for another)" in printed
    assert re.search(r"^accuracy \d\.\d{3} \(\d of 9 labelled images\)$", printed, re.MULTILINE), printed
    predicted = pd.read_csv(out)
    assert [column for column in predicted.columns if column.startswith("score_")] == [
        "score_blue", "score_green", "score_red"]  # before: no score column for linear_svm
    ids, _, (kind, reference) = _test_split(tmp, row)  # the decision function on the run's test features
    assert kind == "scores" and predicted["sample_id"].tolist() == ids
    np.testing.assert_allclose(predicted[["score_blue", "score_green", "score_red"]], reference, rtol=1e-5, atol=1e-6)
    assert predicted["predicted_label"].tolist() == [["blue", "green", "red"][i] for i in reference.argmax(axis=1)]
    separate = tmp_path / "new-store"
    assert main(["predict", model_path, "--data", str(images / "test"), "--out", str(out), "--no-progress",
                 "--store", str(separate)]) == 0
    assert f"features cached in {separate}\n" in capsys.readouterr().out and any(separate.glob("*.h5"))


def test_predict_unlabelled_images_prints_no_accuracy(run, tmp_path):
    _, images, frame = run
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for path in sorted((images / "test" / "red").glob("*.png")):
        (folder / path.name).write_bytes(path.read_bytes())
    lines = []
    predict_images(frame["model_path"].iloc[0], folder, out=tmp_path / "p.csv", progress=False, log=lines.append)
    assert not [line for line in lines if line.startswith("accuracy")]
    assert pd.read_csv(tmp_path / "p.csv")["true_label"].isna().all()


# --------------------------------------------------------------------------- folding, without Keras


def _data(n_classes, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(3.0, 2.0, (60, 8)) * rng.uniform(0.1, 10, 8)
    return X, np.arange(60) % n_classes


class _UnknownLinearClassifier(LinearClassifierMixin, BaseEstimator):
    """A linear classifier export knows by its coef_ and intercept_ only (as layerprobe's own LinearSVM)."""

    def fit(self, X, y):
        fitted = LinearSVC().fit(X, y)
        self.coef_, self.intercept_, self.classes_ = fitted.coef_ * 2.0, fitted.intercept_ - 0.5, fitted.classes_
        return self


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("estimator", [
    lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
    lambda: make_pipeline(StandardScaler(), PCA(4, whiten=True, random_state=0), LinearSVC()),
    lambda: make_pipeline(StandardScaler(), Normalizer(), PCA(5, random_state=0), LogisticRegression(max_iter=1000)),
    lambda: make_pipeline(StandardScaler(with_mean=False), RidgeProbeCV()),
    lambda: make_pipeline(StandardScaler(), SGDClassifier(random_state=0)),
    lambda: make_pipeline(StandardScaler(), _UnknownLinearClassifier()),
    lambda: make_pipeline(StandardScaler(), pytest.importorskip("layerprobe.pipeline.probes.svm").LinearSVM()),
])
def test_linear_head_reproduces_the_pipeline_in_numpy_and_as_keras_layers(estimator, n_classes):
    import keras

    X, y = _data(n_classes)
    fitted = estimator().fit(X, y)
    head = linear_head(fitted)
    kind, reference = class_scores(fitted, X)
    assert head.kind == kind and reference.shape == (60, n_classes)
    np.testing.assert_allclose(head(X), reference, rtol=1e-9, atol=1e-9)
    assert len(head.steps) in (1, 3)  # everything folded into one Dense, but around an L2 normalization
    features = keras.Input((X.shape[1],))
    layers = keras.Model(features, head.keras_layers(features))
    got = np.asarray(layers.predict(X.astype(np.float32), verbose=0))
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_a_wide_standardization_folds_without_a_square_matrix():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 30_000)), np.arange(20) % 2  # flatten pooling: block5_pool at 224 px gives 25,088
    head = linear_head(make_pipeline(StandardScaler(), RidgeProbeCV()).fit(X, y))  # before: a 30,000² diagonal matrix
    assert [step[0] for step in head.steps] == ["affine"] and head.steps[0][1].shape == (30_000, 2)


@pytest.mark.parametrize("estimator, match", [
    (make_pipeline(StandardScaler(), SVC()), r"row.skops \(step 'svc'\) cannot be exported as a Keras model: SVC is not "
                                             r"a linear model\. layerprobe exports pipelines of .* Received: SVC$"),
    (make_pipeline(Normalizer(norm="l1"), LogisticRegression()), r"\(step 'normalizer'\) cannot be exported as a Keras "
                                                                 r"model: Normalizer\(norm='l1'\) is not an L2 normalization"),
])
def test_what_cannot_be_exported_is_a_one_line_error(estimator, match):
    X, y = _data(3)
    with pytest.raises(InputError, match=match) as error:
        linear_head(estimator.fit(X, y), what="row.skops")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("mode, prefix_tokens", [("cls", 1), ("mean", 1), ("cls+mean", 5), ("max", 5), ("mean", 0)])
def test_token_poolings_from_keras_layers_equal_layerprobes_token_pooling(mode, prefix_tokens):
    import keras

    from layerprobe.features.token_pooling import TokenPooling

    tokens = np.random.default_rng(0).normal(size=(4, 17, 6)).astype(np.float32)
    reference = np.asarray(TokenPooling(mode, prefix_tokens)(tokens))
    inputs = keras.Input((17, 6))
    model = keras.Model(inputs, token_pooling(inputs, mode, prefix_tokens, name="block2"))
    np.testing.assert_allclose(np.asarray(model.predict(tokens, verbose=0)), reference, rtol=1e-6, atol=1e-6)
    assert required_packages(model) == []  # loads without layerprobe
    with_layerprobes = keras.Model(inputs, TokenPooling(mode, prefix_tokens)(inputs))
    assert required_packages(with_layerprobes) == ["layerprobe"]  # what export_model refuses to write


def test_a_transformers_token_layers_export_as_the_extractor_pools_them(tmp_path):
    """A backbone with (tokens, width) outputs, as keras-hub ViTs have: the exported graph equals build_extractor's."""
    from types import SimpleNamespace

    import keras

    from layerprobe.features.layers import LayerInfo
    from layerprobe.features.registry import TokenLayout
    from layerprobe.features.truncate import build_extractor
    from layerprobe.pipeline.export import LinearHead, _keras_model

    pixels = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 2, strides=2, name="patchify")(pixels)
    x = keras.layers.Reshape((16, 6), name="block1")(x)  # 16 tokens; token 0 plays the class token
    backbone = keras.Model(pixels, keras.layers.Dense(6, name="block2")(x))
    tokens = TokenLayout(prefix_tokens=1, class_token=True)
    infos = [LayerInfo(name, k, (16, 6), True, k, name, "Dense") for k, name in enumerate(["block1", "block2"], 1)]
    pooling = {"block1": "cls+mean", "block2": "max"}
    spec = SimpleNamespace(tokens=tokens, preprocess_input=lambda x: x / 127.5 - 1.0)
    extractor = SimpleNamespace(layers=infos, pooling=pooling, compute_dtype="float32", dtype="float32",
                                backbone=SimpleNamespace(model=backbone, spec=spec, input_size=8))
    identity = LinearHead(None, (("affine", np.eye(18), np.zeros(18)),), "scores")
    model = _keras_model(extractor, ["block1", "block2"], identity, [str(k) for k in range(18)])
    assert required_packages(model) == []  # before: layerprobe's TokenPooling layers in the graph
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3)).astype(np.uint8)
    reference = build_extractor(backbone, infos, pooling, tokens=tokens).predict(images / 127.5 - 1.0, verbose=0)
    np.testing.assert_allclose(model.predict(images, verbose=0), np.hstack(reference), rtol=1e-5, atol=1e-5)


def test_a_keras_hub_vit_row_exports_and_loads_with_keras_hub_but_without_layerprobe(tmp_path, write_colour_images):
    pytest.importorskip("keras_hub")
    images = write_colour_images(tmp_path / "images", {"train": CLASSES, "test": {name: 3 for name in CLASSES}})
    dino = {"patch_size": 8, "num_layers": 2, "hidden_dim": 16, "num_heads": 2, "intermediate_dim": 32,
            "num_register_tokens": 2, "position_embedding_shape": [32, 32, 3]}
    config = config_from_dict({
        "data": {"path": str(images), "train_split": "train", "test_split": "test"},
        "features": {"store": str(tmp_path / "store"), "input_size": 32, "batch_size": 16, "pooling": ["cls+mean", "max"]},
        "backbones": [{"model": "keras_hub:DINOV2Backbone", "weights": "none", "model_kwargs": dino,
                       "layers": ["block2"]}],
        "classifiers": {"names": ["logreg"], "cv": 2, "screening": False, "grids": {"logreg": {"C": [1.0]}}},
        "output": {"dir": str(tmp_path / "out")},
    }, "/")
    frame = run_experiment(config, log=lambda line: None, progress=False).results
    assert sorted(frame["pooling"]) == ["cls+mean", "max"]
    jobs, references = [], []
    for number, row in frame.iterrows():
        path = export_model(row["model_path"], tmp_path / f"vit{number}.keras")
        assert read_model_metadata(path)["requires"] == ["keras", "keras_hub"]
        _, pixels, (_, reference) = _test_split(tmp_path, row)
        np.save(tmp_path / f"vit{number}.pixels.npy", pixels)
        jobs.append((str(path), str(tmp_path / f"vit{number}.pixels.npy"), str(tmp_path / f"vit{number}.out.npy")))
        references.append(reference)
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _LOAD, json.dumps(jobs)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env={**env, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    for (_, _, out), reference in zip(jobs, references):
        got = np.load(out)
        np.testing.assert_array_equal(got.argmax(axis=1), reference.argmax(axis=1))
        np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4)
