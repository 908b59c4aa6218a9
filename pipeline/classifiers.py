"""Classical classifiers on cached features: a registry, pipelines and grid search.

The functions here only ever see the training split. Hyperparameters are chosen
by cross-validation inside the training data; the held-out test split is scored
once, afterwards, with :func:`layerprobe.pipeline.evaluate.evaluate`.

Errors: features or labels that cannot be used raise `InputError` (a
`ValueError`); unknown names, grid keys or parameter values raise `ValueError`,
as scikit-learn does for its parameters.

The probes themselves (the ridge probe, LogME, the multi-layer probe) live in
`layerprobe.pipeline.probes`; rows on features too large for memory, in
`layerprobe.pipeline.streamed_fit`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC

from ..core.checks import is_positive_int, unknown_name_message
from ..core.errors import InputError
from .classifier_grids import CLASSIFIER_GRIDS, ParamGrid, prefix_grid_keys
from .probes.device_logistic import DeviceLogisticRegression, resolve_probe_device
from .probes.ridge import RidgeProbeCV
from .probes.svm import LinearSVM, linear_svm_solver
from .uncertainty import binomial_se, fold_se

__all__ = [
    "CLASSIFIERS",
    "PREPROCESSING",
    "ClassifierSpec",
    "FitResult",
    "build_probe_pipeline",
    "check_features",
    "fit_classifier",
    "flat_features",
    "prefix_param_grid",
    "search_method",
]

@dataclass(frozen=True)
class ClassifierSpec:
    """How to build one registered classifier and which hyperparameters to search.

    Attributes:
        name: Registry name, e.g. ``"logreg"``.
        description: One line for listings and reports.
        build: Called with ``random_state``; returns an unfitted estimator.
        param_grid: Default grid, keys without the ``"clf__"`` prefix.
        internal_cv: The estimator chooses its hyperparameters itself, by exact
            leave-one-out (``RidgeProbeCV``: every penalty from one
            eigendecomposition). Each list of ``param_grid`` is then passed whole
            as that parameter's candidates (``{"alphas": [...]}``) and the
            estimator is fitted once, without ``GridSearchCV``; it exposes
            ``best_score_``, ``cv_scores_`` and ``best_params_``.
        warm_start_param: A parameter searched along a warm-started path: in each
            fold its values are fitted in increasing order, each fit starting from
            the previous solution (``warm_start=True``). Used when it is the only
            parameter of the grid with several values; else ``GridSearchCV``.
        shape_params: Called with the training split's ``(n_samples, n_features)``;
            returns classifier parameters that depend on them (linear_svm's solver),
            set before the search unless the grid sets them.
        revision: Raised when the registry changes how the classifier is built or
            searched; part of a run's fit settings (when above 0), so rows fitted
            under an earlier revision are refitted, not reused.
        build_on_gpu: Builds the estimator that fits the same model with JAX, on the
            GPU (`device="gpu"`, `"jax"`, `"auto"`), or None where the classifier has no
            GPU path.
    """

    name: str
    description: str
    build: Callable[[int | None], BaseEstimator]
    param_grid: Mapping[str, tuple[Any, ...]]
    internal_cv: bool = False
    warm_start_param: str | None = None
    shape_params: Callable[[int, int], dict[str, Any]] | None = None
    revision: int = 0
    build_on_gpu: Callable[[int | None], BaseEstimator] | None = None


def _build_logreg(random_state: int | None) -> BaseEstimator:
    # lbfgs fits a multinomial (softmax) model when there are more than two classes.
    return LogisticRegression(solver="lbfgs", max_iter=2000, random_state=random_state)


def _build_logreg_on_gpu(random_state: int | None) -> BaseEstimator:
    # scikit-learn's lbfgs objective and tolerance, solved in JAX (probes.device_logistic).
    return DeviceLogisticRegression(max_iter=2000, random_state=random_state)


def _build_linear_svm(random_state: int | None) -> BaseEstimator:
    return LinearSVM(random_state=random_state)


def _linear_svm_solver(n_samples: int, n_features: int) -> dict[str, Any]:
    # Newton steps on the Gram matrix up to 2,048 features, liblinear beyond (probes.svm; measured in
    # benchmarks/RESULTS.md, "A linear SVM that is not the slowest row").
    return {"solver": linear_svm_solver(n_samples, n_features)}


def _build_rbf_svm(random_state: int | None) -> BaseEstimator:
    return SVC(kernel="rbf", random_state=random_state)


def _build_sgd(random_state: int | None) -> BaseEstimator:
    return SGDClassifier(early_stopping=False, random_state=random_state)


def _build_ridge(random_state: int | None) -> BaseEstimator:
    # Deterministic: no randomness to seed. float32 products, float64 eigendecomposition.
    return RidgeProbeCV(alphas=CLASSIFIER_GRIDS["ridge"].default_grid["alphas"], standardize=True, dtype="float32")


def _spec(name: str, description: str, build: Callable[[int | None], BaseEstimator], **options: Any) -> ClassifierSpec:
    # The name and its default grid come from the one list of classifiers (classifier_grids).
    return ClassifierSpec(name, description, build, CLASSIFIER_GRIDS[name].default_grid, **options)


CLASSIFIERS: Mapping[str, ClassifierSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            _spec(
                "logreg",
                "Multinomial logistic regression (lbfgs); C searched along a warm-started path.",
                _build_logreg,
                warm_start_param="C",
                build_on_gpu=_build_logreg_on_gpu,
            ),
            _spec(
                "linear_svm",
                "Linear support vector machine (squared hinge, one-vs-rest; Newton steps on the Gram matrix, "
                "C along a warm-started path; liblinear beyond 2,048 features).",
                _build_linear_svm,
                warm_start_param="C",
                shape_params=_linear_svm_solver,
                revision=2,
            ),
            _spec(
                "rbf_svm",
                "Kernel support vector machine with an RBF kernel.",
                _build_rbf_svm,
            ),
            _spec(
                "sgd",
                "Linear model trained by SGD; for feature sets too large for the others.",
                _build_sgd,
            ),
            _spec(
                "ridge",
                "One-vs-all ridge probe on standardized features; every penalty's exact "
                "leave-one-out accuracy from one eigendecomposition (seconds per layer).",
                _build_ridge,
                internal_cv=True,
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
        cv_score: Mean cross-validated accuracy of the best candidate (for an
            ``internal_cv`` classifier: its leave-one-out accuracy).
        cv_results: ``GridSearchCV.cv_results_`` as a DataFrame, one row per candidate.
        fit_seconds: Wall-clock time of the whole search, refit included.
        cv_se: Standard error of ``cv_score``: over the folds' scores of the best
            candidate (`uncertainty.fold_se`), or binomial over the training rows
            for leave-one-out (`uncertainty.binomial_se`).
        n_folds: Folds of the search (the number of training rows for leave-one-out).
    """

    estimator: Pipeline
    best_params: dict[str, Any]
    cv_score: float
    cv_results: pd.DataFrame
    fit_seconds: float
    cv_se: float = math.nan
    n_folds: int = 0


def build_probe_pipeline(
    classifier: str,
    *,
    preprocessing: str | Sequence[str] | None = ("standardize",),
    pca_components: int | float | None = None,
    random_state: int | None = 0,
    device: str = "cpu",
) -> Pipeline:
    """Builds an unfitted pipeline: preprocessing steps, optional PCA, classifier.

    Args:
        classifier: A name in :data:`CLASSIFIERS`.
        preprocessing: Names in :data:`PREPROCESSING`, applied in the given order;
            each step is named after its preprocessing name. ``None`` or ``()`` for none.
        pca_components: If given, adds a ``"pca"`` step with this ``n_components``.
        random_state: Seed for PCA and the classifier.
        device: ``"cpu"``, or ``"jax"`` for the classifier's JAX estimator where it has
            one (``ClassifierSpec.build_on_gpu``; the others stay on the CPU); see
            ``probes.device_logistic.resolve_probe_device``.

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
    spec = CLASSIFIERS[classifier]
    build = spec.build_on_gpu if device == "jax" and spec.build_on_gpu is not None else spec.build
    steps.append(("clf", build(random_state)))
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


def flat_features(features: Any) -> np.ndarray:
    """The ``X`` of a stored ``FeatureSet`` with one row per sample: pooled features as they are, maps flattened."""
    return features.X.reshape(len(features.X), -1)


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
    """The grid(s) with ``"clf__"`` added to bare keys, every key checked against the pipeline's parameters.

    Args:
        param_grid: A grid or a list of grids. Classifier keys may omit the
            ``"clf__"`` prefix; other steps use scikit-learn's ``"pca__n_components"`` form.
        estimator: The pipeline the grid is for (from :func:`build_probe_pipeline`).

    Returns:
        A list of grids with full keys.

    Raises:
        ValueError: Naming the unknown keys, the closest valid one and every valid key
            (`layerprobe.pipeline.classifier_grids.prefix_grid_keys`).
    """
    valid = [key for key in estimator.get_params(deep=True) if "__" in key]
    return prefix_grid_keys(param_grid, valid, type(estimator.named_steps["clf"]).__name__)


def check_param_grid(
    classifier: str,
    param_grid: ParamGrid,
    *,
    preprocessing: str | Sequence[str] | None = ("standardize",),
    pca_components: int | float | None = None,
) -> None:
    """Check every value of `param_grid` now as its estimator's `fit` would, so that an impossible value
    (`C = -1`, `alphas = [0]`) fails before any extraction rather than after it.

    Each value is set on a clone of the step it goes to, which checks it with
    scikit-learn's own parameter constraints (`_parameter_constraints`), or for
    layerprobe's probes their own `_check_params` (same wording). The values of a
    parameter an `internal_cv` classifier searches itself (ridge's `alphas`) are
    checked together, as `fit_classifier` passes them.

    Raises:
        ValueError: scikit-learn's message (`InvalidParameterError`), e.g. "The 'C'
            parameter of LogisticRegression must be a float in the range (0.0, inf].
            Got -1.0 instead.", or a grid key's (see `prefix_grid_keys`).
    """
    pipeline = build_probe_pipeline(classifier, preprocessing=preprocessing, pca_components=pca_components)
    spec = CLASSIFIERS[classifier]
    searched = {f"clf__{key}" for key in spec.param_grid} if spec.internal_cv else set()
    for grid in prefix_param_grid(param_grid, pipeline):
        for key, values in grid.items():
            step_name, param = key.split("__", 1)
            for value in [list(values)] if key in searched else values:
                step = clone(pipeline.named_steps[step_name]).set_params(**{param: value})
                if hasattr(step, "_parameter_constraints"):
                    step._validate_params()
                elif hasattr(step, "_check_params"):
                    step._check_params()


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
    device: str = "cpu",
) -> FitResult:
    """Chooses hyperparameters by stratified CV on the training split and refits.

    Only the training split is passed here; the test split stays untouched until
    :func:`layerprobe.pipeline.evaluate.evaluate`. The search is ``GridSearchCV``,
    except for a classifier with a ``warm_start_param`` (logreg's ``C``) when that
    is the only parameter with several values: each fold then fits the values
    along a warm-started path (same folds, same scores table, a cold refit at the
    best value); and for an ``internal_cv`` classifier (``ridge``), fitted once:
    it scores every candidate by exact leave-one-out itself (see
    :func:`search_method`).

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
        n_jobs: Parallel fits (joblib): the candidates x folds of ``GridSearchCV``,
            the folds of a warm-started path.
        random_state: Seed for the fold shuffle, PCA and the classifier.
        device: Where the classifier is fitted: ``"cpu"``, ``"gpu"`` (logreg: the same
            objective solved in JAX on the GPU, `probes.device_logistic`), ``"jax"`` (that
            solver on JAX's device, whatever it is) or ``"auto"``.

    Returns:
        A :class:`FitResult`; the same data and seed give the same estimator.

    Raises:
        InputError: (a ``ValueError``) If the data are malformed or non-finite,
            or a class has fewer than 2 samples.
        ValueError: If a name or grid key is unknown, ``cv`` is below 2, or an
            ``internal_cv`` classifier gets a list of grids or several values for a
            parameter it does not search itself.

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
        device=resolve_probe_device(device),
    )
    spec = CLASSIFIERS[classifier]
    grids = prefix_param_grid(spec.param_grid if param_grid is None else param_grid, estimator)
    if spec.shape_params is not None:
        searched = {key for grid in grids for key in grid}
        estimator.set_params(**{
            f"clf__{key}": value for key, value in spec.shape_params(*X.shape).items() if f"clf__{key}" not in searched
        })
    method = search_method(classifier, grids)
    start = time.perf_counter()
    if method == "internal":
        if len(grids) != 1:
            raise ValueError(
                f"{classifier} searches its candidates itself by leave-one-out: give one grid, not a list. "
                f"Received: param_grid={param_grid!r}"
            )
        return _fit_internal_cv(estimator, spec, grids[0], X, y, start)
    folds = StratifiedKFold(n_splits=min(cv, smallest_class), shuffle=True, random_state=random_state)
    if method == "warm_path":
        return _fit_warm_path(estimator, spec, grids[0], X, y, folds, n_jobs, start)
    search = GridSearchCV(estimator, grids, scoring="accuracy", cv=folds, refit=True, n_jobs=n_jobs)
    search.fit(X, y)
    fit_seconds = time.perf_counter() - start
    n_folds = folds.get_n_splits()
    fold_scores = [search.cv_results_[f"split{i}_test_score"][search.best_index_] for i in range(n_folds)]
    return FitResult(
        estimator=search.best_estimator_,
        best_params={k.removeprefix("clf__"): v for k, v in search.best_params_.items()},
        cv_score=float(search.best_score_),
        cv_results=pd.DataFrame(search.cv_results_),
        fit_seconds=fit_seconds,
        cv_se=fold_se(fold_scores),
        n_folds=n_folds,
    )


def search_method(classifier: str, param_grid: ParamGrid) -> str:
    """How :func:`fit_classifier` searches `param_grid` for `classifier`.

    Returns:
        ``"internal"`` for an ``internal_cv`` classifier (one fit, its own
        leave-one-out); ``"warm_path"`` when the classifier's ``warm_start_param``
        is the only parameter of a single grid with several values; else ``"grid"``
        (``GridSearchCV``).

    Raises:
        ValueError: If `classifier` is unknown.
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(unknown_name_message("classifier", classifier, CLASSIFIERS))
    spec = CLASSIFIERS[classifier]
    if spec.internal_cv:
        return "internal"
    grids = [param_grid] if isinstance(param_grid, Mapping) else list(param_grid)
    if spec.warm_start_param is None or len(grids) != 1:
        return "grid"
    varying = [key.removeprefix("clf__") if key.startswith("clf__") else key
               for key, values in grids[0].items() if len(values) > 1]
    return "warm_path" if varying == [spec.warm_start_param] else "grid"


def _fit_internal_cv(
    estimator: Pipeline, spec: ClassifierSpec, grid: Mapping[str, Sequence[Any]], X: np.ndarray, y: np.ndarray,
    start: float,
) -> FitResult:
    """One fit of a classifier that validates every candidate itself (exact leave-one-out)."""
    searched = {f"clf__{key}" for key in spec.param_grid}
    fixed = {key: values for key, values in grid.items() if key not in searched}
    several = sorted(key for key, values in fixed.items() if len(values) != 1)
    if several:
        raise ValueError(
            f"{spec.name} chooses {sorted(spec.param_grid)} itself by leave-one-out; its other grid keys "
            f"cannot be searched and need exactly one value each. Received: {several} with "
            f"{[list(fixed[key]) for key in several]}"
        )
    estimator.set_params(
        **{key: tuple(values) for key, values in grid.items() if key in searched},
        **{key: values[0] for key, values in fixed.items()},
    )
    estimator.fit(X, y)
    fit_seconds = time.perf_counter() - start
    clf = estimator.named_steps["clf"]
    cv_results = pd.DataFrame({"mean_test_score": np.asarray(clf.cv_scores_, dtype=float)})
    (key, values), *others = [(key, clf.get_params()[key.removeprefix("clf__")]) for key in sorted(searched)]
    if not others and len(values) == len(cv_results):  # one searched parameter: one row per candidate
        cv_results.insert(0, f"param_{key}", list(values))
    score = float(clf.best_score_)
    return FitResult(
        estimator=estimator,
        best_params=dict(clf.best_params_),
        cv_score=score,
        cv_results=cv_results,
        fit_seconds=fit_seconds,
        cv_se=binomial_se(score, X.shape[0]),
        n_folds=int(X.shape[0]),
    )


def _path_fold(
    estimator: Pipeline, key: str, values: Sequence[Any], X: np.ndarray, y: np.ndarray, train: np.ndarray,
    test: np.ndarray,
) -> tuple[list[float], list[float]]:
    """One fold of a warm-started path: the steps before the classifier fitted once, the classifier along `values`."""
    pipe = clone(estimator)
    X_train, X_test = X[train], X[test]
    if len(pipe.steps) > 1:
        head = pipe[:-1].fit(X_train, y[train])
        X_train, X_test = head.transform(X_train), head.transform(X_test)
    clf = pipe.steps[-1][1].set_params(warm_start=True)
    scores, seconds = [], []
    for value in values:
        started = time.perf_counter()
        clf.set_params(**{key: value}).fit(X_train, y[train])
        seconds.append(time.perf_counter() - started)
        scores.append(float(np.mean(clf.predict(X_test) == y[test])))
    return scores, seconds


def _fit_warm_path(
    estimator: Pipeline,
    spec: ClassifierSpec,
    grid: Mapping[str, Sequence[Any]],
    X: np.ndarray,
    y: np.ndarray,
    folds: StratifiedKFold,
    n_jobs: int | None,
    start: float,
) -> FitResult:
    """The grid of `spec.warm_start_param` searched along a warm-started path in each fold, then a cold refit.

    Each fold fits the values in increasing order, each from the previous solution
    (fewer lbfgs iterations than cold starts at large C: benchmarks/RESULTS.md,
    probe_speed --alternatives).
    Scores are reported in the grid's order and the first best candidate wins, as
    in ``GridSearchCV``; the refit on all rows is an ordinary (cold) fit at the
    best value, so the estimator equals ``build_probe_pipeline(...).set_params(...).fit``.
    """
    key = f"clf__{spec.warm_start_param}"
    fixed = {name: values[0] for name, values in grid.items() if name != key}
    estimator.set_params(**fixed)
    values = list(dict.fromkeys(grid[key]))
    ascending = sorted(values)
    splits = list(folds.split(X, y))
    per_fold = Parallel(n_jobs=n_jobs)(
        delayed(_path_fold)(estimator, spec.warm_start_param, ascending, X, y, train, test) for train, test in splits
    )
    order = [ascending.index(value) for value in values]
    scores = np.array([[fold[0][i] for i in order] for fold in per_fold])  # (n_folds, n_values), grid order
    seconds = np.array([[fold[1][i] for i in order] for fold in per_fold])
    mean = scores.mean(axis=0)
    best = int(np.argmax(mean))
    params = [{**fixed, key: value} for value in values]
    cv_results = pd.DataFrame({
        "params": params,
        f"param_{key}": values,
        **{f"split{i}_test_score": scores[i] for i in range(len(splits))},
        "mean_test_score": mean,
        "std_test_score": scores.std(axis=0),
        "rank_test_score": pd.Series(mean).rank(method="min", ascending=False).astype(int).to_numpy(),
        "mean_fit_time": seconds.mean(axis=0),
        "std_fit_time": seconds.std(axis=0),
    })
    refit = clone(estimator).set_params(**params[best]).fit(X, y)
    return FitResult(
        estimator=refit,
        best_params={name.removeprefix("clf__"): value for name, value in params[best].items()},
        cv_score=float(mean[best]),
        cv_results=cv_results,
        fit_seconds=time.perf_counter() - start,
        cv_se=fold_se(scores[:, best]),
        n_folds=len(splits),
    )
