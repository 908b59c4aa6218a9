"""Small argument checks and "did you mean" suggestions shared by every module.

Messages follow the Keras/scikit-learn form: what is wrong, what is expected,
and `Received: name=value`.
"""

from __future__ import annotations

import difflib
import numbers
from typing import Any, Iterable


def closest_names(name: Any, valid: Iterable[Any], *, n: int = 3, cutoff: float = 0.5) -> list[str]:
    """The valid names closest to `name`, a case-insensitive exact match first."""
    names = [str(value) for value in valid]
    same_but_case = [value for value in names if value.lower() == str(name).lower()]
    close = difflib.get_close_matches(str(name), names, n=n, cutoff=cutoff)
    return list(dict.fromkeys(same_but_case + close))[:n]


def did_you_mean(name: Any, valid: Iterable[Any], *, n: int = 1, cutoff: float = 0.5) -> str:
    """' Did you mean 'x'?' (or '' when nothing is close), to append to an error message."""
    close = closest_names(name, valid, n=n, cutoff=cutoff)
    return f" Did you mean {' or '.join(map(repr, close))}?" if close else ""


def unknown_name_message(what: str, name: Any, valid: Iterable[Any], *, argument: str | None = None) -> str:
    """The message for an unknown name: the closest valid one, the full list, what was received."""
    valid = sorted(map(str, valid))
    return (
        f"Unknown {what} {name!r}.{did_you_mean(name, valid)} Valid names are: {', '.join(map(repr, valid))}. "
        f"Received: {argument or what}={name!r}"
    )


def is_positive_int(value: Any) -> bool:
    """True for an integer >= 1 (numpy integers too; not bools, not floats)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def check_positive_int(name: str, value: Any, *, error: type[Exception] = ValueError) -> int:
    """Return `value` as an int, or raise `error` saying it must be a positive integer."""
    if not is_positive_int(value):
        raise error(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)
