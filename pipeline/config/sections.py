"""The sections of an experiment config: which keys each accepts, and how each is built.

`SECTIONS` is the one table of accepted keys: the parser checks against it,
and the example config (`layerprobe init`) is written from it. Each builder
checks one section with a `Checker` (problems are collected, not raised) and
returns its dataclass, or None when the section cannot be built.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ...core.errors import ConfigError
from ...features.hub import is_hub_model
from ...features.inputs.loader import decoded_memory_problem
from ...features.keys import COMPUTE_PRECISIONS, DECODERS, DEFAULT_BATCH_SIZE, DIGEST_MODES, STORAGE_DTYPES
from ...features.model_files import SAVED_WEIGHTS, is_model_file
from ...features.registry import BACKBONES
from ...features.truncate import POOLINGS
from ..classifier_grids import (
    CLASSIFIER_GRIDS,
    PREPROCESSING_GRIDS,
    PROBE_DEVICES,
    grid_keys,
    prefix_grid_keys,
)
from ..cluster import ClusterConfig
from ..finetune.settings import FinetuneConfig
from . import values
from .schema import (
    DEFAULT_OUTPUT_DIR,
    DEFAULT_STORE,
    FINETUNE_MODES,
    BackboneConfig,
    ClassifiersConfig,
    DataConfig,
    FeaturesConfig,
    FinetuneStageConfig,
    OutputConfig,
)
from .values import Check, Checker, Invalid, suggestion

__all__ = [
    "REQUIRED",
    "SECTIONS",
    "build_backbones",
    "build_classifiers",
    "build_cluster",
    "build_data",
    "build_features",
    "build_finetune",
    "build_output",
    "check_input_size",
    "check_sections",
]

# Section -> key -> check. A check returns the parsed value or raises Invalid; None marks
# paths and weights, checked by the section's builder against the config's folder. The keys
# of [finetune] other than `modes` are FinetuneConfig's, checked by it.
SECTIONS: Mapping[str, Mapping[str, Check | None]] = MappingProxyType(
    {
        "data": {
            "path": None,
            "train_split": values.string,
            "test_split": values.string,
            "test_size": values.fraction,
            "seed": values.integer(0),
            "digest": values.one_of(DIGEST_MODES),
            "encoding": values.text_encoding,
        },
        "features": {
            "store": None,
            "input_size": values.integer(1),
            "pooling": values.choices(POOLINGS),
            "batch_size": values.auto_or_integer(1),
            "dtype": values.one_of(STORAGE_DTYPES),
            "mixed_precision": values.bool_or_one_of(COMPUTE_PRECISIONS),
            "decoder": values.one_of(DECODERS),
            "pixel_cache": values.boolean,
        },
        "backbones": {
            "model": values.model_name,
            "weights": None,
            "layers": values.layers,
            "model_kwargs": values.table,
            "preprocessing": values.preprocessing,
            "seed": values.integer(0),
        },
        "classifiers": {
            "names": values.choices(CLASSIFIER_GRIDS),
            "cv": values.integer(2),
            "preprocessing": values.choices(PREPROCESSING_GRIDS, allow_empty=True),
            "pca_components": values.pca_components,
            "n_jobs": values.n_jobs,
            "seed": values.integer(0),
            "grids": values.table,
            "screening": values.auto_or_bool,
            "screening_top_k": values.integer(1),
            "multi_layer": values.auto_or_bool,
            "device": values.one_of(PROBE_DEVICES),
        },
        "output": {"dir": None},
        "finetune": {"modes": values.choices(FINETUNE_MODES)},
        "cluster": {
            "scheduler": values.string,
            "workers": values.integer(1),
            "threads_per_worker": values.integer(1),
            "memory_limit": values.memory_limit,
            "gpus": values.device_ids,
        },
    }
)
REQUIRED: Mapping[str, tuple[str, ...]] = MappingProxyType({"data": ("path",), "backbones": ("model",)})


def check_sections(checker: Checker, raw: Mapping[str, Any]) -> None:
    """Report unknown sections and a missing [data] section."""
    for name in raw:
        if name not in SECTIONS:
            valid = f"valid sections are {sorted(SECTIONS)}"
            checker.report(f"[{name}]", f"unknown section{suggestion(name, SECTIONS)}; {valid}", received=False)
    if "data" not in raw:
        checker.report("[data]", "this section is required (at least its path key)", received=False)


def _section(checker: Checker, name: str, raw: Any, where: str) -> dict[str, Any]:
    return checker.section(raw, where, SECTIONS[name], REQUIRED.get(name, ()))


def build_data(checker: Checker, raw: Any) -> DataConfig | None:
    found = _section(checker, "data", raw, "[data]")
    if "path" not in found:
        return None
    path = checker.path("[data] path", found.pop("path"), must_exist=True)
    if path is not None and not (path.is_dir() or path.suffix.lower() == ".csv"):
        checker.report("[data] path", "expected an image folder or a .csv file", str(path))
    if found.get("train_split", "train") == found.get("test_split", "test"):
        checker.report("[data] test_split", "must differ from train_split", found.get("test_split", "test"))
    return None if path is None else DataConfig(path=path, **found)


def build_features(checker: Checker, raw: Any) -> FeaturesConfig | None:
    found = _section(checker, "features", raw, "[features]")
    store = checker.path("[features] store", found.pop("store", DEFAULT_STORE), must_exist=False)
    return None if store is None else FeaturesConfig(store=store, **found)


def build_backbones(checker: Checker, raw: Any) -> tuple[BackboneConfig, ...]:
    if not isinstance(raw, list) or not raw:
        checker.report("[[backbones]]", "expected at least one [[backbones]] table with a model key", raw)
        return ()
    backbones = []
    for number, table in enumerate(raw, start=1):
        where = f"[[backbones]] #{number}"
        found = _section(checker, "backbones", table, where)
        if "weights" in found:
            found["weights"] = checker.weights(f"{where} weights", found["weights"])
        if "model" in found and is_model_file(found["model"]):  # or a keras-hub preset folder, relative to the config
            folder = str((checker.base_dir / Path(found["model"]).expanduser()).resolve())
            found["model"] = folder if is_hub_model(folder) else found["model"]
        if "model" in found and is_model_file(found["model"]):
            _model_file_entry(checker, where, found)
        elif "model" in found and "preprocessing" in found and not is_hub_model(found["model"]):
            checker.report(
                f"{where} preprocessing",
                f"is chosen for model files; {found['model']}'s preprocessing belongs to its weights: remove the key",
                found["preprocessing"],
            )
        if "model" in found:
            found["model_kwargs"] = MappingProxyType(dict(found.get("model_kwargs", {})))
            backbones.append(BackboneConfig(**found))
    return tuple(backbones)


def _model_file_entry(checker: Checker, where: str, found: dict[str, Any]) -> None:
    """A [[backbones]] entry whose model is a saved file: its path resolved, its own weights by default."""
    path = checker.model_file(f"{where} model", found["model"])
    if path is None:
        del found["model"]
        return
    found["model"] = path
    if found.get("weights") == "imagenet":
        checker.report(
            f"{where} weights",
            f'a model file carries its own weights: leave weights out (or "{SAVED_WEIGHTS}"), '
            f'or use "none" for a random initialisation of its architecture, or a weights file',
            "imagenet",
        )
    found.setdefault("weights", SAVED_WEIGHTS)
    if found.get("model_kwargs"):
        checker.report(
            f"{where} model_kwargs", "are constructor arguments of a registry family; a model file is built as saved",
            found["model_kwargs"],
        )


def check_input_size(checker: Checker, features: FeaturesConfig | None, backbones: tuple[BackboneConfig, ...]) -> None:
    """An input size below a backbone's minimum, or so large that one batch of images cannot fit in
    memory, is a config problem, found before any model is built."""
    size = None if features is None else features.input_size
    small = {
        backbone.model: BACKBONES[backbone.model].min_input_size
        for backbone in backbones
        if size is not None and backbone.model in BACKBONES and size < BACKBONES[backbone.model].min_input_size
    }
    if small:
        minimums = ", ".join(f"{model} {minimum}" for model, minimum in small.items())
        checker.report(
            "[features] input_size",
            f"below the smallest input some backbones accept ({minimums} pixels); set input_size = "
            f"{max(small.values())} or more (images are resized to it), or leave it out for each backbone's default",
            size,
        )
    # "auto" batches start at 32 on a CPU; on a GPU they shrink to what fits
    batch = DEFAULT_BATCH_SIZE if features is None or features.batch_size == "auto" else features.batch_size
    memory = size and decoded_memory_problem(batch, size, what="batch_size", dtype="uint8")
    if memory:
        setting, problem = memory
        checker.report(f"[features] {setting}", problem, size if setting == "input_size" else batch)


def _grid(checker: Checker, where: str, name: str, grid: Any, classifiers: dict) -> dict[str, tuple] | None:
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        checker.report(where, "expected a table of non-empty lists, e.g. {C = [0.1, 1.0]}", grid)
        return None
    valid = grid_keys(
        name,
        classifiers.get("preprocessing", ClassifiersConfig.preprocessing),
        pca=classifiers.get("pca_components") is not None,
    )
    try:
        prefix_grid_keys(grid, valid, CLASSIFIER_GRIDS[name].estimator)
    except ValueError as error:
        checker.report(where, str(error).rstrip("."), received=False)
        return None
    return {key: tuple(grid_values) for key, grid_values in grid.items()}


def build_classifiers(checker: Checker, raw: Any) -> ClassifiersConfig:
    found = _section(checker, "classifiers", raw, "[classifiers]")
    grids = {}
    for name, grid in found.pop("grids", {}).items():
        where = f"[classifiers.grids] {name}"
        if name not in CLASSIFIER_GRIDS:
            valid = f"valid names are {sorted(CLASSIFIER_GRIDS)}"
            checker.report(where, f"unknown classifier{suggestion(name, CLASSIFIER_GRIDS)}; {valid}", received=False)
        else:
            parsed = _grid(checker, where, name, grid, found)
            if parsed is not None:
                grids[name] = MappingProxyType(parsed)
    return ClassifiersConfig(grids=MappingProxyType(grids), **found)


def build_output(checker: Checker, raw: Any) -> OutputConfig | None:
    found = _section(checker, "output", raw, "[output]")
    directory = checker.path("[output] dir", found.get("dir", DEFAULT_OUTPUT_DIR), must_exist=False)
    return None if directory is None else OutputConfig(dir=directory)


def build_finetune(checker: Checker, raw: Any) -> FinetuneStageConfig | None:
    """The optional [finetune] stage: `modes` here, every other key checked by `FinetuneConfig`."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        checker.report("[finetune]", "expected a table", raw)
        return None
    options = dict(raw)
    try:
        modes = SECTIONS["finetune"]["modes"](options.pop("modes", ["finetune"]))
    except Invalid as problem:
        checker.report("[finetune] modes", str(problem), raw["modes"])
        return None
    try:
        training = FinetuneConfig.from_dict(options)
    except ConfigError as error:  # one line per bad key
        for problem in error.problems:
            checker.report("[finetune]", str(problem).rstrip("."), received=False)
        return None
    except (TypeError, ValueError) as error:
        checker.report("[finetune]", str(error).rstrip("."), received=False)
        return None
    return FinetuneStageConfig(modes=modes, training=training)


def build_cluster(checker: Checker, raw: Any) -> ClusterConfig | None:
    """The optional [cluster] section: None (in-process) when absent or naming neither scheduler, workers nor gpus."""
    if raw is None:
        return None
    found = _section(checker, "cluster", raw, "[cluster]")
    if not any(key in found for key in ("scheduler", "workers", "gpus")):
        return None
    try:
        return ClusterConfig(**found)
    except ValueError as error:
        checker.report("[cluster]", str(error).split(" Received:")[0].removeprefix("[cluster] ").rstrip("."), received=False)
        return None
