"""Lazy package exports (PEP 562): a name's module is imported on first access.

Packages whose public names pull in heavy libraries (Keras, scikit-learn)
expose them through this, so that importing the package itself stays cheap.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package`.

    Args:
        package: The package's `__name__`.
        exports: Public name -> the submodule that defines it, relative to `package`
            (e.g. `{"FeatureStore": "features.store"}`).

    Example:
        >>> __getattr__, __dir__ = lazy_exports(__name__, {"finetune": "phases"})
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace.get("__all__", ())) | set(exports))

    return __getattr__, __dir__
