"""A closed-form ridge probe whose leave-one-out accuracy for every penalty costs one eigendecomposition.

`RidgeProbeCV` is a one-vs-all ridge classifier (±1 targets, like scikit-learn's
`RidgeClassifierCV`) that picks its penalty by exact leave-one-out (LOO) accuracy.
The expensive work is done once per fit, whatever the number of penalties:

1. one Gram matrix of the centred (and standardized) features: ``XᵀX`` (d × d) when
   ``n_samples >= n_features``, accumulated block by block with ``XᵀY`` as float32 BLAS
   products (so `X` may be a stream of row blocks, `FeatureStore.stream`: memory
   O(d²) whatever the number of rows); else the kernel ``XXᵀ`` (n × n), in memory;
2. one symmetric eigendecomposition of it, in float64;
3. the left singular vectors ``U`` of the design (n × r), so that for a penalty
   ``a`` the hat matrix is ``H(a) = 11ᵀ/n + U diag(λ / (λ + a)) Uᵀ``; in the Gram
   form they are recomputed block by block, ``U = X V diag(λ^-1/2)``, by a second pass.

Then, for all penalties at once and block by block, the fitted values ``Ŷ`` (one n × r by r × (n_alphas ·
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

from typing import Any, Callable, Iterator

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..threads import with_native_threads
from ..uncertainty import binomial_se
from .blocks import row_blocks

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


def _target_means(y_index: np.ndarray, n_classes: int) -> np.ndarray:
    """Column means of `_targets`, from the class counts (not from an n × classes matrix)."""
    means = 2.0 * np.bincount(y_index, minlength=n_classes) / len(y_index) - 1.0
    return means[1:] if n_classes == 2 else means


def _targets(y_index: np.ndarray, n_classes: int, dtype) -> np.ndarray:
    """±1 targets of a block of class indices: one column per class, or one (the second class) for two."""
    Y = np.full((len(y_index), n_classes), -1.0, dtype=dtype)
    Y[np.arange(len(y_index)), y_index] = 1.0
    return Y[:, 1:] if n_classes == 2 else Y


def _scaled(block: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(block - mean) / scale`` in the dtype of `mean`, as one new array."""
    out = np.subtract(block, mean, dtype=mean.dtype)
    out /= scale
    return out


class _Spectrum:
    """The scaled design's eigendecomposition, shared by every penalty, from one or two passes over X.

    Gram form (``n_samples >= n_features``): ``XᵀX`` (d × d) and ``XᵀY`` are accumulated
    block by block in one pass, so memory is O(d²) whatever the number of rows; the
    left singular vectors ``U = X_s W`` (``W = V / sqrt(λ)``) are recomputed per block by
    the second pass (`loo_decisions`). Kernel form (d > n): ``XXᵀ`` (n × n) of the whole
    design, in memory (n × d < d²).

    Each block is centred by a shift (the first block's mean) before its Gram product,
    and the exact mean is subtracted afterwards in float64 (``G - n m mᵀ`` with the small
    residual mean ``m``), so float32 products lose no more than centring the whole design first.

    Attributes:
        mean: Column means subtracted (zeros without intercept), float64, shape (d,).
        scale: Column scales divided by (ones without standardization), float64, shape (d,).
        eigvals: Eigenvalues ``λ`` kept (squared singular values of the scaled design), float64.
        penalty_unit: ``trace(XᵀX) / d`` of the scaled design; ``alpha`` is multiplied by it.
        form: ``"gram"`` or ``"kernel"``.
    """

    def __init__(
        self, blocks: Callable[[], Iterator[np.ndarray]], y_index: np.ndarray, n_classes: int, *,
        n_features: int, dtype: str, standardize: bool, fit_intercept: bool,
    ):
        self.dtype = np.dtype(dtype)
        self.n_samples = n_samples = len(y_index)
        self.fit_intercept, self.n_classes, self._blocks = fit_intercept, n_classes, blocks
        self.y_mean = _target_means(y_index, n_classes) if fit_intercept else None
        self.form = "gram" if n_samples >= n_features else "kernel"
        if self.form == "gram":
            gram, XtY, shift, residual_mean = self._accumulate(y_index, n_features)
        else:
            X = np.concatenate([np.asarray(block, dtype=self.dtype) for block in blocks()])
            shift, residual_mean = X.mean(axis=0, dtype=np.float64) if fit_intercept else np.zeros(n_features), 0.0
            X = X - shift.astype(self.dtype)
            gram = np.einsum("ij,ij->j", X, X, dtype=np.float64)  # only the diagonal of XᵀX: the scales
            XtY = None
        if not (np.isfinite(gram).all() and (XtY is None or np.isfinite(XtY).all())):
            raise ValueError("Input X contains NaN or infinity: RidgeProbeCV needs finite features.")
        self.mean = shift + residual_mean
        diagonal = np.diag(gram) if gram.ndim == 2 else gram
        if standardize:
            # Population standard deviation (root mean square when there is no intercept), in
            # float64; constant columns keep scale 1, as in StandardScaler.
            scale = np.sqrt(np.maximum(diagonal, 0.0) / n_samples)
            scale[scale <= 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(self.mean))] = 1.0
        else:
            scale = np.ones(n_features)
        self.scale = scale
        if self.form == "gram":
            gram /= np.outer(scale, scale)
            self.XtY = XtY / scale[:, None]  # Xsᵀ (Y - ȳ), (d, K)
        else:
            X /= scale.astype(self.dtype)
            gram = (X @ X.T).astype(np.float64)
            self._X = X
        gram = (gram + gram.T) / 2.0
        eigvals, vectors = scipy.linalg.eigh(gram, driver="evd", overwrite_a=True, check_finite=False)
        self.penalty_unit = float(eigvals.sum()) / n_features  # trace of the Gram matrix / d
        # Eigenvalues below the Gram's rounding level (1e-6 of the largest in float32, 1e-12 in
        # float64) are noise; their directions are dropped, as if infinitely penalised. That only
        # changes penalties below that level, e.g. alpha < 1e-6 λmax / (trace / d).
        rtol = (1e-6 if self.dtype == np.float32 else 1e-12) * max(eigvals[-1], 0.0)
        keep = eigvals > max(rtol, np.finfo(np.float64).tiny)
        self.eigvals, self._vectors = eigvals[keep], vectors[:, keep]
        if self.form == "gram":
            self.UtY = (self._vectors / np.sqrt(self.eigvals)).T @ self.XtY  # (r, K)
        else:
            self.U = np.ascontiguousarray(self._vectors.astype(self.dtype))
            Y = _targets(y_index, n_classes, np.float64)
            self.UtY = self.U.T.astype(np.float64) @ (Y - self.y_mean if fit_intercept else Y)

    def _accumulate(self, y_index: np.ndarray, n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One pass: ``ZᵀZ`` and ``Zᵀ(Y - ȳ)`` of the shifted design ``Z = X - shift``, both corrected to the
        exact mean; returns them, the shift and the residual mean ``mean - shift``."""
        gram = np.zeros((n_features, n_features))
        XtY = np.zeros((n_features, self.n_classes if self.n_classes > 2 else 1))
        sums = np.zeros(n_features)
        shift = None
        start = 0
        for block in self._blocks():
            if shift is None:
                shift = block.mean(axis=0, dtype=np.float64) if self.fit_intercept else np.zeros(n_features)
            Z = np.asarray(block, dtype=self.dtype) - shift.astype(self.dtype)
            Y = _targets(y_index[start : start + len(block)], self.n_classes, self.dtype)
            gram += Z.T @ Z
            XtY += Z.T @ Y
            sums += Z.sum(axis=0, dtype=np.float64)
            start += len(block)
        if start != self.n_samples:
            raise ValueError(f"The feature blocks hold {start} rows for {self.n_samples} labels.")
        if not self.fit_intercept:
            return gram, XtY, shift, np.zeros(n_features)
        residual = sums / self.n_samples
        gram -= self.n_samples * np.outer(residual, residual)
        XtY -= self.n_samples * np.outer(residual, self.y_mean)
        return gram, XtY, shift, residual

    def shrinkage(self, penalties: np.ndarray) -> np.ndarray:
        """``λ / (λ + a)`` for each eigenvalue (rows) and penalty ``a`` (columns)."""
        return self.eigvals[:, None] / (self.eigvals[:, None] + penalties[None, :])

    def loo_decisions(self, y_index: np.ndarray, penalties: np.ndarray) -> Iterator[np.ndarray]:
        """Exact leave-one-out decision values, block by block: arrays (rows, n_penalties, n_targets).

        The gram form makes a second pass over X; the kernel form has ``U`` in memory.
        """
        dtype = self.dtype
        n_targets = self.UtY.shape[1]
        y_mean = self.y_mean if self.fit_intercept else np.zeros(n_targets)
        S = self.shrinkage(penalties)  # (r, A)
        # Fitted values for every penalty in one product: U @ [S_a * UᵀY for each a].
        combined = (S[:, :, None] * self.UtY[:, None, :]).reshape(len(self.eigvals), -1).astype(dtype)
        S = S.astype(dtype)
        if self.form == "gram":
            W = (self._vectors / np.sqrt(self.eigvals)).astype(dtype)
            mean, scale = self.mean.astype(dtype), self.scale.astype(dtype)
            blocks = (_scaled(block, mean, scale) @ W for block in self._blocks())
        else:
            blocks = iter([self.U])
        start = 0
        for U in blocks:
            rows = len(U)
            fitted = (U @ combined).reshape(rows, len(penalties), n_targets) + y_mean.astype(dtype)
            hat = np.square(U, out=U if self.form == "gram" else None) @ S  # (rows, A) diagonal of U S Uᵀ
            if self.fit_intercept:
                hat += dtype.type(1.0 / self.n_samples)
            # 1 - h is 0 only for a sample the model interpolates whatever its label (h = 1);
            # its LOO value is then undefined, and a tiny floor keeps it finite.
            one_minus_h = np.maximum(1.0 - hat, np.finfo(dtype).eps)
            Y = _targets(y_index[start : start + rows], self.n_classes, dtype)[:, None, :]
            yield Y - (Y - fitted) / one_minus_h[:, :, None]
            start += rows

    def coefficients(self, penalty: float) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients (d, K) in the original feature units and intercepts (K,) for one penalty."""
        if self.form == "gram":
            # w = V diag(1 / (λ + a)) Vᵀ Xsᵀ(Y - ȳ): no pass over X.
            coef_scaled = self._vectors @ ((self._vectors.T @ self.XtY) / (self.eigvals + penalty)[:, None])
        else:
            # w = Xsᵀ U diag(1 / (λ + a)) UᵀY, since Xs Xsᵀ = U diag(λ) Uᵀ.
            dual = self.U @ (self.UtY / (self.eigvals + penalty)[:, None]).astype(self.dtype)
            coef_scaled = (self._X.T @ dual).astype(np.float64)
        coef = coef_scaled / self.scale[:, None]
        y_mean = self.y_mean if self.fit_intercept else np.zeros(coef.shape[1])
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

    @with_native_threads("X")
    def fit(self, X: Any, y: Any) -> "RidgeProbeCV":
        """Fits the probe for every penalty, keeps the one with the best LOO accuracy.

        Args:
            X: Features, shape (n_samples, n_features), or a stream of them in row blocks
                (`FeatureStore.stream`; anything with ``blocks()``, ``n_features`` and a
                length): two passes over it, memory O(n_features²) whatever its rows.
            y: Class labels, shape (n_samples,), at least two classes.

        Returns:
            self.

        Raises:
            ValueError: For invalid parameters, non-finite features, fewer than 2
                classes or fewer than 3 samples.
        """
        alphas = self._check_params()
        if hasattr(X, "blocks"):
            y = np.asarray(y)
            if y.ndim != 1 or len(y) != len(X) or len(y) < 3:
                raise ValueError(
                    f"RidgeProbeCV needs one label per row of the feature stream and at least 3 rows. "
                    f"Got {len(X)} rows and labels of shape {y.shape} instead."
                )
            self.n_features_in_ = n_features = X.n_features
        else:
            X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], ensure_min_samples=3)
            n_features = X.shape[1]
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if self.classes_.size < 2:
            raise ValueError(
                "RidgeProbeCV needs at least 2 classes in y to train a classifier. "
                f"Got classes {self.classes_.tolist()} instead."
            )
        spectrum = _Spectrum(
            row_blocks(X), y_index, self.classes_.size, n_features=n_features, dtype=self.dtype,
            standardize=self.standardize, fit_intercept=self.fit_intercept,
        )
        penalties = alphas * spectrum.penalty_unit
        correct = np.zeros(len(alphas))
        kept = []
        start = 0
        for loo in spectrum.loo_decisions(y_index, penalties):  # (rows, A, K) per block
            if loo.shape[2] == 1:
                predicted = (loo[:, :, 0] > 0).astype(np.int64)
            else:
                predicted = loo.argmax(axis=2)
            correct += (predicted == y_index[start : start + len(loo), None]).sum(axis=0)
            start += len(loo)
            if self.store_cv_results:
                kept.append(np.transpose(loo, (0, 2, 1)))
        self.cv_scores_ = correct / len(y_index)
        best = float(self.cv_scores_.max())
        # Among equally accurate penalties, the strongest one (the most stable model).
        candidates = np.flatnonzero(self.cv_scores_ == best)
        chosen = candidates[np.argmax(alphas[candidates])]
        self.alpha_ = float(alphas[chosen])
        self.penalty_ = float(penalties[chosen])
        self.best_score_ = best
        self.best_params_ = {"alpha": self.alpha_}
        self.cv_se_ = binomial_se(best, len(y_index))
        self.solver_ = spectrum.form
        if self.store_cv_results:
            self.cv_results_ = np.concatenate(kept)
        coef, intercept = spectrum.coefficients(self.penalty_)
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
