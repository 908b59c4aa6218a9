"""Fitted classifiers and their predictions on disk: one model format, one sidecar format.

A saved classifier is two files beside each other: ``<stem>.skops`` (the
estimator, written by ``skops.io``, whose loader builds only the types it is
told to trust and runs no code from the file) and ``<stem>.json`` (a sidecar:
what the caller knows about it, plus library versions and the creation time).
A classifier saved by a run describes its features in the sidecar
(:func:`features_record`): the extractor's settings as
``FeatureExtractor.get_config()`` gives them, the layer(s) it reads and their
store keys, so that `layerprobe predict` can rebuild them.

Every file is written under a temporary name and committed by ``os.replace``,
and the sidecar is written last, so a crash leaves either the previous complete
files or no sidecar at all.

Older layerprobe versions saved the estimator as a ``.joblib`` pickle (sidecar
format 1). Their sidecars are still read; their estimators load only with
``trust=True``, because unpickling runs whatever code the file holds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn

from ..core.atomic import write_atomically
from ..core.errors import InputError
from ..core.files import RECORD_MAX_BYTES, read_bounded_text
from ..core.versions import layerprobe_version
from .evaluate import check_labels

__all__ = [
    "FORMAT_VERSION",
    "TRUSTED_TYPES",
    "classifier_files",
    "features_record",
    "load_classifier",
    "read_features_record",
    "read_sidecar",
    "save_classifier",
    "write_predictions",
]

FORMAT_VERSION = 2
"""Version of the saved-classifier layout; readers refuse versions other than this one and 1 (pickled estimators)."""

MODEL_SUFFIX = ".skops"
_PICKLE_SUFFIX = ".joblib"  # format 1
_SUFFIXES = (MODEL_SUFFIX, _PICKLE_SUFFIX, ".json")
_ADDED_KEYS = ("format_version", "model_file", "layerprobe_version", "sklearn_version", "created")

TRUSTED_TYPES = (
    "layerprobe.pipeline.probes.multilayer.MultiLayerProbe",
    "layerprobe.pipeline.probes.ridge.RidgeProbeCV",
    "layerprobe.pipeline.probes.streamed.StreamedLinearClassifier",
    "layerprobe.pipeline.probes.svm.LinearSVM",
)
"""Types a ``.skops`` file may hold beyond those ``skops.io`` trusts itself (scikit-learn's, numpy's)."""


def _stem(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in _SUFFIXES else path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def features_record(
    extractor: dict[str, Any], layers: Sequence[str], store: str | os.PathLike, keys: Sequence[Any]
) -> dict[str, Any]:
    """The sidecar entries that say how a classifier's features are made, for :func:`save_classifier`.

    Args:
        extractor: The extractor's settings, ``FeatureExtractor.get_config()``
            (``FeatureExtractor(**extractor)`` builds it again).
        layers: The layers the classifier reads, in the order of its columns.
        store: The feature store the training features came from.
        keys: The ``FeatureKey`` of each layer's training features.
    """
    return {
        "extractor": dict(extractor),
        "layers": list(layers),
        "store": str(store),
        "store_keys": [key.to_dict() for key in keys],
        "store_entries": [key.entry_name for key in keys],
    }


def read_features_record(sidecar: dict[str, Any], path: Any) -> tuple[dict[str, Any], list[str], list[dict]]:
    """``(extractor settings, layers, store keys)`` of a sidecar written by a run (format 1 or 2).

    Raises:
        InputError: If the sidecar has no features record (it was not saved by
            a run), or is a format-1 multi-layer probe (whose class changed).
    """
    if {"extractor", "layers", "store_keys"} <= set(sidecar):
        return dict(sidecar["extractor"]), list(sidecar["layers"]), list(sidecar["store_keys"])
    if "extractors" in sidecar:  # format 1, multi-layer probe
        raise InputError(
            f"{path} is a multi-layer probe saved by an older layerprobe, whose probe read a dict of layers; "
            f"this one reads one array. Delete its folder and rerun the experiment to fit it again. "
            f"Received: sidecar format_version {sidecar.get('format_version')!r}"
        )
    if "extractor" in sidecar and "store_key" in sidecar:  # format 1, one layer: the record named its layer
        record = dict(sidecar["extractor"])
        return {name: value for name, value in record.items() if name != "layer"}, [record["layer"]], [
            sidecar["store_key"]]
    raise InputError(
        f"{path} was not saved by `layerprobe run`: its sidecar has no extractor record, so "
        f"its features cannot be rebuilt. Use a classifier from a run's models/ folder. "
        f"Received: sidecar keys {sorted(sidecar)}"
    )


def save_classifier(path_stem: str | os.PathLike, estimator: Any, sidecar: dict[str, Any]) -> Path:
    """Saves a fitted estimator (``skops.io``) and its JSON sidecar, atomically.

    Args:
        path_stem: Destination without suffix; ``.skops`` and ``.json`` are added
            (a given ``.skops``, ``.joblib`` or ``.json`` suffix is replaced).
        estimator: The fitted estimator, e.g. ``FitResult.estimator``.
        sidecar: JSON-serializable facts to keep with it (:func:`features_record`,
            hyperparameters, scores, class_names, ...). Numpy scalars and arrays
            are converted.

    Returns:
        The path of the ``.skops`` file.

    Raises:
        ValueError: If ``sidecar`` is not JSON-serializable or uses a key this
            function adds itself. Nothing is written then.
    """
    import skops.io

    clashes = sorted(set(sidecar) & set(_ADDED_KEYS))
    if clashes:
        raise ValueError(
            f"sidecar keys {clashes} are added by save_classifier; rename them. "
            f"Received: sidecar keys {sorted(sidecar)}"
        )
    stem = _stem(path_stem)
    model_path, sidecar_path = stem.with_suffix(MODEL_SUFFIX), stem.with_suffix(".json")
    full_sidecar = {
        **sidecar,
        "format_version": FORMAT_VERSION,
        "model_file": model_path.name,
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
    write_atomically(model_path, lambda tmp: skops.io.dump(estimator, tmp))
    write_atomically(sidecar_path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    stem.with_suffix(_PICKLE_SUFFIX).unlink(missing_ok=True)  # a format-1 estimator this save replaces
    return model_path


def _model_path(stem: Path, sidecar: dict[str, Any]) -> Path:
    if sidecar.get("format_version") == 1:
        return stem.with_suffix(_PICKLE_SUFFIX)
    return stem.with_name(Path(str(sidecar.get("model_file", ""))).name or stem.name + MODEL_SUFFIX)


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of a classifier saved by :func:`save_classifier`, without loading the estimator.

    Args:
        path: The model file (``.skops``, or ``.joblib`` of format 1), the
            ``.json`` sidecar or their common stem.

    Raises:
        FileNotFoundError: If the sidecar or the estimator it names is missing.
        InputError: (a ``ValueError``) If the sidecar is not valid JSON or has
            an unknown format version.
    """
    stem = _stem(path)
    sidecar_path = stem.with_suffix(".json")
    if not sidecar_path.exists():  # one that is there but not a regular file is named by read_bounded_text
        models = [stem.with_suffix(suffix) for suffix in (MODEL_SUFFIX, _PICKLE_SUFFIX)]
        found = next((model for model in models if model.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"No saved classifier at {stem.with_suffix(MODEL_SUFFIX)}. Check the path, or fit and save the "
                f"classifier with save_classifier. Received: path={str(path)!r}"
            )
        raise FileNotFoundError(
            f"{found} has no sidecar {sidecar_path.name}, so its save did not finish. "
            f"Delete {found.name} and fit and save the classifier again. Received: path={str(path)!r}"
        )
    try:
        sidecar = json.loads(read_bounded_text(sidecar_path, "classifier sidecar", RECORD_MAX_BYTES))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(
            f"The sidecar {sidecar_path} is corrupt ({error}). Delete {stem.name}.json and its model file "
            f"and fit and save the classifier again. Received: path={str(path)!r}"
        ) from error
    found = sidecar.get("format_version") if isinstance(sidecar, dict) else None
    if found not in (1, FORMAT_VERSION):
        raise InputError(
            f"The sidecar {sidecar_path} has format_version {found!r}; this layerprobe reads "
            f"versions 1 and {FORMAT_VERSION}. Save the classifier again with this version. "
            f"Received: path={str(path)!r}"
        )
    model_path = _model_path(stem, sidecar)
    if not model_path.is_file():
        raise FileNotFoundError(
            f"No saved classifier at {model_path}: the sidecar {sidecar_path.name} names it. Fit and save the "
            f"classifier again. Received: path={str(path)!r}"
        )
    return sidecar


def classifier_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(estimator file, sidecar) of a classifier saved by :func:`save_classifier` (see :func:`read_sidecar`)."""
    stem = _stem(path)
    return _model_path(stem, read_sidecar(path)), stem.with_suffix(".json")


def load_classifier(path: str | os.PathLike, *, trust: bool = False) -> tuple[Any, dict[str, Any]]:
    """Loads an estimator saved by :func:`save_classifier`, with its sidecar.

    A ``.skops`` file is loaded by ``skops.io``, which builds only scikit-learn's
    and numpy's types and :data:`TRUSTED_TYPES`, and runs no code from the file.
    A ``.joblib`` file (format 1, older layerprobe) is a pickle: loading it runs
    any code it holds, so it is loaded only with ``trust=True``.

    Args:
        path: The model file, the ``.json`` sidecar or their common stem.
        trust: Load a format-1 pickle. Only for files from a source you trust.

    Returns:
        ``(estimator, sidecar)``.

    Raises:
        FileNotFoundError: If the estimator or the sidecar file is missing.
        InputError: (a ``ValueError``) If the sidecar is not valid JSON or has
            an unknown format version; if the model is a pickle and ``trust`` is
            false; if a ``.skops`` file holds types outside the trusted ones.
    """
    import skops.io

    sidecar = read_sidecar(path)
    model_path = _model_path(_stem(path), sidecar)
    if model_path.suffix == _PICKLE_SUFFIX:
        if not trust:
            raise InputError(
                f"{model_path} is a pickle saved by an older layerprobe; loading it runs any code it holds. "
                f"Load it only if you trust where it came from: `layerprobe predict --trust` (trust=True in the "
                f"API), or rerun the experiment after deleting it to save the classifier as .skops. "
                f"Received: path={str(path)!r}"
            )
        import joblib

        return joblib.load(model_path), sidecar
    try:
        untrusted = sorted(set(skops.io.get_untrusted_types(file=model_path)) - set(TRUSTED_TYPES))
        estimator = None if untrusted else skops.io.load(model_path, trusted=list(TRUSTED_TYPES))
    except Exception as error:  # zipfile.BadZipFile, KeyError, ValueError, TypeError...: a damaged or foreign file
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(
            f"{model_path} cannot be read as a saved classifier ({type(error).__name__}: {first_line}): it is "
            f"truncated, damaged or not a .skops file. Fit and save the classifier again (rerun the experiment). "
            f"Received: path={str(path)!r}"
        ) from error
    if untrusted:
        raise InputError(
            f"{model_path} holds types layerprobe does not trust to build: {untrusted}. A run saves only "
            f"scikit-learn and layerprobe estimators; if you made this file yourself and trust it, load it "
            f"with skops.io.load(path, trusted=[...]). Received: path={str(path)!r}"
        )
    return estimator, sidecar


def write_predictions(
    path: str | os.PathLike,
    sample_ids: Sequence[Any],
    y_true: Any | None,
    y_pred: Any,
    class_names: Sequence[str],
    *,
    proba: Any | None = None,
    scores: Any | None = None,
) -> Path:
    """Writes one row per sample to a CSV file, atomically.

    Columns are ``sample_id``, ``true_label`` and ``predicted_label`` (class names;
    ``true_label`` is empty when ``y_true`` is None), then ``proba_<class name>``
    per class when ``proba`` is given, or ``score_<class name>`` per class when
    ``scores`` (decision values) are.

    Args:
        path: Destination ``.csv`` file.
        sample_ids: One identifier per sample, e.g. image paths.
        y_true: True integer labels, or None for unlabeled samples.
        y_pred: Predicted integer labels.
        class_names: Names of the classes, in label order.
        proba: Optional class probabilities, shape ``(n_samples, len(class_names))``.
        scores: Optional decision values of that shape, for classifiers without
            probabilities (see `layerprobe.pipeline.predict.class_scores`).

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
    if proba is not None and scores is not None:
        raise InputError("Give proba or scores, not both. Received: both")
    for prefix, values in (("proba", proba), ("score", scores)):
        if values is None:
            continue
        values = np.asarray(values, dtype=float)
        if values.shape != (n_samples, len(class_names)):
            raise InputError(
                f"{prefix if prefix == 'proba' else 'scores'} must have shape (n_samples, n_classes). "
                f"Received: shape {values.shape}, {n_samples} sample_ids and {len(class_names)} class_names"
            )
        columns.update({f"{prefix}_{name}": values[:, i] for i, name in enumerate(names)})
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
