"""pretrain_source: a source network trained once and reused, keyed by settings and data."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from PIL import Image

from layerprobe.features.registry import BACKBONES, BackboneSpec, register_backbone
from layerprobe.features.inputs import from_directory
from layerprobe.pipeline.default_experiment import pretrain_source
from layerprobe.pipeline.finetune import FinetuneConfig

SIZE = 16
OPTIONS = FinetuneConfig(head_epochs=1, finetune_epochs=0, batch_size=8, augmentation=None, val_fraction=0.0,
                         early_stopping_patience=None, seed=0)


def _tiny_cnn(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, padding="same", name="block1_conv")(inputs)
    x = keras.layers.MaxPooling2D(name="block1_pool")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


TINY = BackboneSpec(name="TinyPretrainCNN", constructor=_tiny_cnn, preprocess_module=None, preprocess_mode="tf",
                    default_input_size=SIZE, min_input_size=SIZE, stage_pattern=r"block\d+_pool$")


@pytest.fixture(autouse=True)
def tiny_net():
    register_backbone(TINY, overwrite=True)
    yield
    BACKBONES.pop(TINY.name, None)


@pytest.fixture
def source(tmp_path, write_colour_images):
    """A folder dataset of red and green PNGs with train and test splits."""
    return write_colour_images(tmp_path / "data", {split: {"red": 6, "green": 6} for split in ("train", "test")},
                               size=SIZE)


def _pretrain(source_dir, out, **kwargs):
    messages = []
    weights, facts = pretrain_source(TINY.name, from_directory(source_dir), out, name="A", options=OPTIONS,
                                     input_size=SIZE, log=messages.append, **kwargs)
    return weights, facts, messages


def _touch_every_file(folder):
    """New mtimes, same bytes: what a copy that does not keep mtimes does."""
    for path in folder.rglob("*.png"):
        os.utime(path, (1_000_000_000, 1_000_000_000))


def test_second_call_reuses_the_weights_and_facts(source, tmp_path):
    weights, facts, messages = _pretrain(source, tmp_path / "out")
    assert weights.is_file() and 0.0 <= facts["accuracy"] <= 1.0 and facts["n_test"] == 12
    assert "training" in messages[0]
    again, facts_again, messages = _pretrain(source, tmp_path / "out")
    assert again == weights and facts_again == facts
    assert "reused" in messages[0]


def test_content_digest_survives_a_copy_that_loses_mtimes(source, tmp_path):
    weights, _, _ = _pretrain(source, tmp_path / "out", dataset_digest="content")
    _touch_every_file(source)
    again, _, messages = _pretrain(source, tmp_path / "out", dataset_digest="content")
    assert again == weights and "reused" in messages[0]


def test_stat_digest_trains_again_when_mtimes_change(source, tmp_path):
    weights, _, _ = _pretrain(source, tmp_path / "out")
    _touch_every_file(source)
    again, _, messages = _pretrain(source, tmp_path / "out")
    assert again != weights and "training" in messages[0]


def test_changed_pixels_train_again_under_the_content_digest(source, tmp_path):
    weights, _, _ = _pretrain(source, tmp_path / "out", dataset_digest="content")
    first = next((source / "train" / "red").glob("*.png"))
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(first)
    again, _, messages = _pretrain(source, tmp_path / "out", dataset_digest="content")
    assert again != weights and "training" in messages[0]


def test_a_source_below_the_minimum_accuracy_is_refused(source, tmp_path):
    with pytest.raises(RuntimeError, match="below 1.01; its features would not mean anything"):
        _pretrain(source, tmp_path / "out", min_accuracy=1.01)


def test_training_stops_at_the_first_epoch_that_reaches_the_target_accuracy(source, tmp_path):
    options = FinetuneConfig(head_epochs=3, finetune_epochs=0, batch_size=8, augmentation=None, val_fraction=0.0,
                             early_stopping_patience=None, seed=0)
    messages = []
    weights, facts = pretrain_source(TINY.name, from_directory(source), tmp_path / "out", name="A", options=options,
                                     input_size=SIZE, target_accuracy=0.0, log=messages.append)
    assert "3 epochs at most, until 0.0 held-out accuracy" in messages[0] and "after 1 epochs" in messages[-1]
    assert facts["settings"]["target_accuracy"] == 0.0
    untargeted, _ = pretrain_source(TINY.name, from_directory(source), tmp_path / "out", name="A", options=options,
                                    input_size=SIZE, log=messages.append)
    assert untargeted != weights and "after 3 epochs" in messages[-1]  # its own key: no target, every epoch


def test_every_epoch_logs_a_line_and_shows_a_bar_within_it_unless_progress_is_off(source, tmp_path, capsys):
    options = FinetuneConfig(head_epochs=2, finetune_epochs=0, batch_size=4, augmentation=None, val_fraction=0.0,
                             early_stopping_patience=None, seed=0)
    for progress in (True, False):
        messages = []
        pretrain_source(TINY.name, from_directory(source), tmp_path / f"out-{progress}", name="A", options=options,
                        input_size=SIZE, target_accuracy=1.01, log=messages.append, progress=progress)
        epochs = [line for line in messages if line.lstrip().startswith("epoch")]
        assert len(epochs) == 2 and all("val_accuracy" in line for line in epochs)  # the held-out accuracy
        bars = capsys.readouterr().err
        assert ("epoch 2/2" in bars and "/3 [" in bars) if progress else "epoch" not in bars  # 12 images, batch 4
