"""Classifier rows: fit one classifier on one layer's features, or reuse the row saved by an earlier run.

A finished row is recognised by its saved classifier's sidecar, which
records everything that determines the fit (`fit_settings`: store key,
classifier, grid, preprocessing, PCA, folds, seed, split definition, and the
search method where it is not a plain grid search): a matching row is reused
without loading features or fitting. Every row carries the LogME of its
layer's training features, computed once per layer when they are loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from ...features.core.errors import InputError
from ...features.keys import FeatureKey
from ...features.plans import PlannedLayer
from ...features.store import FeatureSet, FeatureStore
from ..classifiers import CLASSIFIERS, check_features, fit_classifier, search_method
from ..config import ExperimentConfig
from ..evaluate import evaluate
from ..persistence import read_sidecar, save_classifier, write_predictions
from ..predict import extractor_record, flat_features
from ..probes.logme import logme_score
from ..results import ResultsTable
from ..threads import with_native_threads
from .extractions import Extraction
from .splits import class_problems

__all__ = [
    "LayerToFit",
    "RowJob",
    "ScoredRow",
    "fit_layer",
    "layer_logme",
    "fit_settings",
    "finished_row",
    "jsonable",
    "load_splits",
    "save_row",
    "score_row",
]


def jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), so that saved and new settings compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def fit_settings(config: ExperimentConfig, key: FeatureKey, classifier: str, split: dict) -> dict:
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
    return jsonable(fitted)


def finished_row(stem: Path, settings: dict) -> dict | None:
    """The row saved with a classifier fitted under `settings`, or None (its sidecar is read, not the estimator)."""
    try:
        sidecar = read_sidecar(stem)
    except (FileNotFoundError, InputError):
        return None
    if sidecar.get("fit_settings") != settings or "row" not in sidecar:
        return None
    return {**sidecar["row"], "model_path": str(stem.with_suffix(".joblib"))}


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


def load_splits(layer: LayerToFit, split: dict) -> tuple[FeatureSet, FeatureSet]:
    """The layer's train and test features, checked before any classifier sees them.

    Raises:
        InputError: If a class has fewer than 2 training rows once unreadable
            images are left out, or the features hold NaN or inf.
    """
    features = layer.store.load(layer.key)
    train, test = (features.split(split[name]) for name in ("train_split", "test_split"))
    where = f"layer {layer.info.name} (store entry {layer.key.entry_name})"
    problem, _ = class_problems(features.class_names, train.y, test.y, split)
    if problem is not None:
        raise InputError(
            f"Unreadable images were left out of {where} (`layerprobe store info {layer.store.root} "
            f"{layer.key.entry_name}` lists them), and now {problem}"
        )
    for name, part in zip(("train_split", "test_split"), (train, test)):
        check_features(flat_features(part), name=f"{where}, split {split[name]!r},", sample_ids=part.sample_ids)
    return train, test


def layer_logme(train: FeatureSet) -> float:
    """LogME of a layer's training features (`layerprobe.pipeline.probes.logme`): under a second per layer.

    Rounded to 6 significant digits, the precision of its float32 Gram matrix, so
    that machines (or dask workers) with other BLAS threads give the same value.
    """
    return float(f"{logme_score(flat_features(train), train.y):.6g}")


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


@with_native_threads("train.X", n_jobs="config.classifiers.n_jobs")
def score_row(
    layer: LayerToFit,
    classifier: str,
    settings: dict,
    config: ExperimentConfig,
    train: FeatureSet,
    test: FeatureSet,
    *,
    logme: float | None = None,
) -> ScoredRow:
    """Fit on the training split only (hyperparameters by CV inside it) and score once on the test split.

    `logme` is the layer's LogME (`layer_logme`), computed here when not given.
    """
    options = config.classifiers
    X_train, X_test = flat_features(train), flat_features(test)
    fit = fit_classifier(
        X_train,
        train.y,
        classifier,
        param_grid=settings["param_grid"],
        preprocessing=options.preprocessing,
        pca_components=options.pca_components,
        cv=options.cv,
        n_jobs=options.n_jobs,
        random_state=options.seed,
    )
    scores = evaluate(fit.estimator, X_test, test.y, test.class_names)
    row = {
        "mode": "frozen",
        "backbone": layer.extraction.plan.architecture,
        "weights": layer.extraction.backbone.weights_label,
        "layer": layer.info.name,
        "stage": layer.info.stage,
        "depth": layer.info.depth,
        "pooling": layer.key.pooling,
        "classifier": classifier,
        "feature_dim": X_train.shape[1],
        "n_train": len(X_train),
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
    }
    proba = fit.estimator.predict_proba(X_test) if hasattr(fit.estimator, "predict_proba") else None
    return ScoredRow(
        classifier, row, fit.estimator, fit.best_params, fit.cv_score, scores, proba,
        test.sample_ids, test.y, tuple(test.class_names),
    )


def save_row(layer: LayerToFit, stem: Path, settings: dict, scored: ScoredRow) -> dict:
    """Save a scored row's classifier, predictions and sidecar; returns the row with its `model_path`.

    The old sidecar goes first: the files of a save killed half-way are never
    paired with the row of an earlier fit.
    """
    stem.with_suffix(".json").unlink(missing_ok=True)
    predictions_path = stem.with_name(f"{stem.name}.predictions.csv")
    write_predictions(
        predictions_path, scored.test_sample_ids, scored.test_y, scored.scores.y_pred, scored.class_names,
        proba=scored.proba,
    )
    sidecar = {
        "fit_settings": settings,
        "row": scored.row,
        "store_key": layer.key.to_dict(),
        "store_entry": layer.key.entry_name,
        "store": str(layer.store.root),
        "extractor": extractor_record(layer.extraction.settings, layer.info.name, layer.extraction.plan.input_size),
        "classifier": scored.classifier,
        "best_params": scored.best_params,
        "cv_score": scored.cv_score,
        "scores": scored.scores.as_dict(),
        "class_names": list(scored.class_names),
    }
    model_path = save_classifier(stem, scored.estimator, sidecar)
    return {**scored.row, "model_path": str(model_path)}


def _fit_row(
    layer: LayerToFit,
    classifier: str,
    settings: dict,
    stem: Path,
    config: ExperimentConfig,
    train: FeatureSet,
    test: FeatureSet,
    logme: float,
) -> dict:
    """Fit on the training split only, score once on the test split, save everything."""
    return save_row(layer, stem, settings, score_row(layer, classifier, settings, config, train, test, logme=logme))


def fit_layer(
    layer: LayerToFit,
    config: ExperimentConfig,
    split: dict,
    table: ResultsTable,
    log: Callable[[str], None],
    *,
    classifiers: Sequence[str] | None = None,
    row_kind: str = "final",
) -> int:
    """Add one row per classifier for `layer`: reused when finished before, else fitted.

    Features are loaded only if some classifier needs fitting (and then the
    layer's LogME is computed once for its rows). Returns the number fitted.

    Args:
        classifiers: The classifiers of the rows; default: the config's names.
        row_kind: The rows' `row_kind`, "screening" or "final".

    Raises:
        InputError: Before any fit, if the layer's features hold NaN or inf, or
            unreadable images left a class with fewer than 2 training rows.
    """
    jobs = []
    for classifier in config.classifiers.names if classifiers is None else classifiers:
        stem = config.output.dir / "models" / layer.key.entry_name / classifier
        settings = fit_settings(config, layer.key, classifier, split)
        jobs.append((classifier, stem, settings, finished_row(stem, settings)))
    features, logme = None, None
    if any(finished is None for *_, finished in jobs):
        features = load_splits(layer, split)
        logme = layer_logme(features[0])
    for classifier, stem, settings, finished in jobs:
        row = finished or _fit_row(layer, classifier, settings, stem, config, *features, logme)
        row = {**row, "row_kind": row_kind}
        log(
            f"  {'fitted' if finished is None else 'reused'} {layer.info.name} / {classifier}: "
            f"cv {row['cv_score']:.3f}, test {row['test_accuracy']:.3f}"
        )
        table.add(row)
    return sum(finished is None for *_, finished in jobs)
