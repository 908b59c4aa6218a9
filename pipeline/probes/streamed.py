"""Logistic regression and a linear SVM fitted on row blocks: the model of an in-memory fit, memory O(d × classes).

:class:`StreamedLinearClassifier` fits, by L-BFGS, the model of scikit-learn's
``LogisticRegression`` (``loss="log_loss"``: multinomial, or one sigmoid for two
classes; L2 penalty, unpenalised intercept) or of ``LinearSVC``
(``loss="squared_hinge"``: one-vs-rest, the intercept penalised like a feature of
value 1), on standardized features, from features it never holds whole: every
loss and gradient evaluation is one pass over row blocks (an array's, or a
`FeatureStore.stream`'s). Everything is float32 except the accumulated
gradient and the solver's state (float64, O(d × classes)):

- standardization is folded into the weights: the logits of a block are
  ``X (W / σ) + (b − μ · W / σ)``, so no block is centred or scaled, and nothing
  is copied but each block's logits (rows × classes);
- the mean ``μ`` and scale ``σ`` come from one more pass, before the first
  evaluation (and with a store stream that pass also checks the checksum).

The objective is scikit-learn's: the mean loss plus ``‖W‖² / (2 C n)``, solved to
the same gradient tolerance, so the coefficients agree with ``LogisticRegression`` /
``LinearSVC`` on ``StandardScaler`` output to that tolerance.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterator

import numpy as np
import scipy.optimize
from scipy.special import expit, log_softmax
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.utils._available_if import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from ...core.checks import is_positive_int
from .blocks import column_moments, row_blocks

__all__ = ["LOSSES", "StreamedLinearClassifier"]

LOSSES = ("log_loss", "squared_hinge")


class StreamedLinearClassifier(LinearClassifierMixin, BaseEstimator):
    """L2-penalised logistic regression or squared-hinge linear SVM, fitted on standardized features in row blocks.

    Args:
        loss: ``"log_loss"`` (``LogisticRegression``'s model) or ``"squared_hinge"``
            (``LinearSVC``'s, one-vs-rest).
        C: Inverse penalty, as scikit-learn's.
        tol: L-BFGS stops when the largest gradient component is below it (as
            ``LogisticRegression(solver="lbfgs")``).
        max_iter: L-BFGS iterations (each one or a few passes over the rows).

    Attributes:
        classes_, coef_, intercept_: As ``LogisticRegression``, in the original feature units.
        mean_, scale_: The standardization folded in, float64, shape (n_features,).
        n_iter_: L-BFGS iterations run; n_passes_: passes over the rows (the moments' included).
        n_features_in_: Number of features seen in ``fit``.

    Example:
        >>> clf = StreamedLinearClassifier(C=0.1).fit(store.stream(key, split="train"), y_train)
    """

    def __init__(self, loss: str = "log_loss", *, C: float = 1.0, tol: float = 1e-4, max_iter: int = 1000):
        self.loss = loss
        self.C = C
        self.tol = tol
        self.max_iter = max_iter

    def _check_params(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(
                f"The 'loss' parameter of StreamedLinearClassifier must be one of {LOSSES}. Got {self.loss!r} instead."
            )
        for name in ("C", "tol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                raise ValueError(
                    f"The '{name}' parameter of StreamedLinearClassifier must be a float in the range (0, inf). "
                    f"Got {value!r} instead."
                )
        if not is_positive_int(self.max_iter):
            raise ValueError(
                f"The 'max_iter' parameter of StreamedLinearClassifier must be a positive int. Got {self.max_iter!r} instead."
            )

    def fit(self, X: Any, y: Any) -> "StreamedLinearClassifier":
        """Fit on all rows of `X`, read block by block at each L-BFGS evaluation.

        Args:
            X: Features (n_samples, n_features), float32 kept as float32, or a stream of them
                in row blocks (`FeatureStore.stream`: anything with ``blocks()``, ``n_features``
                and a length).
            y: Class labels, shape (n_samples,), at least two classes.

        Returns:
            self.

        Raises:
            ValueError: For invalid parameters, non-finite features, fewer than 2 classes, or
                labels that do not match the rows.
        """
        self._check_params()
        if hasattr(X, "blocks"):
            y = np.asarray(y)
            if y.ndim != 1 or len(y) != len(X):
                raise ValueError(
                    f"StreamedLinearClassifier needs one label per row of the feature stream. Got {len(X)} rows "
                    f"and labels of shape {y.shape} instead."
                )
            self.n_features_in_ = n_features = X.n_features
        else:
            X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
            n_features = X.shape[1]
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if self.classes_.size < 2:
            raise ValueError(
                f"StreamedLinearClassifier needs at least 2 classes in y. Got classes {self.classes_.tolist()} instead."
            )
        blocks = row_blocks(X)
        self.mean_, self.scale_, n_rows = column_moments(blocks, n_features)
        if not (np.isfinite(self.mean_).all() and np.isfinite(self.scale_).all()):
            raise ValueError("Input X contains NaN or infinity: StreamedLinearClassifier needs finite features.")
        n_outputs = 1 if self.classes_.size == 2 else self.classes_.size
        shape = (n_features + 1, n_outputs)  # the last row: intercepts
        penalised = np.ones(shape)
        if self.loss == "log_loss":
            penalised[-1] = 0.0
        self.n_passes_ = 1
        strength = 1.0 / (self.C * n_rows)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            self.n_passes_ += 1
            loss, gradient = self._loss_and_gradient(theta.reshape(shape), blocks, y_index, n_rows)
            weights = theta.reshape(shape) * penalised
            return loss + 0.5 * strength * float((weights * weights).sum()), (gradient + strength * weights).ravel()

        result = scipy.optimize.minimize(
            objective, np.zeros(shape).ravel(), method="L-BFGS-B", jac=True,
            options={"maxiter": self.max_iter, "maxls": 50, "gtol": self.tol, "ftol": 64 * np.finfo(float).eps},
        )
        if not result.success and result.nit >= self.max_iter:
            warnings.warn(
                f"StreamedLinearClassifier did not converge in {self.max_iter} iterations; raise max_iter.",
                ConvergenceWarning,
                stacklevel=2,
            )
        theta = result.x.reshape(shape)
        coef = theta[:-1] / self.scale_[:, None]
        self.coef_ = coef.T.copy()
        self.intercept_ = theta[-1] - self.mean_ @ coef
        self.n_iter_ = int(result.nit)
        return self

    @available_if(lambda self: self.loss == "log_loss")
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (``loss="log_loss"`` only), shape (n_samples, n_classes)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            positive = expit(scores)
            return np.column_stack([1 - positive, positive])
        return np.exp(log_softmax(scores, axis=1))

    def _loss_and_gradient(
        self, theta: np.ndarray, blocks: Callable[[], Iterator[np.ndarray]], y_index: np.ndarray, n_rows: int
    ) -> tuple[float, np.ndarray]:
        """Mean loss and its gradient with respect to the standardized-space parameters, in one pass."""
        weights = theta[:-1] / self.scale_[:, None]  # the standardization folded into the weights
        folded_w = weights.astype(np.float32)
        folded_b = (theta[-1] - self.mean_ @ weights).astype(np.float32)
        n_outputs = theta.shape[1]
        XtG = np.zeros((len(weights), n_outputs))
        G_sum = np.zeros(n_outputs)
        loss = 0.0
        start = 0
        for block in blocks():
            index = y_index[start : start + len(block)]
            start += len(block)
            Z = block @ folded_w.astype(block.dtype, copy=False) + folded_b.astype(block.dtype, copy=False)
            block_loss, G = self._block_loss(Z, index)
            loss += block_loss
            XtG += block.T @ G
            G_sum += G.sum(axis=0, dtype=np.float64)
        # d loss / d W for standardized X: ((X - μ) / σ)ᵀ G = (XᵀG - μ Σ G) / σ.
        gradient = np.empty_like(theta)
        gradient[:-1] = (XtG - np.outer(self.mean_, G_sum)) / self.scale_[:, None]
        gradient[-1] = G_sum
        return loss / n_rows, gradient / n_rows

    def _block_loss(self, Z: np.ndarray, index: np.ndarray) -> tuple[float, np.ndarray]:
        """Summed loss of a block's decision values `Z` (rows × outputs) and its derivative in `Z` (in place)."""
        rows = np.arange(len(index))
        if self.loss == "log_loss" and Z.shape[1] == 1:
            signs = np.where(index == 1, 1.0, -1.0).astype(Z.dtype)[:, None]
            margin = signs * Z
            loss = float(np.logaddexp(0, -margin).sum(dtype=np.float64))
            return loss, -signs * expit(-margin)
        if self.loss == "log_loss":
            log_p = log_softmax(Z, axis=1)
            loss = -float(log_p[rows, index].sum(dtype=np.float64))
            G = np.exp(log_p, out=log_p)
            G[rows, index] -= 1.0
            return loss, G
        if Z.shape[1] == 1:
            signs = np.where(index == 1, 1.0, -1.0).astype(Z.dtype)[:, None]
        else:
            signs = np.full(Z.shape, -1.0, dtype=Z.dtype)
            signs[rows, index] = 1.0
        margin = np.maximum(1.0 - signs * Z, 0.0)
        loss = float(np.einsum("ij,ij->", margin, margin, dtype=np.float64))
        return loss, -2.0 * signs * margin
