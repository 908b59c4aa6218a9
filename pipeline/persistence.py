"""Fitted classifiers and their predictions on disk.

A saved classifier is two files beside each other: ``<stem>.joblib`` (the
estimator) and ``<stem>.json`` (a sidecar with what the caller knows about it,
plus library versions and the creation time). Every file is written under a
temporary name and committed by ``os.replace``, and the sidecar is written last,
so a crash leaves either the previous complete files or no sidecar at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn

from ..features.core.atomic import write_atomically
from ..features.core.errors import InputError
from ..features.core.versions import layerprobe_version
from .evaluate import check_labels

__all__ = ["FORMAT_VERSION", "load_classifier", "read_sidecar", "save_classifier", "write_predictions"]

FORMAT_VERSION = 1
"""Version of the saved-classifier layout; readers refuse other versions."""

_SUFFIXES = (".joblib", ".json")
_ADDED_KEYS = ("format_version", "layerprobe_version", "sklearn_version", "created")


def _stem(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in _SUFFIXES else path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def save_classifier(
    path_stem: str | os.PathLike, estimator: Any, sidecar: dict[str, Any]
) -> Path:
    """Saves a fitted estimator and its JSON sidecar, atomically.

    Args:
        path_stem: Destination without suffix; ``.joblib`` and ``.json`` are added
            (a given ``.joblib`` or ``.json`` suffix is replaced).
        estimator: The fitted estimator, e.g. ``FitResult.estimator``.
        sidecar: JSON-serializable facts to keep with it (store key, hyperparameters,
            scores, class_names, ...). Numpy scalars and arrays are converted.

    Returns:
        The path of the ``.joblib`` file.

    Raises:
        ValueError: If ``sidecar`` is not JSON-serializable or uses a key this
            function adds itself. Nothing is written then.
    """
    clashes = sorted(set(sidecar) & set(_ADDED_KEYS))
    if clashes:
        raise ValueError(
            f"sidecar keys {clashes} are added by save_classifier; rename them. "
            f"Received: sidecar keys {sorted(sidecar)}"
        )
    full_sidecar = {
        **sidecar,
        "format_version": FORMAT_VERSION,
        "layerprobe_version": layerprobe_version(),
        "sklearn_version": sklearn.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        text = json.dumps(full_sidecar, indent=2, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as error:
        raise ValueError(
            "sidecar must hold only JSON-serializable values (str, numbers, lists, dicts); "
            f"convert the others before saving. Received: {error}"
        ) from error
    stem = _stem(path_stem)
    model_path, sidecar_path = stem.with_suffix(".joblib"), stem.with_suffix(".json")
    write_atomically(model_path, lambda tmp: joblib.dump(estimator, tmp))
    write_atomically(sidecar_path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    return model_path


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of a classifier saved by :func:`save_classifier`, without loading the estimator.

    Args:
        path: The ``.joblib`` file, the ``.json`` sidecar or their common stem.

    Raises:
        FileNotFoundError: If the estimator or the sidecar file is missing.
        InputError: (a ``ValueError``) If the sidecar is not valid JSON or has
            an unknown format version.
    """
    stem = _stem(path)
    model_path, sidecar_path = stem.with_suffix(".joblib"), stem.with_suffix(".json")
    if not model_path.is_file():
        raise FileNotFoundError(
            f"No saved classifier at {model_path}. Check the path, or fit and save the "
            f"classifier with save_classifier. Received: path={str(path)!r}"
        )
    if not sidecar_path.is_file():
        raise FileNotFoundError(
            f"{model_path} has no sidecar {sidecar_path.name}, so its save did not finish. "
            f"Delete {model_path.name} and fit and save the classifier again. "
            f"Received: path={str(path)!r}"
        )
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(
            f"The sidecar {sidecar_path} is corrupt ({error}). Delete both "
            f"{stem.name}.joblib and {stem.name}.json and fit and save the classifier again. "
            f"Received: path={str(path)!r}"
        ) from error
    found = sidecar.get("format_version") if isinstance(sidecar, dict) else None
    if found != FORMAT_VERSION:
        raise InputError(
            f"The sidecar {sidecar_path} has format_version {found!r}; this layerprobe reads "
            f"version {FORMAT_VERSION}. Save the classifier again with this version. "
            f"Received: path={str(path)!r}"
        )
    return sidecar


def load_classifier(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Loads an estimator saved by :func:`save_classifier`, with its sidecar.

    Loading runs pickle: only load files you trust.

    Args:
        path: The ``.joblib`` file, the ``.json`` sidecar or their common stem.

    Returns:
        ``(estimator, sidecar)``.

    Raises:
        FileNotFoundError: If the estimator or the sidecar file is missing.
        InputError: (a ``ValueError``) If the sidecar is not valid JSON or has
            an unknown format version.
    """
    sidecar = read_sidecar(path)
    return joblib.load(_stem(path).with_suffix(".joblib")), sidecar


def write_predictions(
    path: str | os.PathLike,
    sample_ids: Sequence[Any],
    y_true: Any | None,
    y_pred: Any,
    class_names: Sequence[str],
    *,
    proba: Any | None = None,
) -> Path:
    """Writes one row per sample to a CSV file, atomically.

    Columns are ``sample_id``, ``true_label`` and ``predicted_label`` (class names;
    ``true_label`` is empty when ``y_true`` is None), then ``proba_<class name>``
    per class when ``proba`` is given.

    Args:
        path: Destination ``.csv`` file.
        sample_ids: One identifier per sample, e.g. image paths.
        y_true: True integer labels, or None for unlabeled samples.
        y_pred: Predicted integer labels.
        class_names: Names of the classes, in label order.
        proba: Optional class probabilities, shape ``(n_samples, len(class_names))``.

    Returns:
        The path written.

    Raises:
        InputError: (a ``ValueError``) If a label is not an index into
            ``class_names`` or the lengths or shapes disagree.
    """
    names = np.asarray([str(name) for name in class_names], dtype=object)
    y_pred = check_labels(y_pred, class_names, name="y_pred")
    n_samples = len(sample_ids)
    columns = {
        "sample_id": list(sample_ids),
        "true_label": (
            [None] * n_samples
            if y_true is None
            else names[check_labels(y_true, class_names, name="y_true")]
        ),
        "predicted_label": names[y_pred],
    }
    if proba is not None:
        proba = np.asarray(proba, dtype=float)
        if proba.shape != (n_samples, len(class_names)):
            raise InputError(
                "proba must have shape (n_samples, n_classes). "
                f"Received: proba with shape {proba.shape}, {n_samples} sample_ids and "
                f"{len(class_names)} class_names"
            )
        columns.update({f"proba_{name}": proba[:, i] for i, name in enumerate(names)})
    lengths = {key: len(value) for key, value in columns.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(
            f"sample_ids, y_true and y_pred must have the same length. Received: lengths {lengths}"
        )
    path = Path(path)
    frame = pd.DataFrame(columns)
    # File and class names that are not UTF-8 are written as their own bytes (see `encode_text`).
    write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False, errors="surrogateescape"))
    return path
