"""`layerprobe export`: a row's classifier as one Keras model, loaded without layerprobe, predicting as the pipeline."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

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
from layerprobe.features.token_pooling import token_pooling
from layerprobe.pipeline.export import export_model, linear_head, required_packages
from layerprobe.pipeline.persistence import load_classifier
from layerprobe.pipeline.predict import class_scores, predict_images
from layerprobe.pipeline.probes.ridge import RidgeProbeCV
from layerprobe.pipeline.run import run_experiment

CLASSES = {"red": 6, "green": 6, "blue": 6}


def _config(tmp):
    return config_from_dict({
        "data": {"path": str(tmp / "images"), "train_split": "train", "test_split": "test"},
        "features": {"store": str(tmp / "store"), "input_size": 32, "batch_size": 16},
        "backbones": [{"model": "VGG16", "weights": "none", "layers": ["block1_pool", "block2_pool"]}],
        "classifiers": {"names": ["logreg", "ridge", "linear_svm"], "cv": 2, "screening": False, "multi_layer": True,
                        "grids": {"logreg": {"C": [1.0]}, "linear_svm": {"C": [0.1]}}},
        "output": {"dir": str(tmp / "out")},
    }, "/")


def _run(tmp, log=lambda line: None):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(multi_layer_module, "MULTI_LAYER_TOL", 0.0)  # both layers join: the concatenation is exported
        return run_experiment(_config(tmp), log=log, progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory, write_colour_images):
    """A tiny run: logreg, ridge and linear_svm on two VGG16 layers, and the multi-layer row on both."""
    tmp = tmp_path_factory.mktemp("export")
    images = write_colour_images(tmp / "images", {"train": CLASSES, "test": {name: 3 for name in CLASSES}})
    return tmp, images, _run(tmp).results


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


# --------------------------------------------------------------------------- one step to use (issue 31 item 5)


@pytest.fixture(scope="module")
def finetuned(run):
    """A finetuned VGG16 (random init, one head epoch at 32 px, with augmentation) on the run's training images."""
    from layerprobe.pipeline.finetune import FinetuneConfig, finetune

    tmp, images, _ = run
    config = FinetuneConfig(head_epochs=1, finetune_epochs=0, batch_size=8, val_fraction=0.0,
                            augmentation={"flip": "horizontal"})
    train = from_directory(images).subset("train")
    return finetune("VGG16", train, output_dir=tmp / "finetune", weights=None, input_size=32, config=config).model_path


def test_models_written_by_run_finetune_and_export_load_in_plain_keras_without_layerprobe(run, finetuned, tmp_path):
    from layerprobe.pipeline.saved_models import read_saved_model

    tmp, images, _ = run
    recommended = tmp / "out" / "recommended.keras"
    copy = tmp_path / "finetuned-copy.keras"
    assert main(["export", str(finetuned), "--out", str(copy)]) == 0  # before: it looked for model.skops
    data = from_directory(images).subset("test")
    np.save(tmp_path / "pixels.npy", np.stack([data.load(i, 32) for i in range(len(data))]))
    models = {"run": recommended, "finetune": finetuned, "export": copy}
    for path in models.values():
        assert read_model_metadata(path)["class_names"] == ["blue", "green", "red"]
    jobs = [(str(path), str(tmp_path / "pixels.npy"), str(tmp_path / f"{name}.npy")) for name, path in models.items()]
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _LOAD, json.dumps(jobs)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]  # before: finetuned models needed layerprobe's custom layers
    pixels = np.load(tmp_path / "pixels.npy")
    for name, path in models.items():
        expected = read_saved_model(path).model.predict(pixels, verbose=0)
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), expected, rtol=1e-5, atol=1e-6)


def test_a_run_writes_the_recommended_model_once_and_ends_with_the_commands_that_use_it(run):
    tmp, _, frame = run
    out = tmp / "out"
    recommended = out / "recommended.keras"
    metadata = read_model_metadata(recommended)
    advised = json.loads((out / "results.json").read_text())
    assert metadata["source"] in {str(Path(path).resolve()) for path in frame["model_path"]}
    commands = (f"    layerprobe predict {recommended} --data NEW_IMAGES",
                f'    import keras\n    model = keras.saving.load_model("{recommended}")')
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert commands[0] in summary and summary.rstrip().endswith(commands[1]), summary[-600:]
    before = recommended.stat()
    lines = []
    _run(tmp, log=lines.append)  # nothing changed: the file is left as it is
    after = recommended.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert any(line.startswith(f"recommended model: {recommended} (unchanged") for line in lines)
    assert lines[-1].endswith(commands[1]) and commands[0] in lines[-1]
    assert advised  # results.json written beside it


def test_an_interrupted_write_of_the_recommended_model_never_leaves_a_half_file(run, monkeypatch):
    import keras

    from layerprobe.pipeline.run.recommended import write_recommended

    tmp, _, _ = run
    recommended = tmp / "out" / "recommended.keras"
    source = read_model_metadata(recommended)["source"]
    old = recommended.read_bytes()
    (tmp / "out" / "recommended.layerprobe.json").unlink()  # forces a rewrite

    def killed(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            write_recommended(tmp / "out", pd.Series({"model_path": source}), log=lambda line: None)
    assert recommended.read_bytes() == old  # the previous model, whole
    assert not [path.name for path in (tmp / "out").iterdir() if path.name.startswith(".tmp-")]
    lines = []
    write_recommended(tmp / "out", pd.Series({"model_path": source}), log=lines.append)  # the next run writes it again
    assert lines == [f"recommended model: {recommended} ()"] and read_model_metadata(recommended)["source"] == source


def test_predict_takes_a_finetuned_model_and_reports_each_class_and_the_confusion_matrix(run, finetuned, tmp_path,
                                                                                          capsys):
    from sklearn.metrics import confusion_matrix

    _, images, _ = run
    out = tmp_path / "p.csv"
    assert main(["predict", str(finetuned), "--data", str(images / "test"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out  # before: "no metadata from `layerprobe export` beside it"
    predicted = pd.read_csv(out)
    assert len(predicted) == 9 and list(predicted.filter(like="proba_")) == ["proba_blue", "proba_green", "proba_red"]
    for name in ("blue", "green", "red"):  # precision, recall, f1-score, support
        assert re.search(rf"^ +{name} +\d\.\d{{3}} +\d\.\d{{3}} +\d\.\d{{3}} +3$", printed, re.MULTILINE), printed
    names = sorted(set(predicted["true_label"]) | set(predicted["predicted_label"]))
    matrix = pd.DataFrame(confusion_matrix(predicted["true_label"], predicted["predicted_label"], labels=names),
                          index=names, columns=names)
    assert "confusion matrix (rows: true class, columns: predicted class):\n" + matrix.to_string() in printed
    assert (tmp_path / "p.confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"confusion matrix: {tmp_path / 'p.confusion.png'}" in printed


def test_predict_takes_one_image(run, tmp_path):
    tmp, images, frame = run
    image = sorted((images / "test" / "red").glob("*.png"))[0]
    for number, model in enumerate([tmp / "out" / "recommended.keras", frame["model_path"].iloc[0]]):
        out = predict_images(model, image, out=tmp_path / f"{number}.csv", progress=False, log=lambda line: None)
        predicted = pd.read_csv(out)
        assert predicted["sample_id"].tolist() == [str(image)] and predicted["true_label"].isna().all()
        assert predicted["predicted_label"].isin(["blue", "green", "red"]).all()


# --------------------------------------------------------------------------- damaged model files (issue 32 item 8)


def _with_metadata(path, metadata):
    (path.parent / f"{path.stem}.layerprobe.json").write_text(json.dumps(metadata), encoding="utf-8")
    return path


def _damaged(case, tmp, frame, folder):
    """A damaged or foreign model file of `case`, made in `folder`."""
    import keras
    import skops.io
    from sklearn.cluster import KMeans

    recommended = tmp / "out" / "recommended.keras"
    metadata = read_model_metadata(recommended)
    if case == "lambda":
        marker = folder / "code-ran"
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Lambda(eval(f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]"))(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
        model.save(folder / "lambda.keras")
        marker.unlink()  # building it ran the function here; loading it must not
        return _with_metadata(folder / "lambda.keras", metadata)
    if case == "truncated keras":
        data = recommended.read_bytes()
        (folder / "half.keras").write_bytes(data[: len(data) // 2])
        return _with_metadata(folder / "half.keras", metadata)
    skops_path = Path(frame[frame["classifier"] == "logreg"]["model_path"].iloc[0])
    for source in (skops_path, skops_path.with_suffix(".json")):
        shutil.copyfile(source, folder / source.name)
    target = folder / skops_path.name
    if case == "truncated skops":
        target.write_bytes(target.read_bytes()[:300])
    elif case == "kmeans":
        skops.io.dump(KMeans(2, n_init=1).fit(np.random.default_rng(0).normal(size=(10, 4))), target)
    else:  # a classifier for another feature width
        X = np.random.default_rng(0).normal(size=(30, 7))
        skops.io.dump(LogisticRegression().fit(X, np.arange(30) % 3), target)
    return target


@pytest.mark.parametrize(("case", "message"), [
    ("lambda", r"Keras cannot load it in safe mode \(.*Lambda"),
    ("truncated keras", r"it is not a Keras archive \(a \.keras file is a zip archive; this one is truncated"),
    ("truncated skops", r"cannot be read as a saved classifier \(BadZipFile"),
    ("kmeans", r"holds a KMeans, which gives no class scores"),
    ("width", r"holds a LogisticRegression for 7 features and 3 classes, but its sidecar describes \d+ features"),
])
def test_damaged_or_foreign_model_files_are_one_line_errors_and_run_no_code(run, tmp_path, capsys, case, message):
    tmp, images, frame = run
    path = _damaged(case, tmp, frame, tmp_path)
    capsys.readouterr()
    for command in (["predict", str(path), "--data", str(images / "test"), "--out", str(tmp_path / "p.csv")],
                    ["export", str(path), "--out", str(tmp_path / "e.keras")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"layerprobe {command[0]}: error: ") and err.count("\n") == 1, err
        if command[0] == "predict" or "keras" in case:  # export refuses a foreign .skops by its own rule
            assert re.search(message, err), err
    assert not (tmp_path / "code-ran").exists() and not (tmp_path / "p.csv").exists()


def test_the_models_own_input_size_wins_over_its_metadata(run, tmp_path):
    tmp, images, _ = run
    path = tmp_path / "big.keras"
    shutil.copyfile(tmp / "out" / "recommended.keras", path)
    _with_metadata(path, {**read_model_metadata(tmp / "out" / "recommended.keras"), "input_size": 100000})
    lines = []  # before: a 335 GiB allocation for 100000 x 100000 pixels
    predict_images(path, images / "test", out=tmp_path / "p.csv", log=lines.append)
    assert "(32x32 pixels" in lines[0] and len(pd.read_csv(tmp_path / "p.csv")) == 9
    # A model with a flexible input takes the metadata's size, checked against memory before any decoding.
    import keras

    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs))).save(tmp_path / "flex.keras")
    _with_metadata(tmp_path / "flex.keras", read_model_metadata(path))
    with pytest.raises(InputError, match=r"Decoding 32 images of 100000x100000 pixels at once \(batch_size\) needs"):
        predict_images(tmp_path / "flex.keras", images / "test", out=tmp_path / "q.csv", log=lines.append)
