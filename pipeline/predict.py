"""Apply a saved classifier to new images.

A classifier saved by a run records in its sidecar how its features were made
(`persistence.features_record`: the extractor's settings, the layer(s) it reads
and their store keys at training). Prediction rebuilds the extractor (one
forward pass for all the layers), checks that it still produces the same kind
of features (same weights digest, layer, pooling, preprocessing), extracts the
new images into the store and predicts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..features.core.errors import InputError
from ..features.extract import FeatureExtractor
from ..features.inputs import open_images
from ..features.store import FeatureStore
from .classifiers import flat_features
from .persistence import (
    load_classifier,
    read_features_record,
    read_sidecar,
    write_predictions,
)
from .threads import native_threads

__all__ = ["predict_images"]

# Key fields that must match between training and prediction (all but the dataset).
_FEATURE_FIELDS = ("backbone", "weights", "layer", "pooling", "input_size", "preprocessing", "dtype", "compute_dtype")


def predict_images(
    model_path: str | os.PathLike,
    data: str | os.PathLike,
    *,
    out: str | os.PathLike = "predictions.csv",
    store: str | os.PathLike | None = None,
    progress: bool = True,
    trust: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Predict the images of a folder or CSV file with a classifier saved by a run (one layer, or multi-layer).

    Args:
        model_path: The classifier's `.skops` file (its `.json` sidecar beside it),
            or the `.joblib` pickle an older layerprobe saved.
        data: Image folder (class subfolders, or just images: unlabelled) or
            CSV file (see `layerprobe.features.inputs.open_images`).
        out: Destination CSV: sample_id, true_label (when the data's class names
            are among the classifier's), predicted_label, and class probabilities
            when the classifier has them.
        store: Feature store for the new features; by default the one the
            classifier's features came from.
        progress: Show a progress bar while extracting.
        trust: Load a `.joblib` pickle of an older layerprobe, which runs any
            code it holds: only for files from a source you trust.
        log: Called with one line per event.

    Returns:
        The path of the predictions CSV.

    Raises:
        FileNotFoundError: If the classifier or its sidecar is missing.
        InputError: (a ``ValueError``) If the sidecar is corrupt or was not
            written by a run; the model is a pickle and `trust` is false; or the
            rebuilt extractor makes different features than the classifier was
            trained on (e.g. the weights file changed).
    """
    settings, layers, trained_keys = read_features_record(read_sidecar(model_path), model_path)
    estimator, sidecar = load_classifier(model_path, trust=trust)
    extractor = FeatureExtractor.from_config({**settings, "layers": layers})
    dataset = open_images(data)
    keys = extractor.keys(dataset)
    for layer, trained in zip(layers, trained_keys):
        _check_same_features(model_path, settings, keys[layer].to_dict(), trained)
    store = FeatureStore(sidecar["store"] if store is None else store)
    log(f"{len(dataset)} images; {extractor.backbone.architecture} layer{'s' if len(layers) > 1 else ''} "
        f"{', '.join(layers)} ({settings['pooling']})")
    report = extractor.extract(dataset, store, progress=progress, log=log)
    for sample_id, reason in report.skipped:
        log(f"skipped  {sample_id}: {reason}")
    features = [store.load(keys[layer], root=dataset.root) for layer in layers]
    first = features[0]
    X = np.hstack([flat_features(part) for part in features]) if len(features) > 1 else flat_features(first)
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


def _check_same_features(model_path: Any, settings: dict[str, Any], key: dict[str, Any], trained: dict[str, Any]) -> None:
    """Raise InputError if the rebuilt extractor makes other features of a layer than at training."""
    changed = [name for name in _FEATURE_FIELDS if key[name] != trained[name]]
    if changed:
        raise InputError(
            f"The features rebuilt for {model_path} differ from those it was trained on in {changed} "
            f"(e.g. the weights file {settings['weights']} changed since). Rerun the experiment to "
            f"retrain it. Received: {({name: key[name] for name in changed})}"
        )
