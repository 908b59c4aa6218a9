"""Tests for pipeline.finetune: freezing, phases, block rates, checkpoints/resume, saving,
evaluation, and the `layerprobe finetune` command."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression

from layerprobe.features.registry import BackboneSpec, get_backbone_spec
from layerprobe.core.errors import BackboneError, ConfigError, InputError
from layerprobe.features.inputs import from_arrays, from_csv
from layerprobe.features.layers import UnknownLayerError, describe_layers
from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.backbone import load_backbone
from layerprobe.pipeline import finetune as finetune_module
from layerprobe.pipeline.run import rows as run_rows
from layerprobe.pipeline.classifiers import fit_classifier
from layerprobe.pipeline.cli import main
from layerprobe.pipeline.evaluate import Scores
from layerprobe.pipeline.finetune import (
    BlockwiseAdam,
    FinetuneConfig,
    ImageBatches,
    build_classifier_model,
    evaluate_model,
    finetune,
    train_from_scratch,
    unfreeze_top,
)

SIZE = 32
CLASS_NAMES = ("red", "green", "blue")


def _tiny_cnn(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)):
    """Three conv-BN-ReLU-pool blocks with He init: trains in seconds, unlike a
    randomly initialised MobileNetV2 whose features vanish (~1e-12)."""
    inputs = keras.Input(input_shape)
    x = inputs
    for block, filters in enumerate((8, 16, 32), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal",
                                name=f"block{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.ReLU(name=f"block{block}_relu")(x)
        x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


TINY = BackboneSpec(
    name="TinyCNN",
    constructor=_tiny_cnn,
    preprocess_module="keras.applications.mobilenet_v2",
    default_input_size=SIZE,
    stage_pattern=r"block\d+_pool$",
)
CONFIG = FinetuneConfig(head_epochs=1, finetune_epochs=1, batch_size=8, val_fraction=0.25)


def _images(n_per_class, seed):
    """Noisy images whose dominant colour channel is their class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(CLASS_NAMES)), n_per_class)
    X = rng.uniform(0, 120, (len(y), SIZE, SIZE, 3))
    X[np.arange(len(y)), :, :, y] += 120
    return from_arrays(X.astype("uint8"), y, class_names=CLASS_NAMES)


class Recorder(keras.callbacks.Callback):
    """Per `fit` call: weights before and after, learning rate, epochs run."""

    def __init__(self):
        super().__init__()
        self.fits = []

    def on_train_begin(self, logs=None):
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.fits.append({"before": _snapshot(self.model), "lr": lr, "epochs": []})

    def on_epoch_begin(self, epoch, logs=None):
        self.fits[-1]["epochs"].append(epoch)

    def on_train_end(self, logs=None):
        self.fits[-1]["after"] = _snapshot(self.model)


def _snapshot(model):
    """Every weight of the backbone and the head, keyed by (layer, weight name)."""
    layers = list(model.get_layer("tiny_cnn").layers) + [model.get_layer("predictions")]
    return {(layer.name, w.name): keras.ops.convert_to_numpy(w)
            for layer in layers for w in layer.weights}


def _changed(before, after):
    return {key for key in before if not np.array_equal(before[key], after[key])}


@pytest.fixture(scope="module")
def data():
    return _images(12, seed=0)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    recorder = Recorder()
    result = finetune(TINY, data, output_dir=tmp_path_factory.mktemp("run"), weights=None,
                      config=CONFIG, callbacks=[recorder])
    return result, recorder


# --------------------------------------------------------------------------- config


def test_config_defaults_round_trip_through_a_dict():
    config = FinetuneConfig()
    assert (config.head_epochs, config.finetune_epochs, config.unfreeze_blocks) == (5, 5, 1)
    assert (config.learning_rate, config.head_learning_rate, config.batch_size) == (1e-5, 1e-3, 32)
    assert config.augmentation == {"flip": "horizontal", "rotation": 0.1, "zoom": 0.1,
                                   "contrast": 0.1}
    assert (config.early_stopping_patience, config.val_fraction, config.seed) == (3, 0.1, 0)
    assert config.mixed_precision is False and config.block_lr_decay == 1.0
    custom = FinetuneConfig.from_dict({"hidden_units": [64], "unfreeze_blocks": "from:block5_conv1",
                                       "augmentation": None})
    assert custom.hidden_units == (64,) and custom.augmentation is None
    assert FinetuneConfig.from_dict(custom.to_dict()) == custom


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"learning_rate": 0}, r"`learning_rate` must be a float > 0.*Received: learning_rate=0"),
        ({"head_learning_rate": float("nan")}, "head_learning_rate"),
        ({"head_epochs": -1}, r"`head_epochs` must be an integer >= 0"),
        ({"head_epochs": 0, "finetune_epochs": 0}, "at least 1"),
        ({"finetune_epochs": 2.5}, "finetune_epochs"),
        ({"unfreeze_blocks": "top3"}, r"or 'from:LAYER_NAME'.*Received: unfreeze_blocks='top3'"),
        ({"unfreeze_blocks": -1}, "unfreeze_blocks"),
        ({"batch_size": 0}, "batch_size"),
        ({"dropout": 1.0}, r"`dropout` must be a float in \[0, 1\)"),
        ({"val_fraction": 1}, "val_fraction"),
        ({"hidden_units": [64, 0]}, "hidden_units"),
        ({"early_stopping_patience": -2}, "early_stopping_patience"),
        ({"mixed_precision": "yes"}, "mixed_precision"),
        ({"augmentation": {"rotation": 2.0}}, r"augmentation\['rotation'\]"),
        ({"augmentation": {"flip": "diagonal"}}, "horizontal_and_vertical"),
        ({"augmentation": {"flipp": "horizontal"}}, "Did you mean 'flip'"),
        ({"learning_rte": 1e-4}, "Did you mean 'learning_rate'"),
        ({"block_lr_decay": 0}, r"`block_lr_decay` must be a float in \(0, 1\]"),
        ({"block_lr_decay": 1.5}, "block_lr_decay"),
        ({"head_init": "zeros"}, r"`head_init` must be one of \('auto', 'glorot', 'logreg'\)"),
        ({"head_init": "logreg", "hidden_units": [8]}, r"\(\) with head_init='logreg'"),
    ],
)
def test_config_rejects_bad_values_clearly(values, match):
    with pytest.raises(ValueError, match=match) as info:
        FinetuneConfig.from_dict(values)
    assert "Received:" in str(info.value)
    assert isinstance(info.value, ConfigError) and len(info.value.problems) == 1


def test_config_lists_every_problem_at_once():
    with pytest.raises(ConfigError) as info:
        FinetuneConfig.from_dict({"learning_rte": 1e-4, "batch_size": 0, "augmentation": {"zoom": 2}})
    assert len(info.value.problems) == 3
    assert [problem.split()[0] for problem in info.value.problems] == [
        "Unknown", "`batch_size`", "`augmentation['zoom']`"]


_CONFIG_ONLY = """
import json, sys
from layerprobe.pipeline.finetune.settings import FinetuneConfig
FinetuneConfig.from_dict({"head_epochs": 2, "unfreeze_blocks": "all", "augmentation": {"flip": "vertical"}})
from layerprobe.pipeline.finetune import FinetuneConfig as public  # through the lazy package
assert public is FinetuneConfig
print(json.dumps(sorted(name for name in ("keras", "tensorflow") if name in sys.modules)))
"""


def test_config_is_checked_without_importing_keras_or_tensorflow(tmp_path):
    done = subprocess.run([sys.executable, "-c", _CONFIG_ONLY], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize(
    ("family", "mode"),
    [("VGG16", "caffe"), ("MobileNetV2", "tf"), ("DenseNet121", "torch"), ("EfficientNetB0", None)],
)
def test_in_model_preprocessing_equals_the_family_numpy_function(family, mode):
    spec = get_backbone_spec(family)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    inputs = keras.Input((8, 8, 3))
    in_graph = keras.Model(inputs, spec.preprocess_input(keras.ops.cast(inputs, "float32")))  # as the classifier's
    inside = np.asarray(in_graph.predict(pixels, verbose=0))
    np.testing.assert_allclose(inside, spec.preprocess_input(pixels.copy()), rtol=1e-5, atol=1e-4)
    if mode == "caffe":  # BGR order, mean subtracted: blue channel first
        np.testing.assert_allclose(inside[..., 0], pixels[..., 2] - 103.939, rtol=1e-5)
    elif mode is None:
        np.testing.assert_array_equal(inside, pixels)


def test_model_stacks_preprocessing_backbone_and_head():
    backbone = load_backbone(TINY, weights=None)
    model = build_classifier_model(backbone, 3, hidden_units=(16,), l2=0.01,
                                   augmentation={"flip": "horizontal", "zoom": 0.2})
    names = [layer.name for layer in model.layers]
    assert names == ["image", "augment_flip", "augment_zoom", "tiny_cnn", "avg_pool",  # preprocessing: operations
                     "standardize", "head_dropout_1", "head_dense_1", "head_dropout", "predictions"]
    assert {type(layer).__module__.split(".")[0] for layer in model._flatten_layers()} == {"keras"}
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"
    assert model.get_layer("head_dense_1").kernel_initializer.__class__.__name__ == "HeNormal"
    assert len(model.losses) == 1  # the L2 penalty
    rebuilt = build_classifier_model(load_backbone(TINY, weights=None), 3, hidden_units=(16,))
    other = build_classifier_model(backbone, 3, hidden_units=(16,), seed=1)
    for name in ("head_dense_1", "predictions"):
        kernel = model.get_layer(name).kernel
        np.testing.assert_array_equal(kernel, rebuilt.get_layer(name).kernel)  # seed decides
        assert not np.array_equal(kernel, other.get_layer(name).kernel)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_head_initialised_from_logistic_regression_predicts_like_it(data, n_classes):
    dataset = data.select(np.flatnonzero(data.labels < n_classes))
    backbone = load_backbone(TINY, weights=None)
    probe = build_classifier_model(backbone, n_classes, dropout=0.0)
    pooled = keras.Model(probe.input, probe.get_layer("avg_pool").output)
    X = dataset.images.astype("float32")
    features = pooled.predict(X, verbose=0)
    logreg = LogisticRegression(max_iter=1000).fit(features, dataset.labels)
    model = build_classifier_model(backbone, n_classes, dropout=0.0,
                                   init_head_from=(logreg.coef_, logreg.intercept_))
    np.testing.assert_allclose(model.predict(X, verbose=0), logreg.predict_proba(features),
                               atol=1e-4)


@pytest.mark.parametrize("head_init", ["init_head_from", "logreg", "auto"])
def test_finetune_standardizes_the_features_and_starts_the_head_from_a_logistic_regression(
        data, tmp_path, head_init):
    X = data.images.astype("float32")
    probe = build_classifier_model(load_backbone(TINY, weights=None), 3)
    raw = keras.Model(probe.input, probe.get_layer("avg_pool").output).predict(X, verbose=0)
    features = raw.astype("float64")
    std = features.std(axis=0)
    expected_scale = np.where(std > 1e-6 * std.max(), std, 1.0)  # dead features keep 1
    if head_init != "init_head_from":  # fitted by finetune on the standardized features, C by CV
        features = (features - features.mean(axis=0)) / expected_scale
        logreg = fit_classifier(features, data.labels, "logreg", preprocessing=(),
                                param_grid={"C": [1e-3, 1e-2, 1e-1, 1.0]}).estimator[-1]
    else:
        logreg = LogisticRegression(max_iter=1000).fit(features, data.labels)
    config = FinetuneConfig(head_epochs=0, finetune_epochs=1, unfreeze_blocks=0, learning_rate=1e-12,
                            val_fraction=0.0, augmentation=None, batch_size=8,
                            head_init="glorot" if head_init == "init_head_from" else head_init)
    given = (logreg.coef_, logreg.intercept_) if head_init == "init_head_from" else None
    result = finetune(TINY, data, output_dir=tmp_path, weights=None, config=config,
                      init_head_from=given)
    mean, variance, _ = result.model.get_layer("standardize").get_weights()
    scale = np.sqrt(variance)
    np.testing.assert_allclose(mean, raw.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scale, expected_scale, rtol=1e-3)
    assert scale.min() < 0.5 or scale.max() > 2  # not the identity
    np.testing.assert_allclose(result.model.predict(X, verbose=0), logreg.predict_proba(features),
                               atol=1e-3)
    if head_init == "logreg":
        with pytest.raises(ValueError, match="not both"):
            finetune(TINY, data, output_dir=tmp_path, weights=None, config=config,
                     init_head_from=(logreg.coef_, logreg.intercept_))


def test_head_init_auto_is_a_logistic_regression_unless_the_head_has_hidden_units():
    assert FinetuneConfig().head_init == "auto" and FinetuneConfig().resolved_head_init == "logreg"
    assert FinetuneConfig(hidden_units=(16,)).resolved_head_init == "glorot"  # valid: auto adapts
    assert FinetuneConfig(head_init="glorot").resolved_head_init == "glorot"


def test_default_head_init_handles_classes_absent_from_the_training_images(data, tmp_path):
    present = data.select(np.flatnonzero(data.labels != 1))  # "green" has no training image
    config = FinetuneConfig(head_epochs=0, finetune_epochs=1, unfreeze_blocks=0, learning_rate=1e-12,
                            val_fraction=0.0, augmentation=None, batch_size=8)
    result = finetune(TINY, present, output_dir=tmp_path, weights=None, config=config)
    kernel, bias = result.model.get_layer("predictions").get_weights()
    assert kernel.shape[1] == 3 and np.abs(kernel[:, 1]).max() < 1e-9 and bias[1] < bias[[0, 2]].min() - 4
    predicted = result.model.predict(present.images.astype("float32"), verbose=0).argmax(axis=1)
    assert 1 not in predicted and (predicted == present.labels).mean() > 0.9


def test_head_initialisation_errors_name_the_expected_shapes():
    backbone = load_backbone(TINY, weights=None)
    expected = r"shapes \(3, 32\) and \(3,\).*Received: coef with shape \(3, 5\)"
    with pytest.raises(ValueError, match=expected):
        build_classifier_model(backbone, 3, init_head_from=(np.zeros((3, 5)), np.zeros(3)))
    with pytest.raises(ValueError, match="hidden_units=()"):
        build_classifier_model(backbone, 3, hidden_units=(8,),
                               init_head_from=(np.zeros((3, 32)), np.zeros(3)))


# --------------------------------------------------------------------------- freezing


def test_unfreeze_top_counts_blocks_from_stage_outputs():
    backbone = load_backbone("MobileNetV2", weights=None, input_size=SIZE,
                             model_kwargs={"alpha": 0.35})
    model, spec = backbone.model, backbone.spec
    stages = [info.index for info in describe_layers(model, spec) if info.stage]
    for blocks in (1, 2):
        unfrozen = unfreeze_top(backbone, spec, blocks)
        first = stages[-(blocks + 1)] + 1
        expected = [layer.name for layer in model.layers[first:]
                    if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]
        assert unfrozen == expected
        assert all(layer.trainable == (layer.name in unfrozen) for layer in model.layers
                   if layer.weights)
    everything = unfreeze_top(model, spec, "all")
    assert not any(isinstance(model.get_layer(name), keras.layers.BatchNormalization)
                   for name in everything)
    assert all(not layer.trainable for layer in model.layers
               if isinstance(layer, keras.layers.BatchNormalization))
    assert unfreeze_top(model, spec, "from:block_16_project") == ["block_16_project", "Conv_1"]
    assert unfreeze_top(model, spec, 0) == []


def test_unfreeze_top_on_vgg16_takes_the_last_conv_block():
    backbone = load_backbone("VGG16", weights=None, input_size=SIZE)
    classifier = build_classifier_model(backbone, 3)
    assert unfreeze_top(classifier, backbone.spec, 1) == ["block5_conv1", "block5_conv2",
                                                          "block5_conv3"]
    assert classifier.get_layer("predictions").trainable  # the head is left alone


def test_unfreeze_top_rejects_unknown_blocks():
    backbone = load_backbone(TINY, weights=None)
    with pytest.raises(UnknownLayerError, match="block3_conv"):
        unfreeze_top(backbone, TINY, "from:block3_cnv")
    with pytest.raises(BackboneError, match=r"3 blocks.*0\.\.3.*Received: unfreeze_blocks=4"):
        unfreeze_top(backbone, TINY, 4)
    with pytest.raises(ValueError, match="Received: unfreeze_blocks='last'"):
        unfreeze_top(backbone, TINY, "last")


# --------------------------------------------------------------------------- data


def test_batches_reshuffle_per_epoch_reproducibly(data):
    batches = ImageBatches(data, SIZE, 8, shuffle=True, seed=3)
    first = np.concatenate([batches[i][1] for i in range(len(batches))])
    order = batches.order.copy()
    batches.on_epoch_end()
    assert batches.epoch == 1 and not np.array_equal(batches.order, order)
    assert sorted(batches.order) == list(range(len(data)))
    again = ImageBatches(data, SIZE, 8, shuffle=True, seed=3)
    np.testing.assert_array_equal(np.concatenate([again[i][1] for i in range(len(again))]), first)
    again.set_epoch(1)
    np.testing.assert_array_equal(again.order, batches.order)
    images, labels = ImageBatches(data, SIZE, 8)[0]
    assert images.dtype == np.float32 and images.shape == (8, SIZE, SIZE, 3)
    np.testing.assert_array_equal(labels, data.labels[:8])


def test_batches_skip_unreadable_images(tmp_path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "list.csv").write_text("path,label\nok.png,a\nbroken.png,b\n")
    batches = ImageBatches(from_csv(tmp_path / "list.csv"), SIZE, 2)
    images, labels = batches[0]
    assert images.shape == (1, SIZE, SIZE, 3) and labels.tolist() == [0]
    (reason,) = batches.skipped.values()
    assert reason.startswith("not an image")


# --------------------------------------------------------------------------- training


def test_phase_one_trains_only_the_head(run):
    result, recorder = run
    head = recorder.fits[0]
    assert _changed(head["before"], head["after"]) == {("predictions", "kernel"),
                                                      ("predictions", "bias")}
    assert head["lr"] == pytest.approx(CONFIG.head_learning_rate)


def test_phase_two_trains_exactly_the_unfrozen_block(run):
    result, recorder = run
    finetuning = recorder.fits[1]
    assert result.unfrozen_layers == ("block3_conv",)
    assert _changed(finetuning["before"], finetuning["after"]) == {
        ("block3_conv", "kernel"), ("block3_conv", "bias"),
        ("predictions", "kernel"), ("predictions", "bias"),
    }
    assert finetuning["lr"] == pytest.approx(CONFIG.learning_rate)
    lr = float(keras.ops.convert_to_numpy(result.model.optimizer.learning_rate))
    assert lr == pytest.approx(CONFIG.learning_rate)


def test_batchnorm_statistics_never_change(run):
    result, recorder = run
    initial = recorder.fits[0]["before"]
    final = _snapshot(result.model)
    bn_weights = [key for key in initial if key[0].endswith("_bn")]
    assert len(bn_weights) == 12  # gamma, beta, moving mean and variance of 3 layers
    for key in bn_weights:
        np.testing.assert_array_equal(initial[key], final[key])


def test_history_checkpoint_and_result_row(run):
    result, recorder = run
    history = pd.read_csv(result.history_path)
    assert history["epoch"].tolist() == [0, 1]
    assert history["phase"].tolist() == ["head", "finetune"]
    np.testing.assert_allclose(history["learning_rate"], [1e-3, 1e-5], rtol=1e-6)
    assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(history.columns)
    checkpoints = sorted(p.name for p in (result.model_path.parent / "checkpoints").iterdir())
    assert checkpoints == ["finetune-0002-end.weights.h5", "state.json"]
    row = result.as_row()
    assert row["mode"] == "finetune" and row["backbone"] == "TinyCNN" and row["epochs"] == 2
    assert row["unfreeze_blocks"] == 1 and row["learning_rate"] == 1e-5


def test_saved_model_reloads_and_predicts_identically(run, data):
    result, _ = run
    reloaded = keras.saving.load_model(result.model_path)
    X = data.images[:10].astype("float32")
    expected = result.model.predict(X, verbose=0)
    np.testing.assert_array_equal(reloaded.predict(X, verbose=0), expected)


def test_resume_continues_from_the_checkpoint(run, data, tmp_path):
    result, _ = run
    output_dir = tmp_path / "resumed"
    shutil.copytree(result.model_path.parent, output_dir)
    recorder = Recorder()
    longer = FinetuneConfig(**{**CONFIG.to_dict(), "finetune_epochs": 2})
    resumed = finetune(TINY, data, output_dir=output_dir, weights=None, config=longer,
                       resume=True, callbacks=[recorder])
    assert len(recorder.fits) == 1  # the finished head phase is skipped
    assert recorder.fits[0]["epochs"] == [2]
    assert recorder.fits[0]["lr"] == pytest.approx(CONFIG.learning_rate)
    for key, value in _snapshot(result.model).items():  # loaded, not re-initialised
        np.testing.assert_array_equal(recorder.fits[0]["before"][key], value)
    history = pd.read_csv(resumed.history_path)
    assert history["epoch"].tolist() == [0, 1, 2]
    assert history["phase"].tolist() == ["head", "finetune", "finetune"]
    assert resumed.epochs_run == 3
    with pytest.raises(ConfigError, match=r"different run \(differing: \['learning_rate'\]\)"):
        finetune(TINY, data, output_dir=output_dir, weights=None, resume=True,
                 config=FinetuneConfig(**{**longer.to_dict(), "learning_rate": 1e-4}))


class Interrupt(keras.callbacks.Callback):
    """Kills training at the end of one epoch, after that epoch's checkpoint."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.weights = _snapshot(self.model)
            raise KeyboardInterrupt


def test_interrupted_phase_resumes_at_its_next_epoch(data, tmp_path):
    config = FinetuneConfig(**{**CONFIG.to_dict(), "finetune_epochs": 2})
    interrupt = Interrupt(epoch=1)  # the first finetuning epoch
    with pytest.raises(KeyboardInterrupt):
        finetune(TINY, data, output_dir=tmp_path, weights=None, config=config,
                 callbacks=[interrupt])
    interrupted_seconds = json.loads((tmp_path / "checkpoints" / "state.json").read_text())["seconds"]
    recorder = Recorder()
    started = time.perf_counter()
    resumed = finetune(TINY, data, output_dir=tmp_path, weights=None, config=config,
                       resume=True, callbacks=[recorder])
    assert [fit["epochs"] for fit in recorder.fits] == [[2]]
    assert interrupted_seconds > 0  # the killed call's training time is kept
    assert resumed.fit_seconds > interrupted_seconds + 0.5 * (time.perf_counter() - started)
    for key, value in interrupt.weights.items():
        np.testing.assert_array_equal(recorder.fits[0]["before"][key], value)
    history = pd.read_csv(resumed.history_path)
    assert history["epoch"].tolist() == [0, 1, 2]
    assert resumed.unfrozen_layers == ("block3_conv",)


def test_evaluate_model_returns_scores_as_evaluate_does(run):
    result, _ = run
    test_data = _images(4, seed=1)
    scores = evaluate_model(result, test_data)
    assert isinstance(scores, Scores)
    assert scores.n_test == 12 and scores.n_unreadable == 0
    for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert 0.0 <= getattr(scores, metric) <= 1.0
    predicted = result.model.predict(test_data.images.astype("float32"), verbose=0).argmax(1)
    assert scores.accuracy == pytest.approx(np.mean(predicted == test_data.labels))
    np.testing.assert_array_equal(scores.y_pred, predicted)
    with pytest.raises(InputError, match="predicts 3 classes but 2 class names"):
        evaluate_model(result.model, test_data, class_names=["a", "b"])


def test_train_from_scratch_trains_everything_reproducibly(data, tmp_path):
    config = FinetuneConfig(head_epochs=1, finetune_epochs=0, batch_size=8, augmentation=None,
                            val_fraction=0.0, mixed_precision=True)
    policy = keras.config.dtype_policy().name
    results, recorders = [], []
    for name in ("a", "b"):
        recorders.append(Recorder())
        results.append(train_from_scratch(TINY, data, output_dir=tmp_path / name, config=config,
                                          callbacks=[recorders[-1]]))
    assert keras.config.dtype_policy().name == policy  # restored after mixed precision
    model = results[0].model
    assert model.get_layer("tiny_cnn").get_layer("block1_conv").compute_dtype == "float16"
    assert model.output.dtype == "float32"
    assert results[0].mode == "scratch" and results[0].weights is None
    assert recorders[0].fits[0]["lr"] == pytest.approx(config.head_learning_rate)
    fit = recorders[0].fits[0]
    assert _changed(fit["before"], fit["after"]) == set(fit["before"])  # BN statistics too
    for key, value in _snapshot(results[1].model).items():
        np.testing.assert_array_equal(_snapshot(model)[key], value)
    assert pd.read_csv(results[0].history_path)["phase"].tolist() == ["scratch"]


def test_train_from_scratch_uses_the_configured_batchnorm_momentum(data, tmp_path):
    config = FinetuneConfig(head_epochs=1, finetune_epochs=0, augmentation=None, val_fraction=0.0,
                            scratch_batchnorm_momentum=0.8)
    result = train_from_scratch(TINY, data, output_dir=tmp_path / "run", config=config)
    backbone = result.model.get_layer("tiny_cnn")
    momenta = {layer.momentum for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.8}


# --------------------------------------------------------------------------- block learning rates

_FIRST_STEP = """
import keras, numpy as np
from layerprobe.pipeline.finetune import BlockwiseAdam
low, top = (keras.Variable(np.zeros(3, "float32"), name=name) for name in ("low", "top"))
optimizer = BlockwiseAdam(0.1, lr_scales={low.path: 0.25})
optimizer.apply([keras.ops.ones(3), keras.ops.ones(3)], [low, top])
print(json.dumps([keras.backend.backend()] + [keras.ops.convert_to_numpy(v).tolist() for v in (low, top)]))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_blockwise_adam_scales_the_rate_per_variable_on_every_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", "import json" + _FIRST_STEP], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    used, low, top = json.loads(done.stdout.splitlines()[-1])
    assert used == backend
    # Adam's first step moves each weight by the rate: 0.1 for `top`, 0.25 * 0.1 for `low`.
    np.testing.assert_allclose(top, [-0.1] * 3, rtol=1e-4)
    np.testing.assert_allclose(low, [-0.025] * 3, rtol=1e-4)


def test_blockwise_adam_rejects_scales_of_unknown_variables():
    optimizer = BlockwiseAdam(0.1, lr_scales={"block9_conv/kernel": 0.5})
    with pytest.raises(ValueError, match=r"\['block9_conv/kernel'\].*variable\.path"):
        optimizer.build([keras.Variable(np.zeros(2), name="kernel")])


def test_lower_unfrozen_block_trains_at_the_decayed_rate(data, tmp_path):
    config = FinetuneConfig(head_epochs=0, finetune_epochs=1, unfreeze_blocks=2, learning_rate=1e-3,
                            block_lr_decay=0.01, batch_size=8, val_fraction=0.0, augmentation=None)
    recorder = Recorder()
    result = finetune(TINY, data, output_dir=tmp_path, weights=None, config=config,
                      callbacks=[recorder])
    scales = {"block2_conv/kernel": 0.01, "block2_conv/bias": 0.01}
    assert result.model.optimizer.lr_scales == scales
    fit = recorder.fits[0]
    moved = {key: np.abs(fit["after"][key] - fit["before"][key]).mean() for key in fit["before"]}
    assert moved[("block1_conv", "kernel")] == 0
    assert 0 < moved[("block2_conv", "kernel")] < 0.1 * moved[("block3_conv", "kernel")]
    assert result.as_row()["block_lr_decay"] == 0.01
    assert isinstance(result.model.optimizer, BlockwiseAdam)
    assert not hasattr(keras.saving.load_model(result.model_path), "optimizer")  # saved for inference: no BlockwiseAdam


# --------------------------------------------------------------------------- command line


def _image_folders(root, splits):
    """Writes `{split: ImageDataset}` as root/split/class/NN.png."""
    for split, dataset in splits.items():
        for i, (pixels, label) in enumerate(zip(dataset.images, dataset.labels)):
            folder = root / split / CLASS_NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return root


def _fail(*args, **kwargs):
    raise AssertionError("this result must be reused, not computed")


def test_finetune_command_adds_its_rows_beside_the_classifier_rows(tmp_path, monkeypatch, capsys):
    images = _image_folders(tmp_path / "images", {"train": _images(8, seed=0), "test": _images(4, seed=1)})
    weights = tmp_path / "start.weights.h5"
    load_backbone("VGG16", weights=None, input_size=SIZE, seed=1).model.save_weights(weights)
    classifiers_only = textwrap.dedent(f"""
        [data]
        path = "{images}"
        [features]
        store = "{tmp_path / 'store'}"
        input_size = {SIZE}
        [[backbones]]
        model = "VGG16"
        weights = "{weights}"
        layers = ["top"]
        [classifiers]
        names = ["logreg"]
        cv = 2
        [output]
        dir = "{tmp_path / 'out'}"
    """)
    config = tmp_path / "experiment.toml"
    config.write_text(classifiers_only)
    assert main(["finetune", str(config)]) == 2
    assert "`layerprobe finetune` runs this section, which the config lacks" in capsys.readouterr().err

    assert main(["run", str(config), "--no-progress"]) == 0
    frozen = pd.read_csv(tmp_path / "out" / "results.csv")
    stage = """
        [finetune]
        modes = ["finetune"]
        head_epochs = 1
        finetune_epochs = 1
        batch_size = 8
        val_fraction = 0.25
        block_lr_decay = 0.5
        unfreeze_blocks = 2
    """
    config.write_text(classifiers_only + textwrap.dedent(stage))
    monkeypatch.setattr(FeatureExtractor, "iter_features", _fail)
    monkeypatch.setattr(run_rows, "fit_classifier", _fail)
    capsys.readouterr()
    assert main(["finetune", str(config)]) == 0
    captured = capsys.readouterr()
    output = captured.out
    assert "epoch 1 (head): loss" in output and "epoch 2 (finetune): loss" in output
    assert "epoch 2/2" in captured.err  # a bar within each epoch (--no-progress: none)
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(table["mode"]) == ["frozen", "finetune"]
    pd.testing.assert_frame_equal(table.iloc[:1][frozen.columns], frozen, check_dtype=False)  # kept
    row = table.iloc[1]
    assert row["weights"] == "start.weights.h5" and row["n_test"] == 12
    # Scored on the quarter of the training split that training held out: the advice compares that, not the test.
    assert row["n_val"] == 6 and 0 <= row["val_accuracy"] <= 1
    assert json.loads(row["best_params"]) == {"head_init": "logreg", "unfreeze_blocks": 2,
                                              "learning_rate": 1e-5, "block_lr_decay": 0.5,
                                              "epochs": 2}
    keras.saving.load_model(row["model_path"])
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| VGG16, start.weights.h5 | frozen |" in summary and "| VGG16, start.weights.h5 | finetune |" in summary
    assert "| val |" in summary and "![depth](depth.png)" in summary

    # A second call replaces the rows of its modes: the finished finetune row is reused, once.
    config.write_text(classifiers_only + textwrap.dedent(stage).replace(
        'modes = ["finetune"]', 'modes = ["finetune", "scratch"]'))
    monkeypatch.setattr(finetune_module, "finetune", _fail)
    assert main(["finetune", str(config)]) == 0
    again = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(again["mode"]) == ["frozen", "finetune", "scratch"]
    pd.testing.assert_frame_equal(again.iloc[:2], table)


def test_a_training_folder_is_named_short_and_an_older_one_is_kept(tmp_path):
    from layerprobe.pipeline.run.finetune_rows import _run_folder

    model = "/tmp/newbie/efficientnet_lite0_imagenet.keras"
    assert _run_folder(tmp_path, "finetune", model, "5b4cbb3f9bb3").name == "finetune-efficientnet_lite0_imagenet-5b4cbb3f"
    assert _run_folder(tmp_path, "scratch", "VGG16", "0123456789ab").name == "scratch-VGG16-01234567"
    older = tmp_path / "finetune-_tmp_newbie_efficientnet_lite0_imagenet.keras-5b4cbb3f9bb3"
    older.mkdir()
    assert _run_folder(tmp_path, "finetune", model, "5b4cbb3f9bb3") == older  # its checkpoints and row are reused
