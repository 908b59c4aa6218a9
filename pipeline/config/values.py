"""Checks of single config values, and the `Checker` that collects every problem of a config.

A check takes the raw TOML value and returns the parsed one, or raises
`Invalid` saying what was expected; the `Checker` turns that into one problem
line naming the section and key, so that a config's problems are all reported
at once. Checks that accept names from a registry carry the names as
`check.choices` (the example config lists them).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ...features.backbone import parse_weights
from ...core.checks import closest_names, is_positive_int
from ...core.errors import BackboneError, InputError
from ...core.files import file_kind
from ...features.hub import HUB_PREFIX
from ...features.inputs.sources import check_encoding
from ...features.model_files import SAVED_WEIGHTS, is_model_file
from ...features.registry import BACKBONES, PREPROCESSING_MODES, resolve_preprocessing

__all__ = [
    "Check",
    "Checker",
    "Invalid",
    "auto_or_bool",
    "choices",
    "device_ids",
    "fraction",
    "integer",
    "layers",
    "memory_limit",
    "model_name",
    "n_jobs",
    "one_of",
    "pca_components",
    "preprocessing",
    "string",
    "text_encoding",
    "string_list",
    "suggestion",
    "table",
]

Check = Callable[[Any], Any]


class Invalid(Exception):
    """A value does not fit its key; the message says what was expected."""


def suggestion(name: Any, valid: Iterable[Any]) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or ''."""
    close = closest_names(name, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid("expected a non-empty string")
    return value


def text_encoding(value: Any) -> str:
    """A text encoding Python knows (`features.inputs.check_encoding`), as given."""
    try:
        check_encoding(string(value))
    except InputError:
        raise Invalid("unknown text encoding (a Python codec name such as 'utf-8', 'latin-1' or 'cp1252')") from None
    return value


def integer(minimum: int) -> Check:
    """An integer >= `minimum` (0 or more; booleans are not integers here)."""

    def check(value: Any) -> int:
        zero = minimum == 0 and type(value) is int and value == 0
        if not (zero or (is_positive_int(value) and value >= minimum)):
            raise Invalid(f"expected an integer >= {minimum}")
        return int(value)

    return check


def fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise Invalid("expected a number between 0 and 1 (exclusive)")
    return float(value)


def string_list(value: Any) -> tuple[str, ...]:
    """A string or a list of strings -> tuple of strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
        raise Invalid("expected a string or a list of strings")
    return tuple(items)


def choices(valid: Iterable[str], *, allow_empty: bool = False) -> Check:
    """A name or a list of distinct names, each in `valid`."""
    valid = tuple(valid)

    def check(value: Any) -> tuple[str, ...]:
        items = string_list(value)
        if not items and not allow_empty:
            raise Invalid("expected at least one name")
        unknown = [item for item in items if item not in valid]
        if unknown:
            raise Invalid(f"unknown name(s) {unknown}{suggestion(unknown[0], valid)}; valid names are {sorted(valid)}")
        if len(set(items)) != len(items):
            raise Invalid("names must not repeat")
        return items

    check.choices = valid
    return check


def one_of(valid: Iterable[str]) -> Check:
    """One name in `valid`."""
    valid = tuple(valid)

    def check(value: Any) -> str:
        if value not in valid:
            raise Invalid(f"expected one of {list(valid)}{suggestion(value, valid)}")
        return value

    check.choices = valid
    return check


def auto_or_integer(minimum: int) -> Check:
    """`"auto"` or an integer >= `minimum`."""
    as_integer = integer(minimum)

    def check(value: Any) -> str | int:
        if value == "auto":
            return value
        try:
            return as_integer(value)
        except Invalid:
            raise Invalid(f'expected "auto" or an integer >= {minimum}') from None

    return check


def bool_or_one_of(valid: Iterable[str]) -> Check:
    """`true`, `false` or one name in `valid`."""
    valid = tuple(valid)

    def check(value: Any) -> bool | str:
        if isinstance(value, bool) or value in valid:
            return value
        raise Invalid(f"expected true, false or one of {list(valid)}{suggestion(value, valid)}")

    check.choices = ("true", "false", *valid)
    return check


def boolean(value: Any) -> bool:
    """`true` or `false`."""
    if isinstance(value, bool):
        return value
    raise Invalid("expected true or false")


boolean.choices = ("true", "false")


def auto_or_bool(value: Any) -> str | bool:
    """`"auto"`, `true` or `false`."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise Invalid('expected "auto", true or false')


auto_or_bool.choices = ("auto", "true", "false")


def n_jobs(value: Any) -> int:
    if not (is_positive_int(value) or (type(value) is int and value == -1)):
        raise Invalid("expected a positive integer, or -1 for all CPUs")
    return int(value)


def pca_components(value: Any) -> int | float:
    variance = isinstance(value, float) and 0 < value < 1
    if not (is_positive_int(value) or variance):
        raise Invalid("expected an integer >= 1 (components) or a float in (0, 1) (explained variance)")
    return value


def memory_limit(value: Any) -> str | int:
    """A dask memory limit: bytes (integer), a size string ("4GB", "512MiB") or "auto"."""
    if is_positive_int(value) or (isinstance(value, str) and value.strip()):
        return value
    raise Invalid('expected a size such as "4GB", a number of bytes, or "auto"')


def device_ids(value: Any) -> tuple[int, ...]:
    """GPU device numbers, e.g. [0, 1]: integers >= 0, each once."""
    items = value if isinstance(value, list) else None
    if not items or not all(type(item) is int and item >= 0 for item in items) or len(set(items)) != len(items):
        raise Invalid("expected a non-empty list of distinct GPU numbers >= 0, e.g. [0, 1]")
    return tuple(items)


def table(value: Any) -> dict:
    if not isinstance(value, dict):
        raise Invalid("expected a table, e.g. {alpha = 0.35}")
    return value


def layers(value: Any) -> tuple[str | float, ...]:
    items = [value] if isinstance(value, (str, int, float)) else value
    if (
        not isinstance(items, list)
        or not items
        or not all(isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in items)
    ):
        raise Invalid('expected layer names, aliases ("stages", "stages:K", "stageK", "last:N", "top") or depths in [0, 1]')
    for item in items:
        if not isinstance(item, str) and not 0 <= item <= 1:
            raise Invalid(f"depth {item} is outside [0, 1]")
    return tuple(items)


def model_name(value: Any) -> str:
    """A registered backbone, in any letter case (returns its registered spelling), the
    path of a saved model (`is_model_file`; returned as given, resolved by `Checker.model_file`),
    or a keras-hub model (`keras_hub:...`, or a preset folder resolved by `build_backbones`)."""
    name = string(value)
    if is_model_file(name) or name.startswith(HUB_PREFIX):
        return name
    by_lower = {key.lower(): key for key in BACKBONES}
    if name.lower() not in by_lower:
        raise Invalid(
            f"unknown backbone{suggestion(name, BACKBONES)}; valid names are {sorted(BACKBONES)}, "
            f"the path of a Keras model saved with model.save (ending in .keras), or a keras-hub vision "
            f"transformer ({HUB_PREFIX}preset:NAME, {HUB_PREFIX}CLASS, a preset folder)"
        )
    return by_lower[name.lower()]


def preprocessing(value: Any) -> str:
    """A `preprocessing=` value of a model file: a mode or a family name."""
    try:
        resolve_preprocessing(string(value))
    except BackboneError:
        raise Invalid(
            f"expected one of {list(PREPROCESSING_MODES)} or a backbone family name whose "
            f"preprocess_input to use{suggestion(value, [*PREPROCESSING_MODES, *BACKBONES])}"
        ) from None
    return value


preprocessing.choices = PREPROCESSING_MODES


class Checker:
    """Collects problems while parsing; each problem names its section and key.

    Attributes:
        base_dir: The folder relative paths are relative to.
        problems: One line per problem found so far.
    """

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.problems: list[str] = []

    def report(self, where: str, message: str, value: Any = None, *, received: bool = True) -> None:
        suffix = f" Received: {value!r}" if received else ""
        self.problems.append(f"{where}: {message}.{suffix}")

    def section(
        self, raw: Any, where: str, keys: Mapping[str, Check | None], required: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Check the keys of one table against `keys` (key -> check, None for values kept as given).

        Returns:
            The parsed values of the valid keys.
        """
        if not isinstance(raw, dict):
            self.report(where, "expected a table", raw)
            return {}
        parsed = {}
        for key, value in raw.items():
            check = keys.get(key, False)
            if check is False:
                self.report(
                    f"{where} {key}",
                    f"unknown key{suggestion(key, keys)}; valid keys are {sorted(keys)}",
                    received=False,
                )
            elif check is None:
                parsed[key] = value
            else:
                try:
                    parsed[key] = check(value)
                except Invalid as problem:
                    self.report(f"{where} {key}", str(problem), value)
        for key in required:
            if key not in raw:
                self.report(f"{where} {key}", "this key is required", received=False)
        return parsed

    def path(self, where: str, value: Any, *, must_exist: bool) -> Path | None:
        """`value` resolved against `base_dir`, or None (and a problem) if it is not a path or is missing."""
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            self.report(where, "expected a path string", value)
            return None
        path = (self.base_dir / Path(value).expanduser()).resolve()
        if must_exist and not path.exists():
            self.report(where, f"{path} does not exist (relative paths are relative to {self.base_dir})", value)
            return None
        return path

    def weights(self, where: str, value: Any) -> str | None:
        """"imagenet", "saved", None for "none", or the absolute path of an existing weights file."""
        if not isinstance(value, str) or not value:
            self.report(where, 'expected "imagenet", "none" or the path of a weights file', value)
            return None
        parsed = parse_weights(value)
        if parsed in (None, "imagenet", SAVED_WEIGHTS):
            return parsed
        path = self.path(where, value, must_exist=True)
        if path is not None and not path.is_file():
            self.report(where, f"{path} is {file_kind(path.stat().st_mode)}, not a regular file", value)
        return None if path is None else str(path)

    def model_file(self, where: str, value: str) -> str | None:
        """The absolute path of a saved model file; a glob pattern (`*`, `?`, `[`) must match exactly one file."""
        if not any(char in value for char in "*?["):
            path = self.path(where, value, must_exist=True)
        else:
            matches = sorted(glob.glob(str(self.base_dir / Path(value).expanduser())))
            if len(matches) != 1:
                found = "no file" if not matches else f"{len(matches)} files ({', '.join(matches[:3])})"
                self.report(
                    where,
                    f"the pattern must match exactly one model file, it matches {found} (relative paths are "
                    f"relative to {self.base_dir}; a finetuned model exists once `layerprobe finetune` has run)",
                    value,
                )
                return None
            path = Path(matches[0]).resolve()
        if path is not None and not path.is_file():
            self.report(where, f"{path} is {file_kind(path.stat().st_mode)}, not a regular file", value)
            return None
        return None if path is None else str(path)
