"""Classical classifiers on cached features: a registry, pipelines and grid search.

The functions here only ever see the training split. Hyperparameters are chosen
by cross-validation inside the training data; the held-out test split is scored
once, afterwards, with :func:`layerprobe.pipeline.evaluate.evaluate`.

Errors: features or labels that cannot be used raise `InputError` (a
`ValueError`); unknown names, grid keys or parameter values raise `ValueError`,
as scikit-learn does for its parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC

from layerprobe.features.checks import did_you_mean, is_positive_int, unknown_name_message
from layerprobe.features.errors import InputError

__all__ = [
    "CLASSIFIERS",
    "PREPROCESSING",
    "ClassifierSpec",
    "FitResult",
    "build_probe_pipeline",
    "check_features",
    "fit_classifier",
    "prefix_param_grid",
]

ParamGrid = Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]]


@dataclass(frozen=True)
class ClassifierSpec:
    """How to build one registered classifier and which hyperparameters to search.

    Attributes:
        name: Registry name, e.g. ``"logreg"``.
        description: One line for listings and reports.
        build: Called with ``random_state``; returns an unfitted estimator.
        param_grid: Default grid, keys without the ``"clf__"`` prefix.
    """

    name: str
    description: str
    build: Callable[[int | None], BaseEstimator]
    param_grid: Mapping[str, tuple[Any, ...]]


def _build_logreg(random_state: int | None) -> BaseEstimator:
    # lbfgs fits a multinomial (softmax) model when there are more than two classes.
    return LogisticRegression(solver="lbfgs", max_iter=2000, random_state=random_state)


def _build_linear_svm(random_state: int | None) -> BaseEstimator:
    return LinearSVC(dual="auto", max_iter=10_000, random_state=random_state)


def _build_rbf_svm(random_state: int | None) -> BaseEstimator:
    return SVC(kernel="rbf", random_state=random_state)


def _build_sgd(random_state: int | None) -> BaseEstimator:
    return SGDClassifier(early_stopping=False, random_state=random_state)


def _spec(
    name: str,
    description: str,
    build: Callable[[int | None], BaseEstimator],
    param_grid: dict[str, tuple[Any, ...]],
) -> ClassifierSpec:
    return ClassifierSpec(name, description, build, MappingProxyType(param_grid))


CLASSIFIERS: Mapping[str, ClassifierSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            _spec(
                "logreg",
                "Multinomial logistic regression (lbfgs).",
                _build_logreg,
                {"C": (0.01, 0.1, 1.0, 10.0)},
            ),
            _spec(
                "linear_svm",
                "Linear support vector machine (liblinear, one-vs-rest).",
                _build_linear_svm,
                {"C": (0.01, 0.1, 1.0, 10.0)},
            ),
            _spec(
                "rbf_svm",
                "Kernel support vector machine with an RBF kernel.",
                _build_rbf_svm,
                {"C": (0.1, 1.0, 10.0, 100.0), "gamma": ("scale", 1e-4, 1e-3, 1e-2)},
            ),
            _spec(
                "sgd",
                "Linear model trained by SGD; for feature sets too large for the others.",
                _build_sgd,
                {"loss": ("hinge", "log_loss"), "alpha": (1e-5, 1e-4, 1e-3, 1e-2)},
            ),
        )
    }
)
"""Registry of classifiers by name."""

PREPROCESSING: Mapping[str, Callable[[], BaseEstimator]] = MappingProxyType(
    {"standardize": StandardScaler, "l2": Normalizer}
)
"""Preprocessing steps by name; each becomes a pipeline step of that name."""


@dataclass(frozen=True)
class FitResult:
    """Outcome of :func:`fit_classifier`.

    Attributes:
        estimator: The best pipeline, refit on the whole training split.
        best_params: Best hyperparameters; classifier keys without ``"clf__"``,
            other steps in sklearn's ``"pca__n_components"`` form.
        cv_score: Mean cross-validated accuracy of the best candidate.
        cv_results: ``GridSearchCV.cv_results_`` as a DataFrame, one row per candidate.
        fit_seconds: Wall-clock time of the whole search, refit included.
    """

    estimator: Pipeline
    best_params: dict[str, Any]
    cv_score: float
    cv_results: pd.DataFrame
    fit_seconds: float


def build_probe_pipeline(
    classifier: str,
    *,
    preprocessing: str | Sequence[str] | None = ("standardize",),
    pca_components: int | float | None = None,
    random_state: int | None = 0,
) -> Pipeline:
    """Builds an unfitted pipeline: preprocessing steps, optional PCA, classifier.

    Args:
        classifier: A name in :data:`CLASSIFIERS`.
        preprocessing: Names in :data:`PREPROCESSING`, applied in the given order;
            each step is named after its preprocessing name. ``None`` or ``()`` for none.
        pca_components: If given, adds a ``"pca"`` step with this ``n_components``.
        random_state: Seed for PCA and the classifier.

    Returns:
        A ``Pipeline`` whose steps are named e.g. ``["standardize", "pca", "clf"]``.

    Raises:
        ValueError: If a classifier or preprocessing name is unknown or repeated.

    Example:
        >>> build_probe_pipeline("logreg", preprocessing=("standardize", "l2")).named_steps.keys()
        dict_keys(['standardize', 'l2', 'clf'])
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(unknown_name_message("classifier", classifier, CLASSIFIERS))
    if preprocessing is None:
        preprocessing = ()
    elif isinstance(preprocessing, str):
        preprocessing = (preprocessing,)
    for name in preprocessing:
        if name not in PREPROCESSING:
            raise ValueError(unknown_name_message("preprocessing", name, PREPROCESSING))
    if len(set(preprocessing)) != len(preprocessing):
        raise ValueError(
            "Each preprocessing step may appear only once; remove the repeated name. "
            f"Received: preprocessing={tuple(preprocessing)!r}"
        )
    steps = [(name, PREPROCESSING[name]()) for name in preprocessing]
    if pca_components is not None:
        steps.append(("pca", PCA(n_components=pca_components, random_state=random_state)))
    steps.append(("clf", CLASSIFIERS[classifier].build(random_state)))
    return Pipeline(steps)


def check_features(X: Any, *, name: str = "X", sample_ids: Sequence[Any] | None = None) -> np.ndarray:
    """Checks that a feature matrix is 2-D, numeric, non-empty and finite.

    Args:
        X: Array-like of shape ``(n_samples, n_features)``.
        name: What ``X`` is, for error messages.
        sample_ids: One id per row; errors then name the bad samples, not row numbers.

    Returns:
        ``X`` as a numpy array.

    Raises:
        InputError: (a ``ValueError``) If ``X`` has the wrong shape or dtype, or holds NaN or inf.
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise InputError(
            f"{name} must be a non-empty 2-D array of shape (n_samples, n_features); "
            f"flatten pooled features to one row per sample. Received: {name} with shape {X.shape}"
        )
    if not np.issubdtype(X.dtype, np.number):
        raise InputError(f"{name} must hold numbers. Received: {name} with dtype {X.dtype}")
    bad = ~np.isfinite(X)
    if bad.any():
        bad_rows = np.flatnonzero(bad.any(axis=1))
        bad_cols = np.flatnonzero(bad.any(axis=0))
        first = bad_rows[:5].tolist() if sample_ids is None else [str(sample_ids[i]) for i in bad_rows[:5]]
        raise InputError(
            f"{name} contains {int(bad.sum())} NaN or inf values in {bad_rows.size} row(s) "
            f"and {bad_cols.size} column(s) (first bad {'rows' if sample_ids is None else 'samples'}: "
            f"{first}). No classifier can be fitted on them. Float16 storage turns values beyond "
            "65504 into inf, and weights holding NaN give NaN: re-extract with float32 storage or "
            f"other weights, or drop those samples. Received: {name} with shape {X.shape}"
        )
    return X


def _check_training_data(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Validates the training split; returns X, y and the smallest class count."""
    X = check_features(X, name="X_train")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise InputError(
            "y_train must be 1-D with one label per row of X_train. "
            f"Received: X_train with shape {X.shape}, y_train with shape {y.shape}"
        )
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise InputError(
            "y_train must contain at least 2 classes to train a classifier. "
            f"Received: y_train with classes {classes.tolist()}"
        )
    if counts.min() < 2:
        cls, count = classes.tolist()[counts.argmin()], counts.min()
        raise InputError(
            f"Class {cls!r} has {count} training sample(s); every class needs at least 2 "
            "for stratified cross-validation. Add samples or drop the class. "
            f"Received: y_train with class counts {dict(zip(classes.tolist(), counts.tolist()))}"
        )
    return X, y, int(counts.min())


def prefix_param_grid(param_grid: ParamGrid, estimator: Pipeline) -> list[dict[str, Sequence[Any]]]:
    """The grid(s) with ``"clf__"`` added to bare keys, every key checked against the pipeline.

    The one check of grid keys: `fit_classifier` and the `[classifiers.grids]`
    section of an experiment config both use it.

    Args:
        param_grid: A grid or a list of grids. Classifier keys may omit the
            ``"clf__"`` prefix; other steps use scikit-learn's ``"pca__n_components"`` form.
        estimator: The pipeline the grid is for (from :func:`build_probe_pipeline`).

    Returns:
        A list of grids with full keys.

    Raises:
        ValueError: Naming the unknown keys, the closest valid one and every valid key.
    """
    grids = [param_grid] if isinstance(param_grid, Mapping) else list(param_grid)
    valid = {key for key in estimator.get_params(deep=True) if "__" in key}
    names = sorted(key.removeprefix("clf__") for key in valid)
    prefixed, unknown = [], []
    for grid in grids:
        full = {}
        for key, values in grid.items():
            full_key = key if "__" in key else f"clf__{key}"
            if full_key not in valid:
                unknown.append(key)
            full[full_key] = values
        prefixed.append(full)
    if unknown:
        classifier = type(estimator.named_steps["clf"]).__name__
        raise ValueError(
            f"Unknown param_grid key(s) {unknown} for {classifier}.{did_you_mean(unknown[0], names)} "
            f"Valid keys are: {', '.join(map(repr, names))} (steps other than the classifier need their "
            f"prefix, e.g. 'pca__n_components', and that step in the pipeline). Received: param_grid={param_grid!r}"
        )
    return prefixed


def fit_classifier(
    X_train: Any,
    y_train: Any,
    classifier: str,
    *,
    param_grid: ParamGrid | None = None,
    preprocessing: str | Sequence[str] | None = ("standardize",),
    pca_components: int | float | None = None,
    cv: int = 5,
    n_jobs: int | None = None,
    random_state: int | None = 0,
) -> FitResult:
    """Chooses hyperparameters by stratified CV on the training split and refits.

    Only the training split is passed here; the test split stays untouched until
    :func:`layerprobe.pipeline.evaluate.evaluate`.

    Args:
        X_train: Training features, shape ``(n_samples, n_features)``.
        y_train: Training labels, shape ``(n_samples,)``.
        classifier: A name in :data:`CLASSIFIERS`.
        param_grid: Grid (or list of grids) to search. Classifier keys may omit the
            ``"clf__"`` prefix (``{"C": [0.1, 1]}``); other steps use sklearn's form
            (``{"pca__n_components": [32, 64]}``). ``None`` uses the registry default.
        preprocessing: See :func:`build_probe_pipeline`.
        pca_components: See :func:`build_probe_pipeline`.
        cv: Number of folds, lowered to the smallest class count if needed.
        n_jobs: Parallel fits, passed to joblib through ``GridSearchCV``.
        random_state: Seed for the fold shuffle, PCA and the classifier.

    Returns:
        A :class:`FitResult`; the same data and seed give the same estimator.

    Raises:
        InputError: (a ``ValueError``) If the data are malformed or non-finite,
            or a class has fewer than 2 samples.
        ValueError: If a name or grid key is unknown, or ``cv`` is below 2.

    Example:
        >>> result = fit_classifier(X_train, y_train, "logreg", param_grid={"C": [0.1, 1]})
        >>> sorted(result.best_params)
        ['C']
    """
    if not (is_positive_int(cv) and cv >= 2):
        raise ValueError(f"cv must be an integer of at least 2. Received: cv={cv!r}")
    X, y, smallest_class = _check_training_data(X_train, y_train)
    estimator = build_probe_pipeline(
        classifier,
        preprocessing=preprocessing,
        pca_components=pca_components,
        random_state=random_state,
    )
    if param_grid is None:
        param_grid = CLASSIFIERS[classifier].param_grid
    search = GridSearchCV(
        estimator,
        prefix_param_grid(param_grid, estimator),
        scoring="accuracy",
        cv=StratifiedKFold(
            n_splits=min(cv, smallest_class), shuffle=True, random_state=random_state
        ),
        refit=True,
        n_jobs=n_jobs,
    )
    start = time.perf_counter()
    search.fit(X, y)
    fit_seconds = time.perf_counter() - start
    return FitResult(
        estimator=search.best_estimator_,
        best_params={k.removeprefix("clf__"): v for k, v in search.best_params_.items()},
        cv_score=float(search.best_score_),
        cv_results=pd.DataFrame(search.cv_results_),
        fit_seconds=fit_seconds,
    )
