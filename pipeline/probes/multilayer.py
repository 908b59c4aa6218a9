"""A probe on several layers at once, with the layers chosen by greedy forward selection.

In the spirit of Head2Toe (Evci et al., ICML 2022: tap every layer, concatenate,
keep the few features that help), but selecting whole layers (groups) with the
closed-form ridge probe's exact leave-one-out accuracy:

1. each layer's features are standardized (per feature, on the training rows)
   and multiplied by ``1 / sqrt(d_layer)``, so every layer brings the same total
   variance and a 512-wide layer does not drown a 64-wide one under one penalty;
2. every layer alone is scored by :class:`~layerprobe.pipeline.probes.ridge.RidgeProbeCV`;
   the best one starts the selection;
3. each step adds the layer whose concatenation with the selected ones raises the
   LOO accuracy most, and stops when no layer adds at least ``tol`` (or at
   ``max_layers``);
4. the final probe is the ridge probe of the selected concatenation (or a clone of
   ``estimator`` fitted on it).

The probe's own ``cv_score_`` scored the layers it selected, so it is optimistic
(the best of many leave-one-out scores is biased upwards, the more so the more
layers compete); :func:`nested_cv_scores` repeats the whole selection inside each
fold of an outer split and scores each fold's probe on the rows it never saw, an
unbiased estimate of the selected probe's accuracy (nested cross-validation,
Cawley & Talbot 2010; scikit-learn's "Nested versus non-nested cross-validation").

The layers come as one array, their features side by side, with the width of
each (``layer_widths``), so the probe is an ordinary scikit-learn classifier:
it works with ``clone``, ``cross_val_score`` and ``Pipeline``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.utils.validation import check_is_fitted, validate_data

from ..threads import with_native_threads
from ..uncertainty import binomial_se
from .ridge import DEFAULT_ALPHAS, RidgeProbeCV

__all__ = ["MultiLayerProbe", "multi_layer_name", "nested_cv_scores"]


def multi_layer_name(layers: Sequence[str]) -> str:
    """The row name of a multi-layer probe, e.g. ``"multi:block3_pool+block4_pool"``."""
    return "multi:" + "+".join(layers)


def _is_int(value: Any, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum


class MultiLayerProbe(ClassifierMixin, BaseEstimator):
    """Ridge probe on a greedily selected concatenation of layers (Head2Toe-style group selection).

    Args:
        layer_widths: Number of features of each layer, in column order: ``X``
            holds the layers side by side and its width is their sum. ``None``:
            ``X`` is one layer.
        layer_names: One name per layer, for ``selected_layers_`` and ``name_``.
            ``None``: ``"layer0"``, ``"layer1"``, ...
        max_layers: Select at most this many layers (``None``: no limit).
        tol: Add a layer only if it raises the LOO accuracy by at least this much
            (0.002: 0.2 points).
        alphas: Relative penalties of the ridge probes (see ``RidgeProbeCV``).
        dtype: ``"float32"`` or ``"float64"`` for the ridge probes.
        group_scaling: Multiply each standardized layer by ``1 / sqrt(d_layer)``.
        estimator: Final classifier fitted on the selected concatenation (cloned),
            e.g. ``LogisticRegression(C=1)``; ``None`` keeps the ridge probe.

    Attributes:
        layer_names_: The layers' names, in column order.
        feature_dims_: Layer name -> number of features.
        layer_scores_: Layer name -> LOO accuracy of the ridge probe on that layer alone.
        selection_path_: One dict per greedy step: ``layers`` (selected after the
            step), ``added``, ``cv_score``, ``gain`` and the best ``alpha``.
        selected_layers_: The selected layers, in column order.
        name_: ``"multi:" + "+".join(selected_layers_)``.
        cv_score_: LOO accuracy of the ridge probe on the selected concatenation.
        cv_se_: Its binomial standard error.
        alpha_: The relative penalty of that probe.
        probe_: That fitted :class:`RidgeProbeCV` (on the scaled concatenation).
        estimator_: The final fitted classifier (``probe_`` when ``estimator=None``).
        classes_: Class labels.
        n_features_in_: Width of ``X`` (every layer).
        fit_seconds_: Wall-clock time of ``fit``.

    Example:
        >>> X = np.hstack([X3, X4, X5])  # block3_pool, block4_pool, block5_pool side by side
        >>> probe = MultiLayerProbe([256, 512, 512], ["block3_pool", "block4_pool", "block5_pool"]).fit(X, y)
        >>> probe.name_, probe.cv_score_
        ('multi:block3_pool+block4_pool', 0.61)
        >>> cross_val_score(MultiLayerProbe([256, 512, 512]), X, y)
    """

    def __init__(
        self,
        layer_widths: Sequence[int] | None = None,
        layer_names: Sequence[str] | None = None,
        *,
        max_layers: int | None = None,
        tol: float = 0.002,
        alphas: Any = DEFAULT_ALPHAS,
        dtype: str = "float32",
        group_scaling: bool = True,
        estimator: Any = None,
    ):
        self.layer_widths = layer_widths
        self.layer_names = layer_names
        self.max_layers = max_layers
        self.tol = tol
        self.alphas = alphas
        self.dtype = dtype
        self.group_scaling = group_scaling
        self.estimator = estimator

    def _check_params(self, n_features: int) -> dict[str, slice]:
        """Layer name -> its columns of ``X``."""
        if self.max_layers is not None and not _is_int(self.max_layers, 1):
            raise ValueError(
                "The 'max_layers' parameter of MultiLayerProbe must be None or an int >= 1. "
                f"Got {self.max_layers!r} instead."
            )
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float, np.floating)) or not np.isfinite(self.tol) or self.tol < 0:
            raise ValueError(
                f"The 'tol' parameter of MultiLayerProbe must be a float >= 0. Got {self.tol!r} instead."
            )
        widths = [n_features] if self.layer_widths is None else list(self.layer_widths)
        if not widths or not all(_is_int(width, 1) for width in widths) or sum(widths) != n_features:
            raise ValueError(
                "The 'layer_widths' parameter of MultiLayerProbe must be None or positive ints, one per layer, "
                f"that add up to the number of features of X ({n_features}). Got {self.layer_widths!r} instead."
            )
        names = [f"layer{i}" for i in range(len(widths))] if self.layer_names is None else [str(n) for n in self.layer_names]
        if len(names) != len(widths) or len(set(names)) != len(names):
            raise ValueError(
                "The 'layer_names' parameter of MultiLayerProbe must be None or distinct names, one per layer of "
                f"layer_widths ({len(widths)}). Got {self.layer_names!r} instead."
            )
        ends = np.cumsum(widths).tolist()
        return {name: slice(end - width, end) for name, width, end in zip(names, widths, ends)}

    def _probe(self) -> RidgeProbeCV:
        # The blocks are already standardized and scaled; centring stays (it is exact for the intercept).
        return RidgeProbeCV(alphas=self.alphas, standardize=False, dtype=self.dtype, fit_intercept=True)

    def _scaled(self, name: str, X: np.ndarray) -> np.ndarray:
        block = np.asarray(X[:, self.columns_[name]], dtype=self.dtype) - self.mean_[name].astype(self.dtype)
        block *= (self.weight_[name] / self.scale_[name]).astype(self.dtype)
        return block

    @with_native_threads("X")
    def fit(self, X: Any, y: Any) -> "MultiLayerProbe":
        """Selects layers greedily by ridge LOO accuracy and fits the final probe.

        Args:
            X: Features of shape (n_samples, sum(layer_widths)), the layers side by side.
            y: Class labels, shape (n_samples,).

        Returns:
            self.

        Raises:
            ValueError: For invalid parameters or data (non-finite features, widths
                that do not add up to the width of ``X``).
        """
        started = time.perf_counter()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], ensure_min_samples=3)
        self.columns_ = self._check_params(X.shape[1])
        names = list(self.columns_)
        self.layer_names_ = names
        self.feature_dims_ = {name: int(columns.stop - columns.start) for name, columns in self.columns_.items()}
        self.mean_, self.scale_, self.weight_ = {}, {}, {}
        blocks = {}
        for name in names:
            block = np.ascontiguousarray(X[:, self.columns_[name]], dtype=self.dtype)
            mean = block.mean(axis=0, dtype=np.float64)
            centred = block - mean.astype(self.dtype)
            scale = np.sqrt(np.einsum("ij,ij->j", centred, centred, dtype=np.float64) / block.shape[0])
            scale[scale <= 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean))] = 1.0
            self.mean_[name], self.scale_[name] = mean, scale
            self.weight_[name] = 1.0 / np.sqrt(block.shape[1]) if self.group_scaling else 1.0
            centred *= (self.weight_[name] / scale).astype(self.dtype)
            blocks[name] = centred

        def fit_on(subset: list[str]) -> RidgeProbeCV:
            ordered = [name for name in names if name in subset]
            X = blocks[ordered[0]] if len(ordered) == 1 else np.hstack([blocks[name] for name in ordered])
            return self._probe().fit(X, y)

        single = {name: fit_on([name]) for name in names}
        self.layer_scores_ = {name: float(probe.best_score_) for name, probe in single.items()}
        first = max(names, key=lambda name: (self.layer_scores_[name], -names.index(name)))
        selected, best_probe = [first], single[first]
        self.selection_path_ = [
            {"layers": [first], "added": first, "cv_score": best_probe.best_score_,
             "gain": best_probe.best_score_, "alpha": best_probe.alpha_}
        ]
        max_layers = len(names) if self.max_layers is None else min(self.max_layers, len(names))
        while len(selected) < max_layers:
            trials = {name: fit_on(selected + [name]) for name in names if name not in selected}
            added = max(trials, key=lambda name: (trials[name].best_score_, -names.index(name)))
            gain = trials[added].best_score_ - best_probe.best_score_
            if gain < self.tol:
                break
            selected.append(added)
            best_probe = trials[added]
            self.selection_path_.append(
                {"layers": [name for name in names if name in selected], "added": added,
                 "cv_score": best_probe.best_score_, "gain": gain, "alpha": best_probe.alpha_}
            )
        self.selected_layers_ = [name for name in names if name in selected]
        self.name_ = multi_layer_name(self.selected_layers_)
        self.probe_ = best_probe
        self.cv_score_ = float(best_probe.best_score_)
        self.cv_se_ = binomial_se(self.cv_score_, y.shape[0])
        self.alpha_ = best_probe.alpha_
        self.classes_ = best_probe.classes_
        if self.estimator is None:
            self.estimator_ = best_probe
        else:
            self.estimator_ = clone(self.estimator).fit(
                np.hstack([blocks[name] for name in self.selected_layers_]), y
            )
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def selected_features(self, X: Any) -> np.ndarray:
        """The scaled concatenation of the selected layers, shape (n_samples, their total width).

        Raises:
            ValueError: If ``X`` does not have the width it had in ``fit``, or holds NaN or inf.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        return np.hstack([self._scaled(name, X) for name in self.selected_layers_])

    def decision_function(self, X: Any) -> np.ndarray:
        """Decision values of the final classifier (``X``: every layer, as in ``fit``)."""
        X = self.selected_features(X)
        return self.estimator_.decision_function(X)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class labels (``X``: every layer, as in ``fit``; only the selected layers are read)."""
        X = self.selected_features(X)
        return self.estimator_.predict(X)


def nested_cv_scores(probe: MultiLayerProbe, X: Any, y: Any, *, cv: int = 5, random_state: int | None = 0) -> np.ndarray:
    """Accuracy of `probe` on each fold of a stratified outer split, its layers selected inside each fold.

    Args:
        probe: An unfitted :class:`MultiLayerProbe` (cloned per fold).
        X: Features of shape (n_samples, sum(layer_widths)).
        y: Class labels.
        cv: Outer folds, at most the smallest class's size (and at least 2).
        random_state: Seed of the outer split's shuffle.

    Returns:
        One accuracy per outer fold: their mean is the nested CV score, their spread its SE (`uncertainty.fold_se`).

    Raises:
        ValueError: If a class has fewer than 2 samples.
    """
    _, counts = np.unique(np.asarray(y), return_counts=True)
    folds = min(int(cv), int(counts.min()))
    if folds < 2:
        raise ValueError(f"Nested CV of a MultiLayerProbe needs at least 2 samples per class. Got a class with "
                         f"{counts.min()} instead.")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    return cross_val_score(clone(probe), X, y, cv=splitter)
