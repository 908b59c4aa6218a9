"""A closed-form ridge probe whose leave-one-out accuracy for every penalty costs one eigendecomposition.

`RidgeProbeCV` is a one-vs-all ridge classifier (±1 targets, like scikit-learn's
`RidgeClassifierCV`) that picks its penalty by exact leave-one-out (LOO) accuracy.
The expensive work is done once per fit, whatever the number of penalties:

1. centre (and standardize) the features, in float32 by default;
2. one Gram matrix: ``XᵀX`` (d × d) when ``n_samples >= n_features``, else the
   kernel ``XXᵀ`` (n × n), as a float32 BLAS product;
3. one symmetric eigendecomposition of it, in float64;
4. the left singular vectors ``U`` of the design (n × r), so that for a penalty
   ``a`` the hat matrix is ``H(a) = 11ᵀ/n + U diag(λ / (λ + a)) Uᵀ``.

Then, for all penalties at once, the fitted values ``Ŷ`` (one n × r by r × (n_alphas ·
n_classes) product) and the hat diagonals ``h`` (one n × r by r × n_alphas product)
give the exact LOO decision values ``Y - (Y - Ŷ) / (1 - h)``: the prediction for
sample ``i`` by the model refitted without it. That is the identity scikit-learn's
`_RidgeGCV` uses; the intercept is unpenalised and handled exactly by centring
(the ``1/n`` term of ``h``).

Penalty scale: ``alphas`` are *relative* penalties, multiplied by the mean
eigenvalue of the Gram matrix of the centred (standardized) features,
``trace(XᵀX) / n_features``. With ``standardize=True`` and no constant feature
that mean is ``n_samples``, so ``alpha`` is the penalty of the mean-squared-error
objective ``‖y − Xw − b‖² / n + alpha ‖w‖²`` on standardized features: it does not
change with the number of samples, and it does not change when every feature is
multiplied by the same factor (with ``standardize=False`` too).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..threads import with_native_threads
from ..uncertainty import binomial_se

__all__ = ["DEFAULT_ALPHAS", "RidgeProbeCV"]

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-6, 1, 15))
"""Default relative penalties: 15 log-spaced values from 1e-6 to 10 (see the module docstring).

On CIFAR-10 VGG16 block pools (64..512 features, standardized) the LOO optimum was
3e-5..1e-2 with 50,000 training images and 1e-3..0.1 with 3,000; 1e-6 is as good as
unpenalised, 10 shrinks hard.
"""

_DTYPES = ("float32", "float64")


def _check_alphas(alphas: Any) -> np.ndarray:
    try:
        values = np.asarray(alphas, dtype=np.float64) if not isinstance(alphas, str) else None
    except (TypeError, ValueError):  # ["a"], [[1], [2, 3]]
        values = None
    if values is None or values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(
            "The 'alphas' parameter of RidgeProbeCV must be a non-empty 1-D sequence of finite "
            f"positive floats (relative penalties, e.g. np.logspace(-6, 1, 15)). Got {alphas!r} instead."
        )
    return values


class _Spectrum:
    """The design's centred/scaled form and its eigendecomposition, shared by every penalty.

    Attributes:
        Xc: Centred (if ``fit_intercept``) features, shape (n, d), in the working dtype.
        mean: Column means subtracted (zeros without intercept), float64, shape (d,).
        scale: Column scales divided by (ones without standardization), float64, shape (d,).
        U: Left singular vectors of the scaled design, shape (n, r), working dtype.
        eigvals: Their eigenvalues ``λ`` (squared singular values), float64, shape (r,).
        penalty_unit: ``trace(XᵀX) / d`` of the scaled design; ``alpha`` is multiplied by it.
        form: ``"gram"`` (d × d eigendecomposition) or ``"kernel"`` (n × n).
    """

    def __init__(self, X: np.ndarray, *, dtype: str, standardize: bool, fit_intercept: bool):
        n_samples, n_features = X.shape
        Xc = np.array(X, dtype=dtype, order="C", copy=True)
        mean = Xc.mean(axis=0, dtype=np.float64) if fit_intercept else np.zeros(n_features)
        if fit_intercept:
            Xc -= mean.astype(dtype)
        if standardize:
            # Population standard deviation (root mean square when there is no intercept),
            # accumulated in float64; constant columns keep scale 1, as in StandardScaler.
            scale = np.sqrt(np.einsum("ij,ij->j", Xc, Xc, dtype=np.float64) / n_samples)
            scale[scale <= 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean))] = 1.0
            Xc /= scale.astype(dtype)
        else:
            scale = np.ones(n_features)
        self.Xc, self.mean, self.scale = Xc, mean, scale
        self.form = "gram" if n_samples >= n_features else "kernel"
        if self.form == "gram":
            gram = (Xc.T @ Xc).astype(np.float64)
        else:
            gram = (Xc @ Xc.T).astype(np.float64)
        gram = (gram + gram.T) / 2.0
        eigvals, vectors = scipy.linalg.eigh(gram, driver="evd", overwrite_a=True, check_finite=False)
        self.penalty_unit = float(eigvals.sum()) / n_features  # trace of the Gram matrix / d
        # Eigenvalues below the Gram's rounding level (1e-6 of the largest in float32, 1e-12 in
        # float64) are noise; their directions are dropped, as if infinitely penalised. That only
        # changes penalties below that level, e.g. alpha < 1e-6 λmax / (trace / d).
        rtol = (1e-6 if np.dtype(dtype) == np.float32 else 1e-12) * max(eigvals[-1], 0.0)
        keep = eigvals > max(rtol, np.finfo(np.float64).tiny)
        eigvals, vectors = eigvals[keep], vectors[:, keep]
        if self.form == "gram":
            # U = X V / sqrt(λ): one n × d × r product in the working dtype.
            self.U = Xc @ (vectors / np.sqrt(eigvals)).astype(dtype)
        else:
            self.U = np.ascontiguousarray(vectors.astype(dtype))
        self.eigvals = eigvals
        self.n_samples = n_samples
        self.fit_intercept = fit_intercept

    def shrinkage(self, penalties: np.ndarray) -> np.ndarray:
        """``λ / (λ + a)`` for each eigenvalue (rows) and penalty ``a`` (columns)."""
        return self.eigvals[:, None] / (self.eigvals[:, None] + penalties[None, :])

    def loo_decisions(self, Y: np.ndarray, penalties: np.ndarray) -> np.ndarray:
        """Exact leave-one-out decision values, shape (n_samples, n_penalties, n_targets)."""
        dtype = self.U.dtype
        n_targets = Y.shape[1]
        y_mean = Y.mean(axis=0) if self.fit_intercept else np.zeros(n_targets)
        UtY = (self.U.T @ (Y - y_mean).astype(dtype)).astype(np.float64)  # (r, K)
        S = self.shrinkage(penalties)  # (r, A)
        # Fitted values for every penalty in one product: U @ [S_a * UᵀY for each a].
        fitted = self.U @ (S[:, :, None] * UtY[:, None, :]).reshape(len(self.eigvals), -1).astype(dtype)
        fitted = fitted.reshape(self.n_samples, len(penalties), n_targets)
        fitted += y_mean.astype(dtype)
        hat = (self.U * self.U) @ S.astype(dtype)  # (n, A) diagonal of U S Uᵀ
        if self.fit_intercept:
            hat += dtype.type(1.0 / self.n_samples)
        # 1 - h is 0 only for a sample the model interpolates whatever its label (h = 1);
        # its LOO value is then undefined, and a tiny floor keeps it finite.
        one_minus_h = np.maximum(1.0 - hat, np.finfo(dtype).eps)
        Yd = Y.astype(dtype)[:, None, :]
        return Yd - (Yd - fitted) / one_minus_h[:, :, None]

    def coefficients(self, Y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients (d, K) in the original feature units and intercepts (K,) for one penalty."""
        dtype = self.U.dtype
        y_mean = Y.mean(axis=0) if self.fit_intercept else np.zeros(Y.shape[1])
        UtY = (self.U.T @ (Y - y_mean).astype(dtype)).astype(np.float64)
        # w = Xᵀ U diag(1 / (λ + a)) UᵀY: valid for both forms, since X Xᵀ = U diag(λ) Uᵀ.
        dual = self.U @ (UtY / (self.eigvals + penalty)[:, None]).astype(dtype)
        coef_scaled = (self.Xc.T @ dual).astype(np.float64)
        coef = coef_scaled / self.scale[:, None]
        intercept = y_mean - self.mean @ coef
        return coef, intercept


class RidgeProbeCV(ClassifierMixin, BaseEstimator):
    """One-vs-all ridge classifier with its penalty chosen by exact leave-one-out accuracy.

    A fast linear probe for cached features: one Gram matrix and one eigendecomposition
    per fit give the LOO accuracy of every penalty in ``alphas`` (see the module
    docstring for the algorithm and the penalty scale). Targets are ±1 per class,
    as in scikit-learn's ``RidgeClassifierCV``; two classes use one column.

    Args:
        alphas: Relative penalties (multiplied by the mean eigenvalue of the Gram
            matrix of the centred, standardized features, i.e. by ``n_samples`` when
            standardized). Default: :data:`DEFAULT_ALPHAS`.
        standardize: Divide each feature by its standard deviation before fitting
            (the coefficients are returned in the original units).
        dtype: ``"float32"`` (default; the n-sized products run in float32, the
            eigendecomposition in float64) or ``"float64"``.
        fit_intercept: Fit an unpenalised intercept (features are centred).
        store_cv_results: Keep the LOO decision values in ``cv_results_``.

    Attributes:
        classes_: Class labels, shape (n_classes,).
        coef_: Coefficients, shape (1, n_features) for two classes, else (n_classes, n_features).
        intercept_: Intercepts, shape (1,) or (n_classes,).
        alpha_: The chosen relative penalty (the largest among equally accurate ones).
        penalty_: The absolute penalty that ``alpha_`` stands for.
        cv_scores_: LOO accuracy per alpha, shape (n_alphas,).
        best_score_: LOO accuracy of ``alpha_``.
        best_params_: ``{"alpha": alpha_}``, as ``GridSearchCV.best_params_``.
        cv_se_: Its binomial standard error ``sqrt(p (1 - p) / n_samples)``.
        cv_results_: With ``store_cv_results=True``, LOO decision values of shape
            (n_samples, n_targets, n_alphas).
        solver_: ``"gram"`` (d × d eigendecomposition) or ``"kernel"`` (n × n, when d > n).
        n_features_in_: Number of features seen in ``fit``.

    Example:
        >>> probe = RidgeProbeCV().fit(X_train, y_train)
        >>> probe.alpha_, probe.best_score_, probe.score(X_test, y_test)
    """

    def __init__(
        self,
        alphas: Any = DEFAULT_ALPHAS,
        *,
        standardize: bool = True,
        dtype: str = "float32",
        fit_intercept: bool = True,
        store_cv_results: bool = False,
    ):
        self.alphas = alphas
        self.standardize = standardize
        self.dtype = dtype
        self.fit_intercept = fit_intercept
        self.store_cv_results = store_cv_results

    @with_native_threads("X")
    def _check_params(self) -> np.ndarray:
        """The checks of `fit` on the parameters (scikit-learn's wording); returns the alphas as floats."""
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"The 'dtype' parameter of RidgeProbeCV must be one of {_DTYPES}. Got {self.dtype!r} instead."
            )
        for name in ("standardize", "fit_intercept", "store_cv_results"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(
                    f"The '{name}' parameter of RidgeProbeCV must be a bool. Got {getattr(self, name)!r} instead."
                )
        return _check_alphas(self.alphas)

    def fit(self, X: Any, y: Any) -> "RidgeProbeCV":
        """Fits the probe for every penalty, keeps the one with the best LOO accuracy.

        Args:
            X: Features, shape (n_samples, n_features).
            y: Class labels, shape (n_samples,), at least two classes.

        Returns:
            self.

        Raises:
            ValueError: For invalid parameters, non-finite features, fewer than 2
                classes or fewer than 3 samples.
        """
        alphas = self._check_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], ensure_min_samples=3)
        check_classification_targets(y)
        binarizer = LabelBinarizer(pos_label=1, neg_label=-1)
        Y = binarizer.fit_transform(y).astype(np.float64)
        self.classes_ = binarizer.classes_
        if self.classes_.size < 2:
            raise ValueError(
                "RidgeProbeCV needs at least 2 classes in y to train a classifier. "
                f"Got classes {self.classes_.tolist()} instead."
            )
        spectrum = _Spectrum(X, dtype=self.dtype, standardize=self.standardize, fit_intercept=self.fit_intercept)
        penalties = alphas * spectrum.penalty_unit
        loo = spectrum.loo_decisions(Y, penalties)  # (n, A, K)
        y_index = np.searchsorted(self.classes_, y)
        if Y.shape[1] == 1:
            predicted = (loo[:, :, 0] > 0).astype(np.int64)
        else:
            predicted = loo.argmax(axis=2)
        self.cv_scores_ = (predicted == y_index[:, None]).mean(axis=0)
        best = float(self.cv_scores_.max())
        # Among equally accurate penalties, the strongest one (the most stable model).
        candidates = np.flatnonzero(self.cv_scores_ == best)
        chosen = candidates[np.argmax(alphas[candidates])]
        self.alpha_ = float(alphas[chosen])
        self.penalty_ = float(penalties[chosen])
        self.best_score_ = best
        self.best_params_ = {"alpha": self.alpha_}
        self.cv_se_ = binomial_se(best, X.shape[0])
        self.solver_ = spectrum.form
        if self.store_cv_results:
            self.cv_results_ = np.transpose(loo, (0, 2, 1)).copy()
        coef, intercept = spectrum.coefficients(Y, self.penalty_)
        self.coef_ = coef.T
        self.intercept_ = intercept
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Decision values, shape (n_samples,) for two classes, else (n_samples, n_classes)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        scores = X @ self.coef_.T.astype(X.dtype) + self.intercept_.astype(X.dtype)
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class labels, shape (n_samples,)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(np.int64)]
        return self.classes_[scores.argmax(axis=1)]
