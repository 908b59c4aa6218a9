"""Experiment configuration: TOML files in, frozen and validated dataclasses out.

The only code that reads config files. Everything is checked before any
work starts, and every problem found is reported at once in one
:class:`ConfigError`. A config looks like::

    [data]
    path = "images/"            # folder (class folders, or train/val/test folders) or CSV
    train_split = "train"
    test_split = "val"          # with a single split, a stratified split is made:
    test_size = 0.25            #   this fraction goes to the test split,
    seed = 0                    #   drawn with this seed

    [features]
    store = "layerprobe-store"
    input_size = 224
    pooling = "avg"             # or a list, e.g. ["avg", "max"]
    batch_size = "auto"         # or an integer; "auto": 32 on a CPU, the largest that fits on a GPU
    dtype = "float32"           # storage; mixed_precision = "bfloat16" for the compute on a GPU

    [[backbones]]
    model = "VGG16"
    weights = "imagenet"        # "imagenet", "none" or a weights file
    layers = ["stages"]         # names, aliases (stages, stageK, top) or depths in [0, 1]
    model_kwargs = {}

    [classifiers]
    names = ["logreg", "linear_svm"]
    cv = 5
    preprocessing = ["standardize"]
    [classifiers.grids]
    logreg = { C = [0.1, 1.0, 10.0] }

    [output]
    dir = "layerprobe-out"

    [finetune]                  # optional end-to-end training stage
    modes = ["finetune", "scratch"]
    head_epochs = 5             # the other keys go to pipeline.finetune.FinetuneConfig

Relative paths are relative to the config file's folder. `layerprobe init DATA`
writes a short config fitted to the data (`starter`); `--full` an example with
every key, its default and a comment (`template`).

Modules: `schema` (the dataclasses), `values` (checks of single values and
the problem collector), `sections` (the accepted keys and the section
builders), `loading` (`config_from_dict`, `load_config`), `template` (the
example config), `starter` (the config `layerprobe init DATA` writes).

The names a config may use come from their one home, not from the heavy
modules that use them: classifiers, preprocessing steps and grid parameters
from `layerprobe.pipeline.classifier_grids`, storage dtypes and digest modes
from `layerprobe.features.keys`, poolings from `layerprobe.features.truncate`,
backbones from `layerprobe.features.registry`. So reading a config imports no
scikit-learn, h5py, Keras or dask.
"""

from ...core.errors import ConfigError
from .loading import config_from_dict, load_config
from .schema import (
    DEFAULT_OUTPUT_DIR,
    DEFAULT_STORE,
    FINETUNE_MODES,
    BackboneConfig,
    ClassifiersConfig,
    ClusterConfig,
    DataConfig,
    ExperimentConfig,
    FeaturesConfig,
    FinetuneStageConfig,
    OutputConfig,
)
from .starter import write_starter_config
from .template import example_config

__all__ = [
    "BackboneConfig",
    "ClassifiersConfig",
    "ClusterConfig",
    "ConfigError",
    "DEFAULT_OUTPUT_DIR",
    "DEFAULT_STORE",
    "DataConfig",
    "ExperimentConfig",
    "FINETUNE_MODES",
    "FeaturesConfig",
    "FinetuneStageConfig",
    "OutputConfig",
    "config_from_dict",
    "example_config",
    "load_config",
    "write_starter_config",
]
