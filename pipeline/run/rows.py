"""Classifier rows: fit one classifier on one layer's features, or reuse the row saved by an earlier run.

A row's settings (`_fit_settings`: store key, classifier, grid, preprocessing,
PCA, folds, seed, split definition, and the search method where it is not a
plain grid search) key its record (`records.fit_or_reuse`): a matching row is
reused without loading features or fitting. Every row carries the LogME of its
layer's training features, computed once per layer when they are loaded.
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from sklearn.exceptions import ConvergenceWarning

from ...core.errors import IncompleteEntryError, InputError
from ...features.keys import FeatureKey
from ...features.plans import PlannedLayer
from ...features.store import FeatureSet, FeatureStore, FeatureStream
from ..classifiers import (
    CLASSIFIERS,
    check_features,
    fit_classifier,
    fit_streamed,
    flat_features,
    rows_in_memory,
    search_method,
)
from ..config import ExperimentConfig
from ..evaluate import evaluate
from ..persistence import features_record, save_classifier, write_predictions
from ..probes.logme import logme_score
from ..threads import with_native_threads
from .extractions import Extraction
from .records import RowRecord, RunRows, fit_or_reuse, jsonable
from .splits import class_problems

__all__ = [
    "LayerToFit",
    "RowJob",
    "ScoredRow",
    "fit_layer",
    "layer_logme",
    "load_splits",
    "row_record",
    "save_row",
    "score_row",
]


def _fit_settings(config: ExperimentConfig, key: FeatureKey, classifier: str, split: dict) -> dict:
    """Everything that determines a fitted row; a saved row with equal settings is reused."""
    settings = config.classifiers
    grid = settings.param_grid(classifier)
    fitted = {
        "store_key": key.digest,
        "classifier": classifier,
        "param_grid": grid,
        "preprocessing": list(settings.preprocessing),
        "pca_components": settings.pca_components,
        "cv": settings.cv,
        "seed": settings.seed,
        "split": split,
    }
    # Recorded where they differ from the first registry's, so that older rows of the others stay reusable.
    method = search_method(classifier, grid)
    if method != "grid":
        fitted["search"] = method
    if CLASSIFIERS[classifier].revision:
        fitted["revision"] = CLASSIFIERS[classifier].revision
    if settings.device != "cpu" and CLASSIFIERS[classifier].build_on_gpu is not None:
        fitted["device"] = settings.device
    return jsonable(fitted)


@dataclass(frozen=True)
class LayerToFit:
    """One layer's features to fit classifiers on."""

    extraction: Extraction
    info: PlannedLayer
    key: FeatureKey
    store: FeatureStore


class RowJob(NamedTuple):
    """One classifier row on one layer, and its `row_kind` ("screening" or "final")."""

    layer: LayerToFit
    classifier: str
    row_kind: str = "final"


def row_record(config: ExperimentConfig, layer: LayerToFit, classifier: str, split: dict) -> RowRecord:
    """The record of one classifier row on `layer`: `models/<store entry>/<classifier>.row.json`."""
    stem = config.output.dir / "models" / layer.key.entry_name / classifier
    return RowRecord(
        stem.with_name(f"{classifier}.row.json"), _fit_settings(config, layer.key, classifier, split),
        legacy_sidecar=stem.with_suffix(".json"),
    )


def load_splits(layer: LayerToFit, split: dict, *, stream: bool = False) -> tuple[FeatureSet | FeatureStream, FeatureSet]:
    """The layer's train and test features, checked before any classifier sees them.

    The entry is read in row blocks (`FeatureStore.stream`): only the test split, and the
    training split if it fits in memory (`rows_in_memory`), are held whole. With `stream`,
    a training split that does not fit stays a `FeatureStream`, which the rows fit from
    (`score_row`: `fit_streamed`); without it, it is loaded (a multi-layer probe needs it).

    Raises:
        InputError: If a class has fewer than 2 training rows once unreadable
            images are left out, or the features hold NaN or inf.
        IncompleteEntryError: If the entry is gone: the run extracted it or found it
            cached, so it was removed while the run used it (`layerprobe store rm`).
    """
    where = f"layer {layer.info.name} (store entry {layer.key.entry_name})"
    try:
        features = layer.store.stream(layer.key)
    except IncompleteEntryError as error:  # this run extracted it or found it cached before any fit
        raise IncompleteEntryError(
            f"The features of {where} were removed from the store {layer.store.root} while this run used them "
            f"(`layerprobe store rm`, or another process); the rows fitted so far are kept. Run again to extract "
            f"them again, and remove entries only when no run uses the store."
        ) from error
    train, test = (features.split(split[name]) for name in ("train_split", "test_split"))
    problem, _ = class_problems(features.class_names, train.y, test.y, split)
    if problem is not None:
        raise InputError(
            f"Unreadable images were left out of {where} (`layerprobe store info {layer.store.root} "
            f"{layer.key.entry_name}` lists them), and now {problem}"
        )
    test = test.load()  # this pass checks the entry's checksum
    fits = rows_in_memory(train.n_features, itemsize=train.dtype.itemsize)
    if not stream or fits is None or len(train) <= fits:
        train = train.load()
    for name, part in zip(("train_split", "test_split"), (train, test)):
        blocks = [flat_features(part)] if isinstance(part, FeatureSet) else part.blocks()
        start = 0
        for block in blocks:
            ids = part.sample_ids[start : start + len(block)]
            check_features(block, name=f"{where}, split {split[name]!r},", sample_ids=ids)
            start += len(block)
    return train, test


def layer_logme(train: FeatureSet | FeatureStream) -> float:
    """LogME of a layer's training features (`layerprobe.pipeline.probes.logme`): under a second per layer.

    Rounded to 6 significant digits, the precision of its float32 Gram matrix, so
    that machines (or dask workers) with other BLAS threads give the same value.
    """
    features = flat_features(train) if isinstance(train, FeatureSet) else train
    return float(f"{logme_score(features, train.y):.6g}")


@dataclass(frozen=True)
class ScoredRow:
    """One classifier fitted on a layer's training split and scored once on its test split, not saved yet.

    Small (the estimator, its test predictions): a dask worker that fitted it
    sends it back to the client, which saves it (`save_row`).
    """

    classifier: str
    row: dict
    estimator: Any
    best_params: dict
    cv_score: float
    scores: Any
    proba: Any
    test_sample_ids: Any
    test_y: Any
    class_names: tuple


_thread_rows = threading.local()
_recorder_lock = threading.Lock()
_recorder: dict[str, Any] = {"users": 0, "guard": None}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    caught = getattr(_thread_rows, "caught", None)
    if caught is not None and issubclass(category, ConvergenceWarning):
        caught.append(message)
    else:
        _recorder["show"](message, category, filename, lineno, file, line)


@contextlib.contextmanager
def convergence_warnings_of_this_thread():
    """Record the `ConvergenceWarning`s raised in this thread into a list; show every other warning.

    They are counted into the row and said once by the run (`RunRows.log_convergence`), not
    printed per fit. Rows are fitted side by side in threads and `warnings.catch_warnings` is
    process-wide, so one recorder is installed while any row fits and routes each warning to
    the list of the thread that raised it: each row counts its own.
    """
    with _recorder_lock:
        if _recorder["users"] == 0:
            guard = warnings.catch_warnings()
            guard.__enter__()
            warnings.simplefilter("always", ConvergenceWarning)
            # Another thread's catch_warnings (scikit-learn uses them inside fits) can restore ours
            # after we left: never keep ourselves as the function to show warnings with.
            if warnings.showwarning is not _show_warning:
                _recorder["show"] = warnings.showwarning
            _recorder["guard"] = guard
            warnings.showwarning = _show_warning
        _recorder["users"] += 1
    _thread_rows.caught = caught = []
    try:
        yield caught
    finally:
        _thread_rows.caught = None
        with _recorder_lock:
            _recorder["users"] -= 1
            if _recorder["users"] == 0:
                _recorder["guard"].__exit__(None, None, None)


@with_native_threads("train", n_jobs="config.classifiers.n_jobs")
def score_row(
    layer: LayerToFit,
    classifier: str,
    settings: dict,
    config: ExperimentConfig,
    train: FeatureSet | FeatureStream,
    test: FeatureSet,
    *,
    logme: float | None = None,
) -> ScoredRow:
    """Fit on the training split only (hyperparameters by CV inside it) and score once on the test split.

    `logme` is the layer's LogME (`layer_logme`), computed here when not given.
    """
    options = config.classifiers
    X_test = flat_features(test)
    search = dict(
        param_grid=settings["param_grid"], preprocessing=options.preprocessing, pca_components=options.pca_components,
        cv=options.cv, n_jobs=options.n_jobs, random_state=options.seed, device=options.device,
    )
    with convergence_warnings_of_this_thread() as caught:
        if isinstance(train, FeatureSet):
            fit = fit_classifier(flat_features(train), train.y, classifier, **search)
        else:  # a training split too big to hold whole
            fit = fit_streamed(train, classifier, **search)
    scores = evaluate(test.y, fit.estimator.predict(X_test), test.class_names)
    row = {
        "mode": "frozen",
        "backbone": layer.extraction.plan.architecture,
        "weights": layer.extraction.backbone.weights_label,
        "layer": layer.info.name,
        "stage": layer.info.stage,
        "depth": layer.info.depth,
        "pooling": layer.key.pooling,
        "classifier": classifier,
        "feature_dim": X_test.shape[1],
        "n_train": len(train.y),
        "n_test": len(X_test),
        "cv_score": fit.cv_score,
        "cv_se": fit.cv_se,
        "n_folds": fit.n_folds,
        "test_accuracy": scores.accuracy,
        "test_balanced_accuracy": scores.balanced_accuracy,
        "test_macro_f1": scores.macro_f1,
        "logme": layer_logme(train) if logme is None else logme,
        "fit_seconds": round(fit.fit_seconds, 3),
        "best_params": json.dumps(fit.best_params, sort_keys=True, default=str),
        "store_entry": layer.key.entry_name,
        "convergence_warnings": len(caught),
    }
    proba = fit.estimator.predict_proba(X_test) if hasattr(fit.estimator, "predict_proba") else None
    return ScoredRow(
        classifier, row, fit.estimator, fit.best_params, fit.cv_score, scores, proba,
        test.sample_ids, test.y, tuple(test.class_names),
    )


def save_row(layer: LayerToFit, stem: Path, scored: ScoredRow) -> tuple[dict, Path]:
    """Save a scored row's predictions and classifier (its sidecar last); returns the row and the model's path."""
    write_predictions(
        stem.with_name(f"{stem.name}.predictions.csv"), scored.test_sample_ids, scored.test_y, scored.scores.y_pred,
        scored.class_names, proba=scored.proba,
    )
    sidecar = {
        **features_record(layer.extraction.get_config(), [layer.info.name], layer.store.root, [layer.key]),
        "classifier": scored.classifier,
        "best_params": scored.best_params,
        "cv_score": scored.cv_score,
        "scores": scored.scores.as_dict(),
        "class_names": list(scored.class_names),
    }
    return scored.row, save_classifier(stem, scored.estimator, sidecar)


def fit_layer(
    layer: LayerToFit,
    config: ExperimentConfig,
    split: dict,
    rows: RunRows,
    *,
    classifiers: Sequence[str] | None = None,
    row_kind: str = "final",
) -> None:
    """Add one row per classifier for `layer` to `rows`: reused when finished before, else fitted.

    Features are loaded only if some classifier needs fitting (and then the
    layer's LogME is computed once for its rows).

    Args:
        classifiers: The classifiers of the rows; default: the config's names.
        row_kind: The rows' `row_kind`, "screening" or "final".

    Raises:
        InputError: Before any fit, if the layer's features hold NaN or inf, or
            unreadable images left a class with fewer than 2 training rows.
    """
    names = config.classifiers.names if classifiers is None else classifiers
    records = {classifier: row_record(config, layer, classifier, split) for classifier in names}
    features = None
    if any(record.saved() is None for record in records.values()):
        train, test = load_splits(layer, split, stream=True)
        features = train, test, layer_logme(train)

    def fit(classifier: str, record: RowRecord) -> tuple[dict, Path]:
        train, test, logme = features
        scored = score_row(layer, classifier, record.settings, config, train, test, logme=logme)
        return save_row(layer, record.path.with_name(classifier), scored)

    for classifier, record in records.items():
        row, fitted = fit_or_reuse(record, lambda: fit(classifier, record))
        rows.add({**row, "row_kind": row_kind}, fitted=fitted, what=f"{layer.info.name} / {classifier}")
