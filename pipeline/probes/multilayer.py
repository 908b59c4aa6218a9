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
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from ..threads import with_native_threads
from .ridge import DEFAULT_ALPHAS, RidgeProbeCV, loo_standard_error

__all__ = ["MultiLayerProbe", "multi_layer_name"]


def multi_layer_name(layers: Sequence[str]) -> str:
    """The row name of a multi-layer probe, e.g. ``"multi:block3_pool+block4_pool"``."""
    return "multi:" + "+".join(layers)


def _check_features(features: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(features, Mapping) or not features:
        raise ValueError(
            f"{where} expects a non-empty dict of layer name -> feature array of shape "
            f"(n_samples, n_features). Received: {type(features).__name__}"
        )
    arrays, n_rows = {}, set()
    for name, X in features.items():
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] == 0 or not np.issubdtype(X.dtype, np.number):
            raise ValueError(
                f"Features of layer {name!r} must be a numeric 2-D array (n_samples, n_features); "
                f"flatten pooled features to one row per sample. Received: shape {X.shape}, dtype {X.dtype}"
            )
        if not np.all(np.isfinite(X)):
            raise ValueError(
                f"Features of layer {name!r} hold NaN or inf values; drop those samples or re-extract "
                f"with float32 storage. Received: {int((~np.isfinite(X)).sum())} non-finite values"
            )
        arrays[str(name)] = X
        n_rows.add(X.shape[0])
    if len(n_rows) != 1:
        raise ValueError(
            "Every layer must have one row per sample, the same samples in the same order. "
            f"Received: rows per layer {({name: X.shape[0] for name, X in arrays.items()})}"
        )
    return arrays


class MultiLayerProbe(ClassifierMixin, BaseEstimator):
    """Ridge probe on a greedily selected concatenation of layers (Head2Toe-style group selection).

    Args:
        layers: Layer names to consider, in the order used for names and
            concatenation. ``None``: every layer passed to ``fit``, in dict order.
        max_layers: Select at most this many layers (``None``: no limit).
        tol: Add a layer only if it raises the LOO accuracy by at least this much
            (0.002: 0.2 points).
        alphas: Relative penalties of the ridge probes (see ``RidgeProbeCV``).
        dtype: ``"float32"`` or ``"float64"`` for the ridge probes.
        group_scaling: Multiply each standardized layer by ``1 / sqrt(d_layer)``.
        estimator: Final classifier fitted on the selected concatenation (cloned),
            e.g. ``LogisticRegression(C=1)``; ``None`` keeps the ridge probe.

    Attributes:
        layer_names_: The layers considered, in order.
        feature_dims_: Layer name -> number of features.
        layer_scores_: Layer name -> LOO accuracy of the ridge probe on that layer alone.
        selection_path_: One dict per greedy step: ``layers`` (selected after the
            step), ``added``, ``cv_score``, ``gain`` and the best ``alpha``.
        selected_layers_: The selected layers, in ``layer_names_`` order.
        name_: ``"multi:" + "+".join(selected_layers_)``.
        cv_score_: LOO accuracy of the ridge probe on the selected concatenation.
        cv_se_: Its binomial standard error.
        alpha_: The relative penalty of that probe.
        probe_: That fitted :class:`RidgeProbeCV` (on the scaled concatenation).
        estimator_: The final fitted classifier (``probe_`` when ``estimator=None``).
        classes_: Class labels.
        n_features_in_: Width of the selected concatenation (sum of selected dims).
        fit_seconds_: Wall-clock time of ``fit``.

    Example:
        >>> probe = MultiLayerProbe().fit({"block3_pool": X3, "block4_pool": X4, "block5_pool": X5}, y)
        >>> probe.name_, probe.cv_score_
        ('multi:block3_pool+block4_pool', 0.61)
        >>> probe.predict({"block3_pool": X3_test, "block4_pool": X4_test})
    """

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        *,
        max_layers: int | None = None,
        tol: float = 0.002,
        alphas: Any = DEFAULT_ALPHAS,
        dtype: str = "float32",
        group_scaling: bool = True,
        estimator: Any = None,
    ):
        self.layers = layers
        self.max_layers = max_layers
        self.tol = tol
        self.alphas = alphas
        self.dtype = dtype
        self.group_scaling = group_scaling
        self.estimator = estimator

    def _check_params(self, available: Sequence[str]) -> list[str]:
        if self.max_layers is not None and (
            isinstance(self.max_layers, bool) or not isinstance(self.max_layers, (int, np.integer)) or self.max_layers < 1
        ):
            raise ValueError(
                "The 'max_layers' parameter of MultiLayerProbe must be None or an int >= 1. "
                f"Got {self.max_layers!r} instead."
            )
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float, np.floating)) or not np.isfinite(self.tol) or self.tol < 0:
            raise ValueError(
                f"The 'tol' parameter of MultiLayerProbe must be a float >= 0. Got {self.tol!r} instead."
            )
        if self.layers is None:
            return list(available)
        layers = [str(name) for name in self.layers]
        missing = [name for name in layers if name not in available]
        if not layers or missing or len(set(layers)) != len(layers):
            raise ValueError(
                "The 'layers' parameter of MultiLayerProbe must name distinct layers present in the "
                f"features passed to fit (available: {list(available)}). Got {self.layers!r} instead"
                + (f"; missing: {missing}." if missing else ".")
            )
        return layers

    def _probe(self) -> RidgeProbeCV:
        # The blocks are already standardized and scaled; centring stays (it is exact for the intercept).
        return RidgeProbeCV(alphas=self.alphas, standardize=False, dtype=self.dtype, fit_intercept=True)

    def _scaled(self, name: str, X: np.ndarray) -> np.ndarray:
        block = np.asarray(X, dtype=self.dtype) - self.mean_[name].astype(self.dtype)
        block *= (self.weight_[name] / self.scale_[name]).astype(self.dtype)
        return block

    @with_native_threads("features")
    def fit(self, features: Mapping[str, Any], y: Any) -> "MultiLayerProbe":
        """Selects layers greedily by ridge LOO accuracy and fits the final probe.

        Args:
            features: Layer name -> training features of shape (n_samples, d_layer),
                the same samples in the same order for every layer.
            y: Class labels, shape (n_samples,).

        Returns:
            self.

        Raises:
            ValueError: For invalid parameters, mismatched rows or non-finite features.
        """
        started = time.perf_counter()
        arrays = _check_features(features, "MultiLayerProbe.fit")
        names = self._check_params(list(arrays))
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != next(iter(arrays.values())).shape[0]:
            raise ValueError(
                "y must be 1-D with one label per row of the features. "
                f"Received: y with shape {y.shape}, {next(iter(arrays.values())).shape[0]} feature rows"
            )
        self.layer_names_ = names
        self.feature_dims_ = {name: int(arrays[name].shape[1]) for name in names}
        self.mean_, self.scale_, self.weight_ = {}, {}, {}
        blocks = {}
        for name in names:
            X = np.asarray(arrays[name], dtype=self.dtype)
            mean = X.mean(axis=0, dtype=np.float64)
            centred = X - mean.astype(self.dtype)
            scale = np.sqrt(np.einsum("ij,ij->j", centred, centred, dtype=np.float64) / X.shape[0])
            scale[scale <= 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean))] = 1.0
            self.mean_[name], self.scale_[name] = mean, scale
            self.weight_[name] = 1.0 / np.sqrt(X.shape[1]) if self.group_scaling else 1.0
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
        self.cv_se_ = loo_standard_error(self.cv_score_, y.shape[0])
        self.alpha_ = best_probe.alpha_
        self.classes_ = best_probe.classes_
        self.n_features_in_ = int(sum(self.feature_dims_[name] for name in self.selected_layers_))
        if self.estimator is None:
            self.estimator_ = best_probe
        else:
            self.estimator_ = clone(self.estimator).fit(
                np.hstack([blocks[name] for name in self.selected_layers_]), y
            )
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def transform(self, features: Mapping[str, Any]) -> np.ndarray:
        """The scaled concatenation of the selected layers, shape (n_samples, n_features_in_).

        Raises:
            ValueError: If a selected layer is missing from ``features`` or has the wrong width.
        """
        check_is_fitted(self)
        if not isinstance(features, Mapping):
            raise ValueError(
                "MultiLayerProbe expects a dict of layer name -> features, with every selected layer "
                f"({self.selected_layers_}). Received: {type(features).__name__}"
            )
        missing = [name for name in self.selected_layers_ if name not in features]
        if missing:
            raise ValueError(
                f"The features lack selected layer(s) {missing}; pass every layer of {self.selected_layers_}. "
                f"Received: layers {list(features)}"
            )
        arrays = _check_features({name: features[name] for name in self.selected_layers_}, "MultiLayerProbe")
        for name, X in arrays.items():
            if X.shape[1] != self.feature_dims_[name]:
                raise ValueError(
                    f"Layer {name!r} had {self.feature_dims_[name]} features in fit. "
                    f"Received: {X.shape[1]} features"
                )
        return np.hstack([self._scaled(name, arrays[name]) for name in self.selected_layers_])

    def decision_function(self, features: Mapping[str, Any]) -> np.ndarray:
        """Decision values of the final classifier for a dict of layer features."""
        return self.estimator_.decision_function(self.transform(features))

    def predict(self, features: Mapping[str, Any]) -> np.ndarray:
        """Predicted class labels for a dict of layer features (only the selected layers are read)."""
        return self.estimator_.predict(self.transform(features))
