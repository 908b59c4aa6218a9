"""Reading an experiment config: the only place layerprobe parses a config file (stdlib `tomllib`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ...core.errors import ConfigError, UnusableFileError
from ...core.files import RECORD_MAX_BYTES, read_bounded_text
from .schema import ExperimentConfig
from .sections import (
    build_backbones,
    build_classifiers,
    build_cluster,
    build_data,
    build_features,
    build_finetune,
    build_output,
    check_input_size,
    check_sections,
)
from .values import Checker

__all__ = ["config_from_dict", "load_config"]


def config_from_dict(
    raw: Mapping[str, Any], base_dir: str | os.PathLike, *, source: str = "<dict>"
) -> ExperimentConfig:
    """Validate a parsed config and build an :class:`ExperimentConfig`.

    Args:
        raw: Sections as parsed from TOML (`data`, `features`, `backbones`,
            `classifiers`, `output`, optional `finetune` and `cluster`).
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
    checker = Checker(Path(base_dir).expanduser().resolve())
    if not isinstance(raw, Mapping):
        raise ConfigError([f"expected a table of sections. Received: {raw!r}"], source)
    check_sections(checker, raw)
    data = build_data(checker, raw.get("data", {}))
    features = build_features(checker, raw.get("features", {}))
    backbones = build_backbones(checker, raw.get("backbones"))
    check_input_size(checker, features, backbones)
    classifiers = build_classifiers(checker, raw.get("classifiers", {}))
    output = build_output(checker, raw.get("output", {}))
    finetune = build_finetune(checker, raw.get("finetune"))
    cluster = build_cluster(checker, raw.get("cluster"))
    if checker.problems:
        raise ConfigError(checker.problems, source)
    return ExperimentConfig(
        data=data,
        features=features,
        backbones=backbones,
        classifiers=classifiers,
        output=output,
        finetune=finetune,
        cluster=cluster,
        source=source,
    )


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and validate a TOML experiment config.

    Relative paths in it are relative to the file's folder.

    Raises:
        ConfigError: If the file is missing, is not valid TOML, or has any
            problem :func:`config_from_dict` finds.
        UnusableFileError: If it is not a regular file (a FIFO, `/dev/zero`) or
            larger than `RECORD_MAX_BYTES`; nothing is read then.
    """
    path = Path(path).expanduser()
    try:
        raw = tomllib.loads(read_bounded_text(path, "experiment config", RECORD_MAX_BYTES))
    except UnusableFileError:
        raise
    except FileNotFoundError:
        raise ConfigError([f"the file does not exist. Received: path={os.fspath(path)!r}"], str(path)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"the file cannot be read ({error})"], str(path)) from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"not valid TOML: {error}"], str(path)) from error
    return config_from_dict(raw, path.resolve().parent, source=str(path))
