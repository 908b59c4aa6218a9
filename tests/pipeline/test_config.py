import json
import subprocess
import sys
from pathlib import Path

import pytest

from layerprobe.pipeline.config import (
    ConfigError,
    ExperimentConfig,
    FinetuneStageConfig,
    config_from_dict,
    load_config,
)
from layerprobe.pipeline.default_experiment import default_config
from layerprobe.pipeline.finetune.settings import FinetuneConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def images(tmp_path):
    (tmp_path / "images" / "cat").mkdir(parents=True)
    return tmp_path / "images"


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _problems(raw, base_dir):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, base_dir)
    assert isinstance(info.value, ValueError)
    return info.value.problems, str(info.value)


def test_toml_config_resolves_paths_against_its_folder(tmp_path, images):
    weights = _write(tmp_path / "w" / "net.weights.h5", "not really weights")
    path = _write(
        tmp_path / "configs" / "run.toml",
        """
        [data]
        path = "../images"
        test_split = "val"

        [features]
        store = "../store"
        pooling = ["avg", "max"]
        input_size = 64

        [[backbones]]
        model = "vgg16"
        weights = "../w/net.weights.h5"
        layers = ["stages", 0.5]

        [[backbones]]
        model = "MobileNetV2"
        weights = "none"
        model_kwargs = { alpha = 0.35 }

        [classifiers]
        names = "logreg"
        cv = 3
        [classifiers.grids]
        logreg = { C = [0.1, 1.0] }

        [output]
        dir = "out"
        """,
    )
    config = load_config(path)
    assert isinstance(config, ExperimentConfig)
    assert config.data.path == images.resolve()
    assert (config.data.train_split, config.data.test_split) == ("train", "val")
    assert config.features.store == (tmp_path / "store").resolve()
    assert config.features.pooling == ("avg", "max")
    assert config.output.dir == (tmp_path / "configs" / "out").resolve()
    first, second = config.backbones
    assert first.model == "VGG16"  # canonical registry name
    assert first.weights == str(weights.resolve())
    assert first.layers == ("stages", 0.5)
    assert first.weights_label == "net.weights.h5"
    assert second.weights is None and second.weights_label == "none"
    assert dict(second.model_kwargs) == {"alpha": 0.35}
    assert config.classifiers.names == ("logreg",)
    assert config.classifiers.param_grid("logreg") == {"C": [0.1, 1.0]}
    assert config.classifiers.param_grid("linear_svm") == {"C": [0.01, 0.1, 1.0, 10.0]}  # registry default
    assert config.finetune is None


def test_defaults_fill_everything_but_data_and_backbones(tmp_path, images):
    config = config_from_dict({"data": {"path": "images"}, "backbones": [{"model": "VGG16"}]}, tmp_path)
    assert config.features.store == (tmp_path / "layerprobe-store").resolve()
    assert config.output.dir == (tmp_path / "layerprobe-out").resolve()
    assert config.backbones[0].weights == "imagenet"
    assert config.backbones[0].layers == ("stages",)
    assert config.classifiers.names == ("logreg", "linear_svm")


def test_unknown_key_is_named_with_its_section_and_the_closest_valid_key(tmp_path, images):
    problems, message = _problems(
        {
            "data": {"path": "images"},
            "backbones": [{"model": "VGG16", "layer": ["stages"]}],
            "classifiers": {"nmes": ["logreg"]},
        },
        tmp_path,
    )
    assert len(problems) == 2
    assert "[classifiers] nmes: unknown key (did you mean 'names'?)" in message
    assert "[[backbones]] #1 layer: unknown key (did you mean 'layers'?)" in message


def test_unknown_section_suggests_the_closest(tmp_path, images):
    _, message = _problems(
        {"data": {"path": "images"}, "backbones": [{"model": "VGG16"}], "classifier": {"names": ["logreg"]}}, tmp_path
    )
    assert "[classifier]: unknown section (did you mean 'classifiers'?)" in message


# A config with every section (grids of the classifier, a preprocessing step and PCA; a weights
# file), and one whose backbone is a model file.
_EVERY_SECTION = """
[data]
path = "images"
digest = "content"
[features]
store = "store"
pooling = ["avg", "max"]
dtype = "float16"
input_size = 64
[[backbones]]
model = "VGG16"
weights = "net.weights.h5"
layers = ["stages", 0.5]
[classifiers]
names = ["logreg", "ridge"]
preprocessing = ["standardize", "l2"]
pca_components = 8
[classifiers.grids]
logreg = { C = [0.1, 1.0], pca__n_components = [4, 8], l2__norm = ["l2"] }
[output]
dir = "out"
[finetune]
modes = ["finetune", "scratch"]
head_epochs = 2
[cluster]
workers = 2
"""
_MODEL_FILE = """
[data]
path = "images"
[[backbones]]
model = "model.keras"
preprocessing = "caffe"
"""
_LOAD_ONLY = """
import json, sys
from layerprobe.pipeline.config import example_config, load_config
load_config(sys.argv[1]).classifiers.param_grid("ridge")
load_config(sys.argv[2])
example_config()
heavy = ("sklearn", "h5py", "keras", "tensorflow", "jax", "torch", "dask", "distributed")
print(json.dumps(sorted(name for name in heavy if name in sys.modules)))
"""


def test_loading_a_config_imports_no_heavy_library(tmp_path, images):
    """Reading and checking a config (every section) and writing the example imports neither
    scikit-learn, h5py, Keras, a Keras backend nor dask: the schema needs only their names."""
    _write(tmp_path / "net.weights.h5", "placeholder")
    _write(tmp_path / "model.keras", "placeholder")
    every = _write(tmp_path / "every.toml", _EVERY_SECTION)
    model_file = _write(tmp_path / "model_file.toml", _MODEL_FILE)
    done = subprocess.run([sys.executable, "-c", _LOAD_ONLY, str(every), str(model_file)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_unknown_classifier_backbone_and_grid_parameter_are_named(tmp_path, images):
    problems, message = _problems(
        {
            "data": {"path": "images"},
            "backbones": [{"model": "ResNet5"}],
            "classifiers": {"names": ["logreg", "rbf_svn"], "grids": {"logreg": {"c": [1.0]}, "knn": {"k": [1]}}},
        },
        tmp_path,
    )
    assert len(problems) == 4
    assert "[[backbones]] #1 model: unknown backbone (did you mean 'ResNet50'?)" in message
    assert "[classifiers] names: unknown name(s) ['rbf_svn'] (did you mean 'rbf_svm'?)" in message
    assert "[classifiers.grids] logreg: Unknown param_grid key(s) ['c'] for LogisticRegression. Did you mean 'C'?" \
        in message
    assert "[classifiers.grids] knn: unknown classifier" in message


def test_a_grid_sets_the_searchable_parameters_of_the_steps_it_has(tmp_path, images):
    base = {"data": {"path": "images"}, "backbones": [{"model": "VGG16"}]}
    grids = {"logreg": {"C": [1.0], "standardize__with_mean": [False]}, "rbf_svm": {"gamma": [0.1]}}
    config = config_from_dict({**base, "classifiers": {"grids": grids}}, tmp_path)
    assert config.classifiers.param_grid("logreg") == {"C": [1.0], "standardize__with_mean": [False]}
    _, message = _problems({**base, "classifiers": {"grids": {"logreg": {"pca__n_components": [2], "verbose": [1]}}}},
                           tmp_path)
    assert "[classifiers.grids] logreg: Unknown param_grid key(s) ['pca__n_components', 'verbose'] " \
           "for LogisticRegression" in message  # no PCA step without pca_components; verbose is no hyperparameter
    config = config_from_dict({**base, "classifiers": {"pca_components": 4, "grids": {"sgd": {"pca__n_components": [2]}}}},
                              tmp_path)
    assert config.classifiers.param_grid("sgd") == {"pca__n_components": [2]}


def test_missing_data_path_and_weights_file_are_reported_together(tmp_path):
    problems, message = _problems(
        {"data": {"path": "nowhere"}, "backbones": [{"model": "VGG16", "weights": "missing.weights.h5"}]}, tmp_path
    )
    assert len(problems) == 2
    assert "[data] path: " in message and "nowhere does not exist" in message
    assert "[[backbones]] #1 weights: " in message and "missing.weights.h5 does not exist" in message
    assert "Received: 'nowhere'" in message


def test_wrong_types_and_ranges_are_all_reported(tmp_path, images):
    problems, message = _problems(
        {
            "data": {"path": "images", "test_size": 1.5, "test_split": "train"},
            "features": {"batch_size": 0, "pooling": "median", "dtype": "float64"},
            "backbones": [{"model": "VGG16", "layers": [2.0], "model_kwargs": "alpha=1"}],
            "classifiers": {"cv": "5", "n_jobs": 0, "pca_components": 1.5},
        },
        tmp_path,
    )
    for expected in (
        "[data] test_size: expected a number between 0 and 1",
        "[data] test_split: must differ from train_split",
        "[features] batch_size: expected \"auto\" or an integer >= 1. Received: 0",
        "[features] pooling: unknown name(s) ['median']",
        "[features] dtype: expected one of ['float32', 'float16']",
        "[[backbones]] #1 layers: depth 2.0 is outside [0, 1]",
        "[[backbones]] #1 model_kwargs: expected a table",
        "[classifiers] cv: expected an integer >= 2. Received: '5'",
        "[classifiers] n_jobs: expected a positive integer, or -1",
        "[classifiers] pca_components: expected an integer >= 1",
    ):
        assert expected in message
    assert len(problems) == 10


def test_input_size_below_a_backbone_minimum_asks_for_the_largest_minimum(tmp_path, images):
    backbones = [{"model": "VGG16"}, {"model": "InceptionV3"}, {"model": "Xception"}]
    raw = {"data": {"path": "images"}, "features": {"input_size": 64}, "backbones": backbones}
    problems, _ = _problems(raw, tmp_path)
    assert problems == [
        "[features] input_size: below the smallest input some backbones accept (InceptionV3 75, Xception 71 "
        "pixels); set input_size = 75 or more (images are resized to it), or leave it out for each backbone's "
        "default. Received: 64"
    ]
    config = config_from_dict({"data": {"path": "images"}, "backbones": backbones}, tmp_path)
    assert config.features.input_size is None  # each backbone's default


def test_missing_required_parts_are_reported(tmp_path):
    problems, message = _problems({"features": {}}, tmp_path)
    assert "[data]: this section is required" in message
    assert "[[backbones]]: expected at least one [[backbones]] table" in message


def test_unreadable_files_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path / "bad.toml", "[data\npath = 1"))


def test_finetune_section_is_checked_by_finetune_config(tmp_path, images):
    base = {"data": {"path": "images"}, "backbones": [{"model": "VGG16"}]}
    config = config_from_dict({**base, "finetune": {"modes": ["scratch"], "head_epochs": 2}}, tmp_path)
    assert config.finetune == FinetuneStageConfig(modes=("scratch",), training=FinetuneConfig(head_epochs=2))
    _, message = _problems({**base, "finetune": {"head_epoch": 2, "modes": ["finetune"]}}, tmp_path)
    assert "[finetune]" in message and "'head_epoch'" in message and "head_epochs" in message
    _, message = _problems({**base, "finetune": {"modes": ["finetuning"]}}, tmp_path)
    assert "[finetune] modes: unknown name(s) ['finetuning'] (did you mean 'finetune'?)" in message


def test_with_paths_overrides_output_and_store(tmp_path, images):
    config = config_from_dict({"data": {"path": "images"}, "backbones": [{"model": "VGG16"}]}, tmp_path)
    moved = config.with_paths(output_dir=tmp_path / "o", store=tmp_path / "s")
    assert (moved.output.dir, moved.features.store) == (tmp_path / "o", tmp_path / "s")
    assert moved.backbones == config.backbones


def test_default_experiment_config_builds(tmp_path):
    weights = _write(tmp_path / "source.weights.h5", "placeholder")
    (tmp_path / "out" / "data" / "digits-B").mkdir(parents=True)
    config = default_config(tmp_path / "out", tmp_path / "store", weights)
    source, random = config.backbones
    assert source.model == random.model == "MobileNetV2"
    assert source.weights == str(weights.resolve()) and random.weights is None
    assert dict(source.model_kwargs) == {"alpha": 0.35}
    assert config.classifiers.names == ("logreg", "linear_svm")
    assert config.features.input_size == 32


def test_example_config_loads(shared_dir):
    config = load_config(REPO / "benchmarks" / "configs" / "hymenoptera_vgg16.toml")
    assert config.data.path == (shared_dir / "datasets" / "hymenoptera").resolve()
    assert Path(config.backbones[0].weights).is_file()


def test_gpu_settings_of_the_features_section(tmp_path):
    """batch_size "auto", mixed_precision and decoder reach the extractor's settings; wrong values are refused."""
    from layerprobe.pipeline.run.extractions import extractor_settings

    raw = {
        "data": {"path": str(tmp_path)},
        "features": {"store": "store", "batch_size": "auto", "mixed_precision": "bfloat16", "decoder": "pillow"},
        "backbones": [{"model": "VGG16", "weights": "none"}],
    }
    (tmp_path / "a").mkdir()
    config = config_from_dict(raw, tmp_path)
    settings = extractor_settings(config, config.backbones[0], "avg")
    assert (settings["batch_size"], settings["mixed_precision"], settings["decoder"]) == ("auto", "bfloat16", "pillow")
    raw["features"].update(batch_size="many", mixed_precision="float8", decoder="nvjpeg")
    with pytest.raises(ConfigError) as error:
        config_from_dict(raw, tmp_path)
    for expected in ('batch_size: expected "auto" or an integer >= 1', "mixed_precision: expected true, false or one of",
                     "decoder: expected one of"):
        assert expected in str(error.value)


def test_pixel_cache_and_probe_device_settings(tmp_path):
    """[features] pixel_cache reaches the extractor's settings (only when on); [classifiers] device is checked."""
    from layerprobe.pipeline.run.extractions import extractor_settings

    (tmp_path / "a").mkdir()
    raw = {"data": {"path": str(tmp_path)}, "features": {"store": "store"}, "backbones": [{"model": "VGG16"}]}
    config = config_from_dict(raw, tmp_path)
    assert "pixel_cache" not in extractor_settings(config, config.backbones[0], "avg")  # old plans keep their signature
    assert config.classifiers.device == "cpu"
    raw["features"]["pixel_cache"] = True
    raw["classifiers"] = {"device": "auto"}
    config = config_from_dict(raw, tmp_path)
    assert extractor_settings(config, config.backbones[0], "avg")["pixel_cache"] is True
    assert config.classifiers.device == "auto"
    raw["features"]["pixel_cache"] = "yes"
    raw["classifiers"] = {"device": "tpu"}
    with pytest.raises(ConfigError) as error:
        config_from_dict(raw, tmp_path)
    assert "pixel_cache: expected true or false" in str(error.value)
    assert "device: expected one of ['cpu', 'gpu', 'jax', 'auto']" in str(error.value)
