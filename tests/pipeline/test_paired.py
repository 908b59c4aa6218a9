"""Finetune against frozen on equal terms: the frozen choice refitted without a trained row's held-out images."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone as sklearn_clone

import layerprobe.pipeline.run.paired as paired_module
from layerprobe.features.store import FeatureStore
from layerprobe.pipeline.config import config_from_dict
from layerprobe.pipeline.persistence import write_predictions
from layerprobe.pipeline.run import run_experiment
from layerprobe.pipeline.run.paired import paired_scores, val_predictions_path

CLASSES = ("blue", "green", "red")


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory, write_colour_images):
    root = tmp_path_factory.mktemp("paired")
    images = write_colour_images(root / "images", {"train": {name: 8 for name in CLASSES},
                                                  "test": {name: 2 for name in CLASSES}})
    config = config_from_dict({
        "data": {"path": str(images), "train_split": "train", "test_split": "test"},
        "features": {"store": str(root / "store"), "input_size": 32, "batch_size": 16},
        "backbones": [{"model": "VGG16", "weights": "none", "layers": ["block1_pool"]}],
        "classifiers": {"names": ["logreg"], "cv": 2, "grids": {"logreg": {"C": [1.0]}}},
        "output": {"dir": str(root / "out")},
    }, "/")
    return config, run_experiment(config, log=lambda line: None, progress=False).results, root


def _with_trained_row(frame, root, held, predicted):
    """`frame` plus a finetune row whose held-out predictions are `predicted` on the training images `held`."""
    model = root / "finetune" / "model.keras"
    model.parent.mkdir(exist_ok=True)
    labels = [CLASSES.index(str(sample).split("/")[-2]) for sample in held]
    write_predictions(val_predictions_path(model), held, labels, [CLASSES.index(name) for name in predicted], CLASSES)
    trained = {"mode": "finetune", "backbone": "VGG16", "weights": "w", "layer": "(end to end)",
               "val_accuracy": 0.5, "n_val": len(held), "model_path": str(model)}
    return pd.concat([frame, pd.DataFrame([trained])], ignore_index=True)


def test_the_frozen_choice_is_refitted_without_the_held_out_images_and_scored_on_them(frozen_run, monkeypatch):
    config, frame, root = frozen_run
    frozen = frame.iloc[0]
    train = FeatureStore(config.features.store).load(frozen["store_entry"], split="train")
    held = list(np.asarray(train.sample_ids)[::4])  # 6 of the 24 training images, 2 per class
    truth = [str(sample).split("/")[-2] for sample in held]
    predicted = ["red" if name == "blue" else name for name in truth]  # the trained row misses both blue ones
    table = _with_trained_row(frame, root, held, predicted)
    fitted_on = []

    def recording_clone(estimator):
        copy = sklearn_clone(estimator)
        fit = copy.fit

        def fit_recording(X, y):
            fitted_on.append(len(X))
            return fit(X, y)

        copy.fit = fit_recording
        return copy

    monkeypatch.setattr(paired_module, "clone", recording_clone)
    scores = paired_scores(table, frozen, FeatureStore(config.features.store), "train", CLASSES)
    pair = scores[len(table) - 1]
    assert fitted_on == [24 - 6]  # refitted on the training split without the held-out images
    assert (pair.n, pair.trained_correct, pair.frozen_correct) == (6, 4, 6)  # colour classes: the probe is right
    assert (pair.trained_only, pair.frozen_only, pair.frozen_row) == (0, 2, frozen.name)
    assert pair.missing_classes == () and not pair.beats()


def test_a_held_out_part_without_a_class_is_recorded_and_not_scored(frozen_run):
    config, frame, root = frozen_run
    train = FeatureStore(config.features.store).load(frame.iloc[0]["store_entry"], split="train")
    held = [sample for sample in np.asarray(train.sample_ids) if "/blue/" not in str(sample)][:2]
    table = _with_trained_row(frame, root, held, [str(sample).split("/")[-2] for sample in held])
    pair = paired_scores(table, frame.iloc[0], FeatureStore(config.features.store), "train", CLASSES)[len(table) - 1]
    assert "blue" in pair.missing_classes and pair.n == 0


@pytest.mark.slow  # trains VGG16 end to end
def test_a_run_whose_validation_part_lacks_a_class_warns_and_lets_the_finetune_row_decide_nothing(
        tmp_path, write_colour_images):
    """Issue 32.5: `val_fraction = 0.1` on 12 + 2 training images holds out 2 images of the larger class."""
    from layerprobe.features.backbone import load_backbone
    from layerprobe.pipeline.advice import advice_text

    images = write_colour_images(tmp_path / "images", {"train": {"ants": 12, "bees": 2},
                                                      "test": {"ants": 2, "bees": 2}})
    weights = tmp_path / "start.weights.h5"
    load_backbone("VGG16", weights=None, input_size=32, seed=1).model.save_weights(weights)
    config = config_from_dict({
        "data": {"path": str(images), "train_split": "train", "test_split": "test"},
        "features": {"store": str(tmp_path / "store"), "input_size": 32, "batch_size": 16},
        "backbones": [{"model": "VGG16", "weights": str(weights), "layers": ["block1_pool", "top"]}],
        "classifiers": {"names": ["logreg"], "cv": 2, "grids": {"logreg": {"C": [1.0]}}},
        "finetune": {"modes": ["finetune"], "head_epochs": 1, "finetune_epochs": 1, "val_fraction": 0.1,
                     "augmentation": {}, "batch_size": 8},
        "output": {"dir": str(tmp_path / "out")},
    }, "/")
    lines = []
    result = run_experiment(config, log=lines.append, progress=False)
    finetune_row = result.results.index[result.results["mode"] == "finetune"][0]
    held = pd.read_csv(val_predictions_path(result.results.loc[finetune_row, "model_path"]))
    assert list(held["true_label"]) == ["ants", "ants"]  # what the finetune row's validation score was measured on
    assert result.advice.not_deciding == {finetune_row: ("bees",)} and result.advice.rule == "size"
    assert "has no image of bees" in advice_text(result.advice).text
    assert any("has no image of bees" in line for line in lines)  # said in the log too
