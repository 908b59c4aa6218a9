"""The example config `layerprobe init` writes, and the `[finetune]` key list of `layerprobe finetune --help`.

Nothing here is written by hand per key: the keys come from `SECTIONS` (what
the parser accepts), the defaults from the config dataclasses (and
`FinetuneConfig`), the comments from their `Attributes:` docstrings and the
choices from the registries behind each check. A key added to the parser
without a dataclass field or a description makes `example_config` fail, and
the tests with it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import textwrap
from typing import Any, Mapping

from ..classifier_grids import CLASSIFIER_GRIDS
from ..finetune.settings import FinetuneConfig
from .schema import (
    DEFAULT_OUTPUT_DIR,
    DEFAULT_STORE,
    BackboneConfig,
    ClassifiersConfig,
    ClusterConfig,
    DataConfig,
    FeaturesConfig,
    FinetuneStageConfig,
    OutputConfig,
)
from .sections import REQUIRED, SECTIONS

__all__ = ["CONFIG_FILE_NAME", "attribute_docs", "example_config", "finetune_keys_help", "toml_value"]

CONFIG_FILE_NAME = "layerprobe.toml"

_DATACLASSES = {
    "data": DataConfig,
    "features": FeaturesConfig,
    "backbones": BackboneConfig,
    "classifiers": ClassifiersConfig,
    "output": OutputConfig,
}
# Keys without a dataclass default: the value the builders default to, or an example of a required one.
_NO_FIELD_DEFAULT = {
    ("data", "path"): "images",
    ("features", "store"): DEFAULT_STORE,
    ("backbones", "model"): "VGG16",
    ("output", "dir"): DEFAULT_OUTPUT_DIR,
}
# Keys whose default is None (left out): an example value for the commented-out line.
_UNSET_EXAMPLES = {
    "input_size": 224, "pca_components": 0.95, "n_jobs": -1, "scheduler": "tcp://scheduler-host:8786", "workers": 2,
    "preprocessing": "none",
}
_WIDTH = 88
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def attribute_docs(cls: type) -> dict[str, str]:
    """Attribute name -> description, from the `Attributes:` section of `cls`'s docstring (Google style)."""
    docs: dict[str, str] = {}
    inside, indent, current = False, None, None
    for line in (inspect.getdoc(cls) or "").splitlines():
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside or not line.strip():
            continue
        if not line.startswith(" "):  # the next section
            break
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        match = re.match(r"(\w+): (.*)", line.strip())
        if depth == indent and match:
            current = match.group(1)
            docs[current] = match.group(2)
        elif current is not None:
            docs[current] += " " + line.strip()
    return docs


def toml_value(value: Any) -> str:
    """`value` as a TOML value (inline tables and arrays for mappings and sequences)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(os.fspath(value))
    if isinstance(value, Mapping):
        items = [f"{key if _BARE_KEY.match(str(key)) else json.dumps(str(key))} = {toml_value(item)}"
                 for key, item in value.items()]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"No TOML form for {type(value).__name__}. Received: {value!r}")


def _default(cls: type, section: str, key: str) -> Any:
    fields = {field.name: field for field in dataclasses.fields(cls)}
    if key not in fields:
        raise KeyError(f"[{section}] {key} is accepted by the parser but {cls.__name__} has no such field")
    field = fields[key]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return _NO_FIELD_DEFAULT[(section, key)]


def _describe(cls: type, section: str, key: str, check: Any) -> str:
    text = attribute_docs(cls).get(key)
    if not text:
        raise KeyError(f"[{section}] {key} has no description in the Attributes of {cls.__name__}'s docstring")
    text = text.replace("`", "")
    if key in REQUIRED.get(section, ()):
        text += " Required."
    valid = getattr(check, "choices", None)
    if valid:
        text += f" Choices: {', '.join(valid)}."
    return text


def _key_lines(key: str, value: Any, description: str, *, commented: bool) -> list[str]:
    prefix = "# " if commented else ""
    lines = textwrap.wrap(description, _WIDTH - 2, initial_indent="# ", subsequent_indent="# ")
    if value is None:
        example = _UNSET_EXAMPLES.get(key)
        lines.append(f"# {key} = {toml_value(example)}" if example is not None else f"# {key} = (unset)")
    else:
        lines.append(f"{prefix}{key} = {toml_value(value)}")
    return lines


def _finetune_keys() -> list[tuple[str, Any, str]]:
    """(key, default, description) of every [finetune] key: `modes`, then FinetuneConfig's fields."""
    modes_check = SECTIONS["finetune"]["modes"]
    keys = [("modes", list(_default(FinetuneStageConfig, "finetune", "modes")),
             _describe(FinetuneStageConfig, "finetune", "modes", modes_check))]
    for field in dataclasses.fields(FinetuneConfig):
        keys.append((field.name, _default(FinetuneConfig, "finetune", field.name),
                     _describe(FinetuneConfig, "finetune", field.name, None)))
    return keys


def example_config(values: Mapping[tuple[str, str], Any] | None = None) -> str:
    """The text of a commented example config: every section and key, each with its default and a comment.

    Args:
        values: `(section, key) -> value` written instead of the default (what
            `layerprobe init --full DATA` found in the data).
    """
    values = values or {}
    lines = [
        "# layerprobe experiment config, written by `layerprobe init`. Run it with:",
        f"#     layerprobe run {CONFIG_FILE_NAME}",
        "# Every key is shown with its default value: a key left out takes that default.",
        "# Relative paths are relative to this file's folder.",
    ]
    for section, keys in SECTIONS.items():
        if section in ("finetune", "cluster"):
            continue
        cls = _DATACLASSES[section]
        header = "[[backbones]]" if section == "backbones" else f"[{section}]"
        lines += ["", header]
        if section == "backbones":
            lines.append("# One [[backbones]] table per backbone to probe; repeat the table for more.")
        for key, check in keys.items():
            value = values.get((section, key), _default(cls, section, key))
            description = _describe(cls, section, key, check)
            if key == "grids":
                defaults = "; ".join(
                    f"{name} {toml_value(dict(grid.default_grid))}" for name, grid in CLASSIFIER_GRIDS.items()
                )
                description += f" The defaults: {defaults}."
            if isinstance(value, Mapping):
                value = dict(value)
            lines += _key_lines(key, value, description, commented=False)
    lines += [
        "",
        "# Optional: train end to end as well (layerprobe finetune runs only this stage).",
        "# Uncomment the section and the keys to change.",
        "# [finetune]",
    ]
    for key, value, description in _finetune_keys():
        lines += _key_lines(key, value, description, commented=True)
    lines += [
        "",
        "# Optional: run extraction and classifier rows on a dask cluster (see the README,",
        "# \"Scaling out with dask\"). Uncomment the section and scheduler or workers.",
        "# [cluster]",
    ]
    for key, check in SECTIONS["cluster"].items():
        value = _default(ClusterConfig, "cluster", key)
        lines += _key_lines(key, list(value) if isinstance(value, tuple) else value,
                            _describe(ClusterConfig, "cluster", key, check), commented=True)
    return "\n".join(lines) + "\n"


def finetune_keys_help() -> str:
    """The `[finetune]` keys with their defaults and descriptions, for `layerprobe finetune --help`."""
    lines = ["[finetune] keys (each with its default; keys left out take it):"]
    for key, value, description in _finetune_keys():
        lines.append(f"  {key} = {toml_value(value) if value is not None else '(unset)'}")
        lines += textwrap.wrap(description, _WIDTH - 6, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)
