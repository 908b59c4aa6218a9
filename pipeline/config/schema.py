"""The frozen dataclasses an experiment config is parsed into, and the defaults of its paths.

Built by `layerprobe.pipeline.config.sections` from a checked TOML table; no
code here reads files or checks values. The `Attributes:` sections of these
docstrings are also the comments of the example config `layerprobe init`
writes (`layerprobe.pipeline.config.template`), so they are written for a
reader of that file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..classifier_grids import CLASSIFIER_GRIDS
from ..cluster import ClusterConfig
from ..finetune.settings import FinetuneConfig

__all__ = [
    "BackboneConfig",
    "ClassifiersConfig",
    "ClusterConfig",
    "DEFAULT_OUTPUT_DIR",
    "DEFAULT_STORE",
    "DataConfig",
    "ExperimentConfig",
    "FINETUNE_MODES",
    "FeaturesConfig",
    "FinetuneStageConfig",
    "OutputConfig",
]

DEFAULT_STORE = "layerprobe-store"
DEFAULT_OUTPUT_DIR = "layerprobe-out"
FINETUNE_MODES = ("finetune", "scratch")


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and which splits train and test.

    Attributes:
        path: The images: a folder with one subfolder per class (optionally
            inside train/, val/, test/ split folders), or a CSV file with
            path and label columns. Relative to the config file's folder
            (absolute once parsed).
        train_split: Split the classifiers are fitted on (hyperparameters by
            cross-validation inside it).
        test_split: Held-out split, scored once per classifier.
        test_size: Fraction of each class put in the test split when the data
            has a single split (a stratified split is then made).
        seed: Seed of that stratified split.
        digest: How the images are identified in the feature keys: "stat"
            (path, size and modification time of each file: fast) or "content"
            (the bytes of each file, hashed in parallel and cached per file:
            for images rewritten in place or copied without keeping mtimes).
        encoding: The text encoding of a CSV file `path` (a Python codec name
            such as "latin-1" or "cp1252"; UTF-8 by default).
    """

    path: Path
    train_split: str = "train"
    test_split: str = "test"
    test_size: float = 0.25
    seed: int = 0
    digest: str = "stat"
    encoding: str = "utf-8"


@dataclass(frozen=True)
class FeaturesConfig:
    """How features are extracted and cached.

    Attributes:
        store: Feature store folder: extracted features are cached there and
            reused by every later run (absolute once parsed).
        input_size: Square input side in pixels, images are resized to it;
            None (key left out) uses each backbone's default.
        pooling: How each layer's output is pooled to one vector per image;
            a name or a list of names (each is a separate set of rows).
        batch_size: Images per forward pass, or "auto" (32 on a CPU; on a GPU the
            largest power of two up to 512 that fits in its memory).
        dtype: Storage dtype of the cached features.
        mixed_precision: Compute precision of the forward pass: false (float32),
            "bfloat16" (fast on recent GPUs), "float16" or true (mixed_float16);
            part of the feature keys.
        decoder: Image decoder: "auto" (nvImageCodec on the GPU where it is
            installed and Keras computes on a GPU, else simplejpeg where
            installed, else Pillow), "pillow", "simplejpeg" (the same pixels as
            Pillow) or "nvimgcodec" (slightly different pixels: other feature keys).
        pixel_cache: Keep the decoded pixels in the store, so that the next
            backbone at the same input size reads them instead of decoding the
            images again (3 x input_size^2 bytes of disk per image).
    """

    store: Path
    input_size: int | None = None
    pooling: tuple[str, ...] = ("avg",)
    batch_size: int | str = "auto"
    dtype: str = "float32"
    mixed_precision: bool | str = False
    decoder: str = "auto"
    pixel_cache: bool = False


@dataclass(frozen=True)
class BackboneConfig:
    """One backbone and the layers to probe.

    Attributes:
        model: Backbone name (`layerprobe layers --list` lists them), e.g.
            `"VGG16"`, or the path of a Keras model saved with model.save (a
            `.keras` file: your own, or a model.keras of `layerprobe finetune`;
            a glob pattern matching exactly one file is allowed; absolute once parsed),
            or a keras-hub vision transformer: `"keras_hub:preset:dinov2_small"`,
            `"keras_hub:DINOV2Backbone"` (built from model_kwargs, weights `"none"`)
            or a preset folder (`layerprobe.features.hub`).
        weights: `"imagenet"`, `"none"` (random initialisation from `seed`,
            a baseline) or the path of a weights file (absolute once parsed);
            for a model file `"saved"` (its own weights, the default), `"none"`
            or a weights file.
        layers: Layers to probe: names, aliases (`"stages"`, `"stages:K"`,
            `"stageK"`, `"last:N"`, `"top"`) or relative depths in [0, 1];
            `layerprobe layers MODEL` lists them (a transformer's stages are its blocks).
        model_kwargs: Extra constructor arguments, e.g. `{ alpha = 0.35 }`.
        preprocessing: For a model file or keras-hub model (default: a preset's
            image converter): `"none"` (pixels 0-255, for models that
            rescale inside), `"caffe"`, `"tf"`, `"torch"` (the modes of Keras's
            imagenet_utils.preprocess_input) or a family name whose
            preprocess_input to use, e.g. `"ResNet50"`; None (key left out)
            takes it from the metadata layerprobe saves beside its models, or
            from the model's graph.
        seed: Seed of the random initialisation when weights is `"none"`.
    """

    model: str
    weights: str | None = "imagenet"
    layers: tuple[str | float, ...] = ("stages",)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    preprocessing: str | None = None
    seed: int = 0

    @property
    def weights_label(self) -> str:
        """Short name of the weights for tables: `imagenet`, `none` or the file name
        (for a model file's own weights, its name, with its folder when it is `model.keras`)."""
        if self.weights is None:
            return "none"
        if self.weights == "saved":
            path = Path(self.model)
            return f"{path.parent.name}/{path.name}" if path.name == "model.keras" else path.name
        return self.weights if self.weights == "imagenet" else Path(self.weights).name


@dataclass(frozen=True)
class ClassifiersConfig:
    """Classifiers fitted on the layers' features.

    Attributes:
        names: Classifiers fitted on every layer's features (with screening,
            all but ridge only on the best layers).
        cv: Cross-validation folds on the training split.
        preprocessing: Steps before the classifier, in order (may be empty).
        pca_components: PCA before the classifier: a number of components
            (integer) or a fraction of variance to keep (float in (0, 1));
            None (key left out) for no PCA.
        n_jobs: Parallel fits in the grid search, -1 for every CPU; None (key
            left out) for one. Rows are fitted side by side on the cores this
            leaves (`pipeline.run.fitting`): with -1, one at a time.
        seed: Seed of the folds, PCA and the classifiers.
        grids: Hyperparameter grid per classifier, replacing its default grid,
            e.g. `{ logreg = { C = [0.1, 1.0, 10.0] } }`; a preprocessing step's
            or PCA's parameter is named with its step, e.g. `pca__n_components`
            (an unknown key is reported with the valid ones).
        screening: For depth sweeps: the ridge probe (every penalty by exact
            leave-one-out, seconds per layer) makes a "screening" row on every
            layer, and the other classifiers are fitted only on the
            screening_top_k best layers of each backbone by its leave-one-out
            accuracy ("final" rows). "auto" screens backbones with more than 3
            layers; false fits every classifier on every layer.
        screening_top_k: Layers per backbone (and pooling) that the other
            classifiers are fitted on when screening.
        device: Where logreg rows are fitted: "cpu" (scikit-learn), "gpu" (a JAX
            solver of the same objective on the GPU, the same choice of C), "jax"
            (that solver on JAX's device, e.g. a TPU) or "auto" (the GPU where JAX
            sees one, else the CPU).
        multi_layer: Add a row per backbone (and pooling) with 2 or more layers:
            a ridge probe on the concatenation of its layers chosen by greedy
            selection, its layer named e.g. "multi:block3_pool+block4_pool".
            "auto" adds it where screening is on.
    """

    names: tuple[str, ...] = ("logreg", "linear_svm")
    cv: int = 5
    preprocessing: tuple[str, ...] = ("standardize",)
    pca_components: int | float | None = None
    n_jobs: int | None = None
    seed: int = 0
    grids: Mapping[str, Mapping[str, tuple]] = field(default_factory=dict)
    screening: str | bool = "auto"
    screening_top_k: int = 2
    multi_layer: str | bool = "auto"
    device: str = "cpu"

    def param_grid(self, name: str) -> dict[str, list]:
        """The grid searched for classifier `name`, as plain lists (JSON-ready)."""
        grid = self.grids.get(name, CLASSIFIER_GRIDS[name].default_grid)
        return {key: list(values) for key, values in sorted(grid.items())}


@dataclass(frozen=True)
class FinetuneStageConfig:
    """The optional `[finetune]` stage: which end-to-end trainings to add to the table, and how they train.

    Attributes:
        modes: `"finetune"` (every backbone with weights, top blocks unfrozen)
            and/or `"scratch"` (every architecture from random weights).
        training: The other keys: the hyperparameters of every training
            (`layerprobe.pipeline.finetune.FinetuneConfig`, checked and parsed once).
    """

    modes: tuple[str, ...] = ("finetune",)
    training: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass(frozen=True)
class OutputConfig:
    """Where results, models, predictions and plots go.

    Attributes:
        dir: Output folder for results.csv, summary.md, depth.png, the fitted
            models and their predictions (absolute once parsed).
    """

    dir: Path


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole batch run.

    Attributes:
        data: Images and splits.
        features: Extraction and store settings.
        backbones: Backbones to probe, in order.
        classifiers: Classifiers fitted on every layer.
        output: Output directory.
        finetune: The `[finetune]` stage, or None to skip it.
        cluster: The dask cluster extraction and classifier rows run on, or
            None to run everything in-process.
        source: The config file, or a description of where the config came from.
    """

    data: DataConfig
    features: FeaturesConfig
    backbones: tuple[BackboneConfig, ...]
    classifiers: ClassifiersConfig
    output: OutputConfig
    finetune: FinetuneStageConfig | None = None
    cluster: ClusterConfig | None = None
    source: str = "<dict>"

    def with_paths(
        self, *, output_dir: str | os.PathLike | None = None, store: str | os.PathLike | None = None
    ) -> "ExperimentConfig":
        """A copy with another output directory and/or feature store (relative to the current folder)."""
        changes: dict[str, Any] = {}
        if output_dir is not None:
            changes["output"] = OutputConfig(dir=Path(output_dir).expanduser().resolve())
        if store is not None:
            changes["features"] = dataclasses.replace(self.features, store=Path(store).expanduser().resolve())
        return dataclasses.replace(self, **changes)
