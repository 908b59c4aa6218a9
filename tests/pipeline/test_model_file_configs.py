"""Saved Keras models in configs and on the command line: paths, globs, weights, preprocessing, a run."""

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from layerprobe.pipeline.cli import main
from layerprobe.pipeline.config import ConfigError, config_from_dict

REPO = Path(__file__).resolve().parents[2]


def _cnn(path, *, rescale=True):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs) if rescale else inputs
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    keras.Model(inputs, x, name="tiny").save(path)
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for k in range(6):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) // (1 if label == "a" else 2)
                Image.fromarray(pixels).save(folder / f"{k}.png")
    return tmp_path / "images"


def _raw(images, *backbones):
    return {"data": {"path": str(images), "test_split": "test"}, "backbones": list(backbones)}


def test_a_model_file_entry_resolves_its_path_and_defaults_to_its_own_weights(tmp_path, images):
    _cnn(tmp_path / "models" / "run-1" / "model.keras")
    config = config_from_dict(
        _raw(images, {"model": "models/run-*/model.keras", "preprocessing": "none", "layers": ["stages"]}), tmp_path
    )
    backbone = config.backbones[0]
    assert backbone.model == str((tmp_path / "models" / "run-1" / "model.keras").resolve())
    assert backbone.weights == "saved" and backbone.weights_label == "run-1/model.keras"


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"model": "missing/*.keras"}, r"must match exactly one model file, it matches no file"),
        ({"model": "missing.keras"}, r"missing\.keras does not exist"),
        ({"model": "m.keras", "weights": "imagenet"}, r"a model file carries its own weights"),
        ({"model": "m.keras", "preprocessing": "cafe"}, r"expected one of \['none', 'caffe', 'tf', 'torch'\].*'caffe'"),
        ({"model": "VGG16", "preprocessing": "tf"}, r"is chosen for model files"),
        ({"model": "m.keras", "model_kwargs": {"alpha": 1}}, r"model_kwargs: are constructor arguments"),
    ],
)
def test_bad_model_file_entries_are_config_problems(tmp_path, images, entry, problem):
    _cnn(tmp_path / "m.keras")
    with pytest.raises(ConfigError, match=problem):
        config_from_dict(_raw(images, entry), tmp_path)


def test_a_model_file_is_finetuned_in_a_run_its_top_stage_unfrozen(tmp_path, images):
    from layerprobe.pipeline.run import run_experiment

    path = _cnn(tmp_path / "m.keras")  # stages: conv1 (16x16), conv2 (8x8)
    raw = {**_raw(images, {"model": "m.keras", "layers": ["stages"]}),
           "features": {"store": str(tmp_path / "store"), "input_size": 16},
           "classifiers": {"names": ["logreg"], "cv": 2}, "output": {"dir": str(tmp_path / "out")},
           "finetune": {"modes": ["finetune", "scratch"], "head_epochs": 1, "finetune_epochs": 1,
                        "unfreeze_blocks": 1, "learning_rate": 0.1, "val_fraction": 0.5, "batch_size": 4,
                        "augmentation": {}}}
    result = run_experiment(config_from_dict(raw, tmp_path), log=lambda line: None, progress=False)
    table = result.results.set_index("mode")
    # logreg and the ridge curve (issue 31) on 2 stages, then the trained rows
    assert list(result.results["mode"]) == ["frozen"] * 4 + ["finetune", "scratch"]
    assert table.loc["finetune", "weights"] == "m.keras" and table.loc["scratch", "weights"] == "none"
    assert table.loc[["finetune", "scratch"], "n_val"].tolist() == [6, 6]
    original = keras.saving.load_model(path)
    tuned = keras.saving.load_model(table.loc["finetune", "model_path"]).get_layer("tiny")
    # unfreeze_blocks = 1: the top stage (conv2) trained, the stage below (conv1) kept its saved weights.
    np.testing.assert_array_equal(tuned.get_layer("conv1").get_weights()[0], original.get_layer("conv1").get_weights()[0])
    assert not np.allclose(tuned.get_layer("conv2").get_weights()[0], original.get_layer("conv2").get_weights()[0])


def test_benchmark_configs_with_model_files_parse():
    from layerprobe.pipeline.config import load_config

    for name in ("hymenoptera_lite0_stages", "cifar10_small_lite0_stages"):
        path = REPO / "benchmarks" / "configs" / f"{name}.toml"
        if not (REPO.parent / "shared" / "weights").is_dir():
            pytest.skip("../shared is absent")
        config = load_config(path)
        assert config.backbones[0].model.endswith("efficientnet_lite0_imagenet.keras")
        assert config.backbones[0].preprocessing == "none"


def test_cli_layers_and_extract_and_run_with_a_model_file(tmp_path, images, capsys):
    path = _cnn(tmp_path / "tiny.keras", rescale=False)
    assert main(["layers", str(path), "--input-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "preprocessing unknown" in out and "stage1" in out and "conv2" in out
    assert main(["layers", str(path), "--input-size", "16", "--preprocessing", "tf"]) == 0
    assert "imagenet_utils.preprocess_input(mode='tf')" in capsys.readouterr().out

    store = tmp_path / "store"
    argv = ["extract", "--model", str(path), "--layers", "stages", "--data", str(images), "--store", str(store),
            "--input-size", "16", "--no-progress"]
    assert main(argv) == 2
    assert "Cannot tell which preprocessing" in capsys.readouterr().err
    assert main([*argv, "--preprocessing", "none"]) == 0
    assert "2 computed" in capsys.readouterr().out

    config = tmp_path / "run.toml"
    config.write_text(
        '[data]\npath = "images"\ntest_split = "test"\n[features]\nstore = "store"\ninput_size = 16\n'
        '[[backbones]]\nmodel = "tiny.keras"\npreprocessing = "none"\nlayers = ["stages"]\n'
        '[classifiers]\nnames = ["logreg"]\ncv = 2\n[output]\ndir = "out"\n',
        encoding="utf-8",
    )
    assert main(["run", str(config), "--no-progress"]) == 0
    results = (tmp_path / "out" / "results.csv").read_text(encoding="utf-8")
    assert "tiny@" in results and "tiny.keras" in results
    capsys.readouterr()
    assert main(["run", str(config), "--no-progress"]) == 0  # a rerun: features cached, rows reused
    # logreg and the ridge curve the advice reads (issue 31), on each of the 2 stages
    assert "0 fitted, 4 reused; 0 images through a backbone" in capsys.readouterr().out
