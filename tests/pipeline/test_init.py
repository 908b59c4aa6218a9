"""`layerprobe init DATA`: a short config fitted to the data's classes and splits, that runs as written."""

from __future__ import annotations

import tomllib

import keras
import pandas as pd
import pytest

from layerprobe.pipeline.cli import main
from layerprobe.pipeline.config import load_config

SIZE = 32
LAYOUTS = {
    "train-val": ({"train": {"ants": 6, "bees": 6}, "val": {"ants": 3, "bees": 3}}, "val", None),
    "train-test": ({"train": {"ants": 6, "bees": 6}, "test": {"ants": 3, "bees": 3}}, "test", None),
    "one split": ({"": {"ants": 8, "bees": 8}}, "test", 0.25),
}


def _tiny_model_file(path):
    """A functional CNN that rescales inside (so its preprocessing is "none"), saved as `path`."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv")(x)
    x = keras.layers.MaxPooling2D(name="block1_pool")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block2_conv")(x)
    x = keras.layers.MaxPooling2D(name="block2_pool")(x)
    keras.Model(inputs, x).save(path)
    return path


@pytest.mark.parametrize("layout", LAYOUTS)
def test_init_finds_the_classes_and_splits_and_writes_a_short_config_that_loads(
    layout, tmp_path, monkeypatch, capsys, write_colour_images
):
    counts, test_split, test_size = LAYOUTS[layout]
    write_colour_images(tmp_path / "images", counts, size=SIZE)
    monkeypatch.chdir(tmp_path)
    assert main(["init", "images"]) == 0
    out = capsys.readouterr().out
    assert "2 classes (ants, bees)" in out and "layerprobe run layerprobe.toml" in out
    text = (tmp_path / "layerprobe.toml").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 40
    raw = tomllib.loads(text)
    assert raw["data"] == {"path": "images", "train_split": "train", "test_split": test_split,
                           **({"test_size": test_size} if test_size else {})}
    assert raw["backbones"] == [{"model": "MobileNetV2", "weights": "imagenet", "layers": ["stages"]}]
    config = load_config(tmp_path / "layerprobe.toml")
    assert config.data.path == (tmp_path / "images").resolve() and config.data.test_split == test_split


def test_init_from_a_csv_with_a_split_column(tmp_path, monkeypatch, capsys, write_colour_images):
    images = write_colour_images(tmp_path / "images", {"": {"ants": 4, "bees": 4}}, size=SIZE)
    rows = [f"{path.relative_to(tmp_path).as_posix()},{path.parent.name},{'val' if i % 4 == 0 else 'train'}"
            for i, path in enumerate(sorted(images.rglob("*.png")))]
    (tmp_path / "labels.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["init", "labels.csv"]) == 0
    assert tomllib.loads((tmp_path / "layerprobe.toml").read_text())["data"] == {
        "path": "labels.csv", "train_split": "train", "test_split": "val"}


def test_the_config_init_writes_for_a_model_file_runs_as_written(tmp_path, monkeypatch, write_colour_images):
    write_colour_images(tmp_path / "images", LAYOUTS["train-val"][0], size=SIZE)
    _tiny_model_file(tmp_path / "mine.keras")
    monkeypatch.chdir(tmp_path)
    assert main(["init", "images", "--model", "mine.keras"]) == 0
    raw = tomllib.loads((tmp_path / "layerprobe.toml").read_text())
    assert raw["backbones"][0]["model"] == "mine.keras" and raw["backbones"][0]["weights"] == "saved"
    assert main(["run", "layerprobe.toml", "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "layerprobe-out" / "results.csv")
    assert len(table) >= 2 and (table["n_test"] == 6).all()  # the val split, scored


def test_init_full_writes_the_annotated_template_with_the_data_found(tmp_path, monkeypatch, write_colour_images):
    write_colour_images(tmp_path / "images", LAYOUTS["train-val"][0], size=SIZE)
    monkeypatch.chdir(tmp_path)
    assert main(["init", "images", "--full", "--config", "project/full.toml"]) == 0
    text = (tmp_path / "project" / "full.toml").read_text()
    assert len(text.splitlines()) > 100 and "# [finetune]" in text
    config = load_config(tmp_path / "project" / "full.toml")
    assert config.data.path == (tmp_path / "images").resolve() and config.data.test_split == "val"


def test_init_says_what_is_missing(tmp_path, monkeypatch, capsys, write_colour_images):
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 2
    assert "needs your images" in capsys.readouterr().err
    assert main(["init", "nowhere"]) == 2
    assert "does not exist" in capsys.readouterr().err
    write_colour_images(tmp_path / "images", {"val": {"a": 2, "b": 2}, "test": {"a": 2, "b": 2}}, size=SIZE)
    assert main(["init", "images"]) == 2
    assert "none named 'train'" in capsys.readouterr().err
    (tmp_path / "layerprobe.toml").write_text("# mine\n")
    assert main(["init", "--full"]) == 2
    assert "exists already" in capsys.readouterr().err and (tmp_path / "layerprobe.toml").read_text() == "# mine\n"
    assert main(["init", "--full", "--force"]) == 0 and "[classifiers]" in (tmp_path / "layerprobe.toml").read_text()

