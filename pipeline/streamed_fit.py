"""Classifier rows on training features too large to hold in memory, handed out in row blocks.

`fit_streamed` is `fit_classifier` for a `FeatureStream` (`FeatureStore.stream`): the ridge
probe streams exactly, logreg and linear SVM search their grid on a stratified subsample
and fit the chosen model on every row; what cannot stream is loaded whole.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from ..features.inputs.loader import available_memory
from .classifier_grids import ParamGrid
from .classifiers import CLASSIFIERS, FitResult, fit_classifier, flat_features
from .probes.streamed import StreamedLinearClassifier
from .uncertainty import binomial_se

__all__ = ["STREAMED_LOSSES", "fit_streamed", "rows_in_memory"]


STREAMED_LOSSES: Mapping[str, str] = MappingProxyType({"logreg": "log_loss", "linear_svm": "squared_hinge"})
"""Classifiers whose final fit can stream (`StreamedLinearClassifier`'s loss for each)."""


def rows_in_memory(n_features: int, *, itemsize: int = 4, share: float = 0.25) -> int | None:
    """Training rows whose features (and the copies a search makes) fit in `share` of the available
    memory; None where the available memory is unknown."""
    available = available_memory()
    return None if available is None else max(1, int(available * share) // (3 * n_features * itemsize))


def fit_streamed(
    stream: Any,
    classifier: str,
    *,
    param_grid: ParamGrid | None = None,
    preprocessing: str | Sequence[str] | None = ("standardize",),
    pca_components: int | float | None = None,
    cv: int = 5,
    n_jobs: int | None = None,
    random_state: int | None = 0,
    device: str = "cpu",
    max_rows: int | None = -1,
) -> FitResult:
    """:func:`fit_classifier` on training features handed out in row blocks (`FeatureStore.stream`),
    holding at most `max_rows` rows of them in memory.

    - ``ridge`` (``standardize`` alone, no PCA): :class:`RidgeProbeCV` on the stream, two passes,
      memory O(n_features²) whatever the rows: the same model and leave-one-out scores as in memory.
    - Every row fits in `max_rows`, or the classifier or the preprocessing cannot stream (other
      than ``standardize`` alone, PCA, ``rbf_svm``...): the rows are loaded and fitted as by
      :func:`fit_classifier`.
    - ``logreg`` and ``linear_svm``: the grid is searched by :func:`fit_classifier` on a stratified
      subsample of `max_rows` rows (its CV score is the row's), then the model at the chosen
      ``C`` is fitted on every row by :class:`StreamedLinearClassifier` (the standardization
      folded into it). benchmarks/RESULTS.md measures what the subsampled grid costs.

    Args:
        stream: The training features: a `FeatureStream` (``blocks()``, ``y``, ``n_features``, ``select``).
        device: As :func:`fit_classifier`, for the fits on rows in memory (the streamed final
            fit runs on the CPU).
        max_rows: Rows held in memory at most; None: no limit; -1 (default): what a quarter
            of the available memory holds (`rows_in_memory`).
        Others: As :func:`fit_classifier`.

    Returns:
        A :class:`FitResult` whose estimator is a ``Pipeline`` (its last step ``"clf"``).
    """
    if max_rows == -1:
        max_rows = rows_in_memory(stream.n_features, itemsize=stream.dtype.itemsize)
    steps = (preprocessing,) if isinstance(preprocessing, str) else tuple(preprocessing or ())
    streams = pca_components is None and steps == ("standardize",)
    y = np.asarray(stream.y)
    grid = CLASSIFIERS[classifier].param_grid if param_grid is None else param_grid
    start = time.perf_counter()
    if streams and classifier == "ridge" and not isinstance(grid, (list, tuple)):
        probe = CLASSIFIERS["ridge"].build(random_state).set_params(
            **{key.removeprefix("clf__"): (tuple(values) if key.removeprefix("clf__") == "alphas" else values[0])
               for key, values in grid.items()}
        )
        probe.fit(stream, y)
        score = float(probe.best_score_)
        return FitResult(
            estimator=Pipeline([("clf", probe)]), best_params=dict(probe.best_params_), cv_score=score,
            cv_results=pd.DataFrame({"mean_test_score": np.asarray(probe.cv_scores_, dtype=float)}),
            fit_seconds=time.perf_counter() - start, cv_se=binomial_se(score, len(y)), n_folds=len(y),
        )
    if max_rows is None or len(y) <= max_rows or not streams or classifier not in STREAMED_LOSSES:
        loaded = stream.load()
        return fit_classifier(
            flat_features(loaded), loaded.y, classifier, param_grid=param_grid, preprocessing=preprocessing,
            pca_components=pca_components, cv=cv, n_jobs=n_jobs, random_state=random_state, device=device,
        )
    picked, _ = train_test_split(np.arange(len(y)), train_size=max_rows, stratify=y, random_state=random_state)
    mask = np.zeros(len(y), dtype=bool)
    mask[picked] = True
    sample = stream.select(mask).load()
    searched = fit_classifier(
        flat_features(sample), sample.y, classifier, param_grid=param_grid, preprocessing=preprocessing,
        cv=cv, n_jobs=n_jobs, random_state=random_state, device=device,
    )
    del sample
    C = searched.best_params.get("C", 1.0)
    final = StreamedLinearClassifier(STREAMED_LOSSES[classifier], C=C).fit(stream, y)
    return FitResult(
        estimator=Pipeline([("clf", final)]), best_params=searched.best_params, cv_score=searched.cv_score,
        cv_results=searched.cv_results, fit_seconds=time.perf_counter() - start, cv_se=searched.cv_se,
        n_folds=searched.n_folds,
    )
