"""Apply a saved classifier, or a model `layerprobe export` wrote, to new images.

A classifier saved by a run records in its sidecar how its features were made
(`persistence.features_record`: the extractor's settings, the layer(s) it reads
and their store keys at training). Prediction rebuilds the extractor (one
forward pass for all the layers), checks that it still produces the same kind
of features (same weights digest, layer, pooling, preprocessing), extracts the
new images into a feature store and predicts. A `.keras` model layerprobe
wrote (exported, finetuned, or a run's `recommended.keras`) takes the decoded
pixels directly (`layerprobe.pipeline.saved_models.read_saved_model`).

Both write the same CSV: the predicted class, the true class where the images'
class folders are among the classifier's, and one column per class of
probabilities (`proba_<class>`) or decision values (`score_<class>`):
`class_scores`. With true classes, the log gives the accuracy, each class's
precision and recall, and the confusion matrix, which is also drawn beside the
CSV (`predictions.confusion.png`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import InputError
from ..features.extract import FeatureExtractor
from ..features.inputs import open_images
from .classifiers import flat_features
from .persistence import (
    load_classifier,
    read_features_record,
    read_sidecar,
    write_predictions,
)
from .plots import plot_confusion
from .threads import native_threads

__all__ = ["class_scores", "predict_images", "rebuild_extractor"]

# Key fields that must match between training and prediction (all but the dataset).
_FEATURE_FIELDS = ("backbone", "weights", "layer", "pooling", "input_size", "preprocessing", "dtype", "compute_dtype")
_ANY_DATASET = "0" * 64  # the dataset field is not compared


def class_scores(estimator: Any, X: Any) -> tuple[str, np.ndarray]:
    """`("probabilities", P)` where `estimator` has `predict_proba`, else `("scores", decision values)`.

    Either way one column per class, whose argmax is the prediction: a
    two-class decision function (one value, positive for the second class)
    becomes the columns `[0, value]`, as an exported model gives them.
    """
    if hasattr(estimator, "predict_proba"):
        return "probabilities", np.asarray(estimator.predict_proba(X), dtype=np.float64)
    scores = np.asarray(estimator.decision_function(X), dtype=np.float64)
    if scores.ndim == 1:
        scores = np.column_stack([np.zeros_like(scores), scores])
    return "scores", scores


def rebuild_extractor(
    model_path: Any, sidecar: dict[str, Any], layers: Sequence[str] | None = None
) -> FeatureExtractor:
    """The extractor of a saved classifier's features (of `layers`, default all it reads), checked.

    Raises:
        InputError: If the sidecar was not written by a run, or the rebuilt
            extractor makes other features than at training (e.g. the weights
            file changed).
    """
    settings, all_layers, trained_keys = read_features_record(sidecar, model_path)
    layers = all_layers if layers is None else list(layers)
    extractor = FeatureExtractor.from_config({**settings, "layers": layers})
    keys = extractor.plan().keys(_ANY_DATASET)
    trained = dict(zip(all_layers, trained_keys))
    for layer in layers:
        key = keys[layer].to_dict()
        changed = [name for name in _FEATURE_FIELDS if key[name] != trained[layer][name]]
        if changed:
            raise InputError(
                f"The features rebuilt for {model_path} differ from those it was trained on in {changed} "
                f"(e.g. the weights file {settings['weights']} changed since). Rerun the experiment to "
                f"retrain it. Received: {({name: key[name] for name in changed})}"
            )
    return extractor


def _is_exported(model_path: Any) -> bool:
    return Path(model_path).suffix == ".keras"


def predict_images(
    model_path: str | os.PathLike,
    data: str | os.PathLike,
    *,
    out: str | os.PathLike = "predictions.csv",
    store: str | os.PathLike | None = None,
    progress: bool = True,
    trust: bool = False,
    batch_size: int = 32,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Predict the images of a folder, a CSV file or one image with a classifier saved by a run, or a Keras model.

    Args:
        model_path: The classifier's `.skops` file (its `.json` sidecar beside it),
            the `.joblib` pickle an older layerprobe saved, or a `.keras` model
            layerprobe wrote (`layerprobe export`, a finetuned `model.keras`, a
            run's `recommended.keras`; its `.layerprobe.json` beside it).
        data: Image folder (class subfolders, or just images: unlabelled), CSV
            file or one image file (see `layerprobe.features.inputs.open_images`).
        out: Destination CSV: sample_id, true_label (when the data's class names
            are among the classifier's), predicted_label, and `proba_<class>` or
            `score_<class>` columns (`class_scores`). With true labels, the
            confusion matrix is drawn beside it (`<out stem>.confusion.png`).
        store: Feature store for the new images' features; by default the one
            the classifier's features came from (the log says which). Not used
            by an exported model, which computes its features itself.
        progress: Show a progress bar while extracting.
        trust: Load a `.joblib` pickle of an older layerprobe, which runs any
            code it holds: only for files from a source you trust.
        batch_size: Images per forward pass of an exported model.
        log: Called with one line per event; with labelled images, the accuracy,
            the per-class precision and recall and the confusion matrix.
            Default: the logger "layerprobe.predict" at INFO (the CLI prints it).

    Returns:
        The path of the predictions CSV.

    Raises:
        FileNotFoundError: If the classifier or its sidecar is missing.
        InputError: (a ``ValueError``) If the sidecar is corrupt or was not
            written by a run; the model file is damaged, not a classifier, made
            for other features, or a `.keras` file without layerprobe metadata
            or that Keras's safe mode refuses; the model is a pickle and `trust`
            is false; or the rebuilt extractor makes different features than the
            classifier was trained on.
    """
    log = log or logging.getLogger("layerprobe.predict").info
    if _is_exported(model_path):
        dataset, (class_names, sample_ids, labels, kind, values) = _exported_scores(model_path, data, batch_size, log)
    else:
        _, layers, _ = read_features_record(read_sidecar(model_path), model_path)  # before any unpickling
        estimator, sidecar = load_classifier(model_path, trust=trust)
        dataset = open_images(data)
        extractor = rebuild_extractor(model_path, sidecar)
        _check_classifier(estimator, model_path, sidecar["class_names"],
                          sum(int(np.prod(extractor.feature_shapes[layer])) for layer in layers))
        from ..features.store import FeatureStore

        where = " (the classifier's training store; --store for another)" if store is None else ""
        store = FeatureStore(sidecar["store"] if store is None else store)
        log(f"{len(dataset)} images; {extractor.backbone.architecture} layer{'s' if len(layers) > 1 else ''} "
            f"{', '.join(layers)} ({extractor.get_config()['pooling']}); features cached in {store.root}{where}")
        report = extractor.extract(dataset, store, progress=progress, log=log)
        _log_skipped(log, report.skipped)
        features = [store.load(report.keys[layer], root=dataset.root) for layer in layers]
        X = np.hstack([flat_features(part) for part in features])
        class_names, sample_ids, labels = sidecar["class_names"], features[0].sample_ids, features[0].y
        with native_threads(X):
            kind, values = class_scores(estimator, X)
    y_pred = values.argmax(axis=1)
    y_true = _true_labels(dataset.class_names, labels, class_names)
    path = write_predictions(out, sample_ids, y_true, y_pred, class_names,
                             **{"proba" if kind == "probabilities" else "scores": values})
    if y_true is not None:
        _report(log, y_true, y_pred, class_names, path)
    log(f"predictions: {path} ({len(sample_ids)} images)")
    return path


def _check_classifier(estimator: Any, model_path: Any, class_names: Sequence[str], n_features: int) -> None:
    """Refuse an estimator that is not a classifier of `class_names` on `n_features` features (a foreign file)."""
    kind = type(estimator).__name__
    if not (hasattr(estimator, "predict_proba") or hasattr(estimator, "decision_function")):
        raise InputError(
            f"{model_path} holds a {kind}, which gives no class scores (no predict_proba or decision_function): "
            f"not a classifier a run saved. Predict with a row's model_path from results.csv. Received: {kind}"
        )
    n_classes = len(getattr(estimator, "classes_", class_names))
    width = getattr(estimator, "n_features_in_", n_features)
    if n_classes != len(class_names) or width != n_features:
        raise InputError(
            f"{model_path} holds a {kind} for {width} features and {n_classes} classes, but its sidecar describes "
            f"{n_features} features and {len(class_names)} classes: the file was replaced or belongs to another "
            f"row. Rerun the experiment to fit it again. Received: {kind} with n_features_in_={width}"
        )


def _report(log: Callable[[str], None], y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str],
            predictions: Path) -> None:
    """Log the accuracy, each class's precision and recall and the confusion matrix; draw it beside `predictions`."""
    import pandas as pd
    from sklearn.metrics import classification_report, confusion_matrix

    log(f"accuracy {np.mean(y_true == y_pred):.3f} ({int(np.sum(y_true == y_pred))} of {len(y_true)} labelled images)")
    shown = np.union1d(y_true, y_pred)  # the classes that occur: a 1,000-class model on a 3-class folder shows 3
    names = [str(class_names[index]) for index in shown]
    report = classification_report(y_true, y_pred, labels=shown, target_names=names, digits=3, zero_division=0)
    for line in report.rstrip().splitlines():
        log(line)
    matrix = confusion_matrix(y_true, y_pred, labels=shown)
    log("confusion matrix (rows: true class, columns: predicted class):")
    for line in pd.DataFrame(matrix, index=names, columns=names).to_string().splitlines():
        log(line)
    figure = plot_confusion(matrix, names, predictions.with_suffix(".confusion.png"),
                            title=f"{predictions.name}: {len(y_true)} labelled images")
    log(f"confusion matrix: {figure}")


def _true_labels(data_classes: Sequence[str], labels: np.ndarray, class_names: Sequence[str]) -> np.ndarray | None:
    """The images' labels as indices into `class_names`, or None if their classes are not all among them."""
    known = {name: index for index, name in enumerate(class_names)}
    if not set(data_classes) <= set(known):
        return None
    return np.array([known[data_classes[label]] for label in labels], dtype=np.int64)


def _log_skipped(log: Callable[[str], None], skipped: Sequence[tuple[str, str]]) -> None:
    for sample_id, reason in skipped:
        log(f"skipped  {sample_id}: {reason}")


def _exported_scores(model_path: Any, data: Any, batch_size: int, log: Callable[[str], None]):
    """The images of `data`, and (class names, sample ids, labels, kind, class scores) of the readable ones."""
    from ..features.inputs import iter_decoded_chunks
    from ..features.inputs.loader import check_decoded_memory
    from .saved_models import read_saved_model

    saved = read_saved_model(model_path)
    dataset = open_images(data)
    size = saved.input_size
    check_decoded_memory(batch_size, size, what="batch_size", dtype=dataset.pixel_dtype)
    metadata = saved.metadata
    log(f"{len(dataset)} images; model {model_path} ({size}x{size} pixels, {metadata.get('backbone')} "
        f"{'+'.join(metadata.get('layers', [])) or metadata.get('mode', '')})")
    chunks = [range(start, min(start + batch_size, len(dataset))) for start in range(0, len(dataset), batch_size)]
    rows, indices, skipped = [], [], []
    for chunk in iter_decoded_chunks(dataset, chunks, size, dtype=dataset.pixel_dtype):
        skipped += [(dataset.sample_ids[index], reason) for index, reason in chunk.skipped]
        if len(chunk.sample_indices):
            rows.append(np.asarray(saved.model.predict_on_batch(chunk.images), dtype=np.float64))
            indices.append(chunk.sample_indices)
    _log_skipped(log, skipped)
    if not rows:
        raise InputError(f"None of the {len(dataset)} images could be decoded; nothing was predicted. Received: data with "
                         f"{len(skipped)} unreadable images")
    kept = np.concatenate(indices)
    return dataset, (list(saved.class_names), [dataset.sample_ids[i] for i in kept], dataset.labels[kept],
                     saved.outputs, np.vstack(rows))
