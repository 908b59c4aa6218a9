"""Experiment configuration: TOML files in, frozen and validated dataclasses out.

The only module that reads config files. Everything is checked before any
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
    batch_size = 32
    dtype = "float32"

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

Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from layerprobe.features.backbones import BACKBONES
from layerprobe.features.errors import ConfigError
from layerprobe.features.extract import STORAGE_DTYPES
from layerprobe.features.truncate import POOLINGS
from layerprobe.features.weights import parse_weights
from layerprobe.pipeline.classifiers import CLASSIFIERS, PREPROCESSING, make_pipeline

__all__ = [
    "BackboneConfig",
    "ClassifiersConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "FeaturesConfig",
    "FinetuneStageConfig",
    "OutputConfig",
    "config_from_dict",
    "load_config",
]

DEFAULT_STORE = "layerprobe-store"
DEFAULT_OUTPUT_DIR = "layerprobe-out"
FINETUNE_MODES = ("finetune", "scratch")




@dataclass(frozen=True)
class DataConfig:
    """Where the images are and which splits train and test.

    Attributes:
        path: Image folder or CSV file (absolute).
        train_split: Split the classifiers are fitted on (cross-validation inside).
        test_split: Held-out split, scored once per classifier.
        test_size: Fraction of each class put in the test split when the data has
            a single split.
        seed: Seed of that stratified split.
    """

    path: Path
    train_split: str = "train"
    test_split: str = "test"
    test_size: float = 0.25
    seed: int = 0


@dataclass(frozen=True)
class FeaturesConfig:
    """How features are extracted and cached.

    Attributes:
        store: Feature store directory (absolute).
        input_size: Square input side; None uses each backbone's default.
        pooling: One or more of `"avg"`, `"max"`, `"flatten"`, `"none"`.
        batch_size: Images per forward pass.
        dtype: Storage dtype, `"float32"` or `"float16"`.
    """

    store: Path
    input_size: int | None = None
    pooling: tuple[str, ...] = ("avg",)
    batch_size: int = 32
    dtype: str = "float32"


@dataclass(frozen=True)
class BackboneConfig:
    """One backbone and the layers to probe.

    Attributes:
        model: Registry name, e.g. `"VGG16"`.
        weights: `"imagenet"`, None (random init from `seed`) or an absolute file path.
        layers: Layer names, aliases or relative depths.
        model_kwargs: Extra constructor arguments, e.g. `{"alpha": 0.35}`.
        seed: Seed of the random initialisation when `weights` is None.
    """

    model: str
    weights: str | None = "imagenet"
    layers: tuple[str | float, ...] = ("stages",)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    @property
    def weights_label(self) -> str:
        """Short name of the weights for tables: `imagenet`, `none` or the file name."""
        if self.weights is None:
            return "none"
        return self.weights if self.weights == "imagenet" else Path(self.weights).name


@dataclass(frozen=True)
class ClassifiersConfig:
    """Classifiers fitted on every layer's features.

    Attributes:
        names: Names in `layerprobe.pipeline.classifiers.CLASSIFIERS`.
        cv: Cross-validation folds on the training split.
        preprocessing: Names in `layerprobe.pipeline.classifiers.PREPROCESSING`.
        pca_components: Optional PCA before the classifier.
        n_jobs: Parallel fits in the grid search.
        seed: Seed of the folds, PCA and the classifiers.
        grids: Classifier name -> hyperparameter grid (overrides the registry default).
    """

    names: tuple[str, ...] = ("logreg", "linear_svm")
    cv: int = 5
    preprocessing: tuple[str, ...] = ("standardize",)
    pca_components: int | float | None = None
    n_jobs: int | None = None
    seed: int = 0
    grids: Mapping[str, Mapping[str, tuple]] = field(default_factory=dict)

    def param_grid(self, name: str) -> dict[str, list]:
        """The grid searched for classifier `name`, as plain lists (JSON-ready)."""
        grid = self.grids.get(name, CLASSIFIERS[name].param_grid)
        return {key: list(values) for key, values in sorted(grid.items())}


@dataclass(frozen=True)
class FinetuneStageConfig:
    """The optional `[finetune]` stage: train end to end and add the scores to the table.

    Attributes:
        modes: `"finetune"` (every backbone with weights, top blocks unfrozen)
            and/or `"scratch"` (every architecture from random weights).
        options: The other keys, passed to `layerprobe.pipeline.finetune.FinetuneConfig.from_dict`.
    """

    modes: tuple[str, ...] = ("finetune",)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputConfig:
    """Where results, models, predictions and plots go.

    Attributes:
        dir: Output directory (absolute).
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
        source: The config file, or a description of where the config came from.
    """

    data: DataConfig
    features: FeaturesConfig
    backbones: tuple[BackboneConfig, ...]
    classifiers: ClassifiersConfig
    output: OutputConfig
    finetune: FinetuneStageConfig | None = None
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


# ----------------------------------------------------------------------------- value checks


class _Invalid(Exception):
    """A value does not fit its key; the message says what was expected."""


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("expected a non-empty string")
    return value


def _integer(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _Invalid(f"expected an integer >= {minimum}")
        return value

    return check


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise _Invalid("expected a number between 0 and 1 (exclusive)")
    return float(value)


def _string_list(value: Any) -> tuple[str, ...]:
    """A string or a list of strings -> tuple of strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
        raise _Invalid("expected a string or a list of strings")
    return tuple(items)


def _choices(valid: Any, *, allow_empty: bool = False) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        items = _string_list(value)
        if not items and not allow_empty:
            raise _Invalid("expected at least one name")
        unknown = [item for item in items if item not in valid]
        if unknown:
            raise _Invalid(f"unknown name(s) {unknown}{_suggest(unknown[0], valid)}; valid names are {sorted(valid)}")
        if len(set(items)) != len(items):
            raise _Invalid("names must not repeat")
        return items

    return check


def _one_of(valid: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in valid:
            raise _Invalid(f"expected one of {list(valid)}{_suggest(value, valid)}")
        return value

    return check


def _n_jobs(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
        raise _Invalid("expected a positive integer, or -1 for all CPUs")
    return value


def _pca(value: Any) -> int | float:
    components = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    variance = isinstance(value, float) and 0 < value < 1
    if not (components or variance):
        raise _Invalid("expected an integer >= 1 (components) or a float in (0, 1) (explained variance)")
    return value


def _table(value: Any) -> dict:
    if not isinstance(value, dict):
        raise _Invalid("expected a table, e.g. {alpha = 0.35}")
    return value


def _layers(value: Any) -> tuple[str | float, ...]:
    items = [value] if isinstance(value, (str, int, float)) else value
    if (
        not isinstance(items, list)
        or not items
        or not all(isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in items)
    ):
        raise _Invalid('expected layer names, aliases ("stages", "stageK", "top") or depths in [0, 1]')
    for item in items:
        if not isinstance(item, str) and not 0 <= item <= 1:
            raise _Invalid(f"depth {item} is outside [0, 1]")
    return tuple(items)


def _model(value: Any) -> str:
    name = _string(value)
    by_lower = {key.lower(): key for key in BACKBONES}
    if name.lower() not in by_lower:
        raise _Invalid(f"unknown backbone{_suggest(name, BACKBONES)}; valid names are {sorted(BACKBONES)}")
    return by_lower[name.lower()]


def _suggest(name: Any, valid: Any) -> str:
    names = [str(v) for v in valid]
    same_but_case = [v for v in names if v.lower() == str(name).lower()]
    close = same_but_case or difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ----------------------------------------------------------------------------- sections

# Section -> key -> check. A check returns the parsed value or raises _Invalid; None marks
# paths and weights, checked by the section's builder against the config's folder. The keys
# of [finetune] are FinetuneConfig's, checked by it.
_SECTIONS: dict[str, dict[str, Callable[[Any], Any] | None]] = {
    "data": {
        "path": None,
        "train_split": _string,
        "test_split": _string,
        "test_size": _fraction,
        "seed": _integer(0),
    },
    "features": {
        "store": None,
        "input_size": _integer(1),
        "pooling": _choices(POOLINGS),
        "batch_size": _integer(1),
        "dtype": _one_of(STORAGE_DTYPES),
    },
    "backbones": {
        "model": _model,
        "weights": None,
        "layers": _layers,
        "model_kwargs": _table,
        "seed": _integer(0),
    },
    "classifiers": {
        "names": _choices(CLASSIFIERS),
        "cv": _integer(2),
        "preprocessing": _choices(PREPROCESSING, allow_empty=True),
        "pca_components": _pca,
        "n_jobs": _n_jobs,
        "seed": _integer(0),
        "grids": _table,
    },
    "output": {"dir": None},
    "finetune": {},
}
_REQUIRED = {"data": ("path",), "backbones": ("model",)}


class _Checker:
    """Collects problems while parsing; each problem names its section and key."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.problems: list[str] = []

    def report(self, where: str, message: str, value: Any = None, *, received: bool = True) -> None:
        suffix = f" Received: {value!r}" if received else ""
        self.problems.append(f"{where}: {message}.{suffix}")

    def section(self, name: str, raw: Any, where: str) -> dict[str, Any]:
        """Check the keys of one table; returns the parsed values of the valid ones."""
        if not isinstance(raw, dict):
            self.report(where, "expected a table", raw)
            return {}
        keys = _SECTIONS[name]
        parsed = {}
        for key, value in raw.items():
            check = keys.get(key, False)
            if check is False:
                self.report(
                    f"{where} {key}",
                    f"unknown key{_suggest(key, keys)}; valid keys are {sorted(keys)}",
                    received=False,
                )
            elif check is None:
                parsed[key] = value
            else:
                try:
                    parsed[key] = check(value)
                except _Invalid as problem:
                    self.report(f"{where} {key}", str(problem), value)
        for key in _REQUIRED.get(name, ()):
            if key not in raw:
                self.report(f"{where} {key}", "this key is required", received=False)
        return parsed

    def path(self, where: str, value: Any, *, must_exist: bool) -> Path | None:
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            self.report(where, "expected a path string", value)
            return None
        path = (self.base_dir / Path(value).expanduser()).resolve()
        if must_exist and not path.exists():
            self.report(where, f"{path} does not exist (relative paths are relative to {self.base_dir})", value)
            return None
        return path

    def weights(self, where: str, value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            self.report(where, 'expected "imagenet", "none" or the path of a weights file', value)
            return None
        parsed = parse_weights(value)
        if parsed in (None, "imagenet"):
            return parsed
        path = self.path(where, value, must_exist=True)
        if path is not None and not path.is_file():
            self.report(where, f"{path} is not a file", value)
        return None if path is None else str(path)


def _data(checker: _Checker, raw: Any) -> DataConfig | None:
    values = checker.section("data", raw, "[data]")
    if "path" not in values:
        return None
    path = checker.path("[data] path", values.pop("path"), must_exist=True)
    if path is not None and not (path.is_dir() or path.suffix.lower() == ".csv"):
        checker.report("[data] path", "expected an image folder or a .csv file", str(path))
    if values.get("train_split", "train") == values.get("test_split", "test"):
        checker.report("[data] test_split", "must differ from train_split", values.get("test_split", "test"))
    return None if path is None else DataConfig(path=path, **values)


def _features(checker: _Checker, raw: Any) -> FeaturesConfig | None:
    values = checker.section("features", raw, "[features]")
    store = checker.path("[features] store", values.pop("store", DEFAULT_STORE), must_exist=False)
    return None if store is None else FeaturesConfig(store=store, **values)


def _backbones(checker: _Checker, raw: Any) -> tuple[BackboneConfig, ...]:
    if not isinstance(raw, list) or not raw:
        checker.report("[[backbones]]", "expected at least one [[backbones]] table with a model key", raw)
        return ()
    backbones = []
    for number, table in enumerate(raw, start=1):
        where = f"[[backbones]] #{number}"
        values = checker.section("backbones", table, where)
        if "weights" in values:
            values["weights"] = checker.weights(f"{where} weights", values["weights"])
        if "model" in values:
            values["model_kwargs"] = MappingProxyType(dict(values.get("model_kwargs", {})))
            backbones.append(BackboneConfig(**values))
    return tuple(backbones)


def _input_size(checker: _Checker, features: FeaturesConfig | None, backbones: tuple[BackboneConfig, ...]) -> None:
    """An input size below a backbone's minimum is a config problem, found before any model is built."""
    size = None if features is None else features.input_size
    small = {
        backbone.model: BACKBONES[backbone.model].min_input_size
        for backbone in backbones
        if size is not None and size < BACKBONES[backbone.model].min_input_size
    }
    if small:
        minimums = ", ".join(f"{model} {minimum}" for model, minimum in small.items())
        checker.report(
            "[features] input_size",
            f"below the smallest input some backbones accept ({minimums} pixels); set input_size = "
            f"{max(small.values())} or more (images are resized to it), or leave it out for each backbone's default",
            size,
        )


def _grid(checker: _Checker, where: str, name: str, grid: Any, classifiers: dict) -> dict[str, tuple] | None:
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        checker.report(where, "expected a table of non-empty lists, e.g. {C = [0.1, 1.0]}", grid)
        return None
    estimator = make_pipeline(
        name,
        preprocessing=classifiers.get("preprocessing", ClassifiersConfig.preprocessing),
        pca_components=classifiers.get("pca_components"),
    )
    valid = {key for key in estimator.get_params(deep=True) if "__" in key}
    unknown = [key for key in grid if (key if "__" in key else f"clf__{key}") not in valid]
    if unknown:
        names = sorted(key.removeprefix("clf__") for key in valid)
        checker.report(where, f"unknown parameter(s) {unknown}{_suggest(unknown[0], names)} of {name}", grid)
        return None
    return {key: tuple(values) for key, values in grid.items()}


def _classifiers(checker: _Checker, raw: Any) -> ClassifiersConfig:
    values = checker.section("classifiers", raw, "[classifiers]")
    grids = {}
    for name, grid in values.pop("grids", {}).items():
        where = f"[classifiers.grids] {name}"
        if name not in CLASSIFIERS:
            valid = f"valid names are {sorted(CLASSIFIERS)}"
            checker.report(where, f"unknown classifier{_suggest(name, CLASSIFIERS)}; {valid}", received=False)
        else:
            parsed = _grid(checker, where, name, grid, values)
            if parsed is not None:
                grids[name] = MappingProxyType(parsed)
    return ClassifiersConfig(grids=MappingProxyType(grids), **values)


def _finetune(checker: _Checker, raw: Any) -> FinetuneStageConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        checker.report("[finetune]", "expected a table", raw)
        return None
    options = dict(raw)
    try:
        modes = _choices(FINETUNE_MODES)(options.pop("modes", ["finetune"]))
    except _Invalid as problem:
        checker.report("[finetune] modes", str(problem), raw["modes"])
        return None
    from layerprobe.features.backend import import_keras_quietly

    import_keras_quietly()  # pipeline.finetune imports Keras: only for configs that finetune
    from layerprobe.pipeline.finetune import FinetuneConfig

    try:
        FinetuneConfig.from_dict(options)
    except (TypeError, ValueError) as error:
        checker.report("[finetune]", str(error).rstrip("."), received=False)
        return None
    return FinetuneStageConfig(modes=modes, options=MappingProxyType(options))


def config_from_dict(
    raw: Mapping[str, Any], base_dir: str | os.PathLike, *, source: str = "<dict>"
) -> ExperimentConfig:
    """Validate a parsed config and build an :class:`ExperimentConfig`.

    Args:
        raw: Sections as parsed from TOML (`data`, `features`, `backbones`,
            `classifiers`, `output`, optional `finetune`).
        base_dir: Folder that relative paths are relative to.
        source: Where the config came from, for messages.

    Returns:
        The config, with absolute paths.

    Raises:
        ConfigError: Listing every problem: unknown sections or keys (with the
            closest valid key), wrong types, unknown classifiers or backbones,
            missing data path or weights file, an input size too small for a backbone.

    Example:
        >>> config_from_dict({"data": {"path": "images"}, "backbones": [{"model": "VGG16"}]}, ".")
    """
    checker = _Checker(Path(base_dir).expanduser().resolve())
    if not isinstance(raw, Mapping):
        raise ConfigError([f"expected a table of sections. Received: {raw!r}"], source)
    for name in raw:
        if name not in _SECTIONS:
            valid = f"valid sections are {sorted(_SECTIONS)}"
            checker.report(f"[{name}]", f"unknown section{_suggest(name, _SECTIONS)}; {valid}", received=False)
    if "data" not in raw:
        checker.report("[data]", "this section is required (at least its path key)", received=False)
    data = _data(checker, raw.get("data", {}))
    features = _features(checker, raw.get("features", {}))
    backbones = _backbones(checker, raw.get("backbones"))
    _input_size(checker, features, backbones)
    classifiers = _classifiers(checker, raw.get("classifiers", {}))
    output_values = checker.section("output", raw.get("output", {}), "[output]")
    output_dir = checker.path("[output] dir", output_values.get("dir", DEFAULT_OUTPUT_DIR), must_exist=False)
    finetune = _finetune(checker, raw.get("finetune"))
    if checker.problems:
        raise ConfigError(checker.problems, source)
    return ExperimentConfig(
        data=data,
        features=features,
        backbones=backbones,
        classifiers=classifiers,
        output=OutputConfig(dir=output_dir),
        finetune=finetune,
        source=source,
    )


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and validate a TOML experiment config.

    Relative paths in it are relative to the file's folder.

    Raises:
        ConfigError: If the file is missing, is not valid TOML, or has any
            problem :func:`config_from_dict` finds.
    """
    path = Path(path).expanduser()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"the file does not exist. Received: path={os.fspath(path)!r}"], str(path)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"the file cannot be read ({error})"], str(path)) from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"not valid TOML: {error}"], str(path)) from error
    return config_from_dict(raw, path.resolve().parent, source=str(path))
