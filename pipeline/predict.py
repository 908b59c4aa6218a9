"""Apply a saved classifier to new images.

A classifier saved by a run records in its sidecar how its features were
made (`extractor`: backbone, weights, layer, pooling, input size, ...) and
the store key they had; a multi-layer probe records one of each per selected
layer (`extractors`, `store_keys`). Prediction rebuilds the extractor (one
forward pass for all the layers), checks that it still produces the same kind
of features (same weights digest, layer, pooling, preprocessing), extracts the
new images into the store and predicts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..features.backend import import_keras_quietly
from ..features.core.errors import InputError
from ..features.extract import FeatureExtractor
from ..features.inputs import open_images
from ..features.store import FeatureSet, FeatureStore
from .persistence import load_classifier, write_predictions
from .threads import native_threads

__all__ = ["extractor_record", "extractor_from_record", "flat_features", "predict_images"]

# Key fields that must match between training and prediction (all but the dataset).
_FEATURE_FIELDS = ("backbone", "weights", "layer", "pooling", "input_size", "preprocessing", "dtype", "compute_dtype")


def extractor_record(settings: dict[str, Any], layer: str, input_size: int) -> dict[str, Any]:
    """What a sidecar records to rebuild the extractor of one layer's features.

    Args:
        settings: The `FeatureExtractor` arguments the features came from.
        layer: The layer's name.
        input_size: The input size the extractor was built for (resolved default).
    """
    return {
        "model": settings["model"],
        "weights": settings["weights"],
        "model_kwargs": dict(settings.get("model_kwargs") or {}),
        "preprocessing": settings.get("preprocessing"),
        "seed": settings["seed"],
        "layer": layer,
        "pooling": settings["pooling"],
        "input_size": input_size,
        "batch_size": settings["batch_size"],
        "dtype": settings["dtype"],
        "mixed_precision": settings.get("mixed_precision", False),
    }


def extractor_from_record(record: dict[str, Any], layers: Sequence[str] | None = None) -> FeatureExtractor:
    """Rebuild the extractor described by :func:`extractor_record` (Keras is imported quietly first).

    `layers`: every layer to extract in the one forward pass (default: the record's layer).
    """
    import_keras_quietly()
    return FeatureExtractor(
        record["model"],
        weights=record["weights"],
        layers=list(layers or [record["layer"]]),
        pooling=record["pooling"],
        input_size=record["input_size"],
        batch_size=record["batch_size"],
        dtype=record["dtype"],
        mixed_precision=record["mixed_precision"],
        model_kwargs=record["model_kwargs"],
        preprocessing=record.get("preprocessing"),
        seed=record["seed"],
    )


def flat_features(features: FeatureSet) -> np.ndarray:
    """One row per sample: pooled features as they are, unpooled maps flattened."""
    return features.X.reshape(len(features.X), -1)


def predict_images(
    model_path: str | os.PathLike,
    data: str | os.PathLike,
    *,
    out: str | os.PathLike = "predictions.csv",
    store: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Predict the images of a folder or CSV file with a classifier saved by a run (one layer, or multi-layer).

    Args:
        model_path: The classifier's `.joblib` file (its `.json` sidecar beside it).
        data: Image folder (class subfolders, or just images: unlabelled) or
            CSV file (see `layerprobe.features.inputs.open_images`).
        out: Destination CSV: sample_id, true_label (when the data's class names
            are among the classifier's), predicted_label, and class probabilities
            when the classifier has them.
        store: Feature store for the new features; by default the one the
            classifier's features came from.
        progress: Show a progress bar while extracting.
        log: Called with one line per event.

    Returns:
        The path of the predictions CSV.

    Raises:
        FileNotFoundError: If the classifier or its sidecar is missing.
        InputError: (a ``ValueError``) If the sidecar is corrupt or was not
            written by a run, or the rebuilt extractor makes different features
            than the classifier was trained on (e.g. the weights file changed).
    """
    estimator, sidecar = load_classifier(model_path)
    trained = _trained_layers(sidecar, model_path)
    layers = [record["layer"] for record, _ in trained]
    extractor = extractor_from_record(trained[0][0], layers)
    dataset = open_images(data)
    keys = extractor.keys(dataset)
    for record, trained_key in trained:
        _check_same_features(model_path, record, keys[record["layer"]].to_dict(), trained_key)
    store = FeatureStore(sidecar["store"] if store is None else store)
    log(f"{len(dataset)} images; {extractor.backbone.architecture} layer{'s' if len(layers) > 1 else ''} "
        f"{', '.join(layers)} ({trained[0][0]['pooling']})")
    report = extractor.extract(dataset, store, progress=progress, log=log)
    for sample_id, reason in report.skipped:
        log(f"skipped  {sample_id}: {reason}")
    features = {layer: store.load(keys[layer], root=dataset.root) for layer in layers}
    first = features[layers[0]]
    if "extractors" in sidecar:  # a multi-layer probe reads a dict of layers, even of one selected layer
        X = {layer: flat_features(part) for layer, part in features.items()}
    else:
        X = flat_features(first)
    class_names = sidecar["class_names"]
    known = {name: index for index, name in enumerate(class_names)}
    y_true = None
    if set(first.class_names) <= set(known):
        y_true = np.array([known[first.class_names[label]] for label in first.y], dtype=np.int64)
    with native_threads(X):
        proba = estimator.predict_proba(X) if hasattr(estimator, "predict_proba") else None
        y_pred = estimator.predict(X)
    path = write_predictions(out, first.sample_ids, y_true, y_pred, class_names, proba=proba)
    log(f"predictions: {path} ({len(first.sample_ids)} images)")
    return path


def _trained_layers(sidecar: dict[str, Any], model_path: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(extractor record, store key at training) of each layer the classifier reads: one, or a multi-layer selection.

    Raises:
        InputError: If the sidecar has neither form (not saved by a run), or the
            layers of a multi-layer probe were not made by one extractor.
    """
    if "extractors" in sidecar and "store_keys" in sidecar:
        trained = list(zip(sidecar["extractors"], sidecar["store_keys"], strict=True))
    elif "extractor" in sidecar and "store_key" in sidecar:
        trained = [(sidecar["extractor"], sidecar["store_key"])]
    else:
        raise InputError(
            f"{model_path} was not saved by `layerprobe run`: its sidecar has no extractor record, so "
            f"its features cannot be rebuilt. Use a classifier from a run's models/ folder. "
            f"Received: sidecar keys {sorted(sidecar)}"
        )
    shared = [{name: value for name, value in record.items() if name != "layer"} for record, _ in trained]
    if any(other != shared[0] for other in shared[1:]):
        raise InputError(
            f"The layers of {model_path} were made by different extractors, so one forward pass cannot "
            f"rebuild them; its sidecar is not one a run writes. Received: extractors {[r for r, _ in trained]}"
        )
    return trained


def _check_same_features(model_path: Any, record: dict[str, Any], key: dict[str, Any], trained: dict[str, Any]) -> None:
    """Raise InputError if the rebuilt extractor makes other features of `record`'s layer than at training."""
    changed = [name for name in _FEATURE_FIELDS if key[name] != trained[name]]
    if changed:
        raise InputError(
            f"The features rebuilt for {model_path} differ from those it was trained on in {changed} "
            f"(e.g. the weights file {record['weights']} changed since). Rerun the experiment to "
            f"retrain it. Received: {({name: key[name] for name in changed})}"
        )
