"""A linear SVM that fits pooled features in seconds: LinearSVC's model, solved by Newton steps on the Gram matrix.

:class:`LinearSVM` fits the model of scikit-learn's ``LinearSVC`` defaults (squared
hinge loss, L2 penalty, one-vs-rest, an intercept penalised like a feature of
value 1) but, for feature widths up to :data:`NEWTON_MAX_FEATURES`, solves it
by exact Newton steps (Keerthi & DeCoste, JMLR 2005): the Hessian of a class is
``I + 2C Xᵀ_S X_S`` over the samples inside the margin ``S``, which is formed
from the Gram matrix ``XᵀX`` (computed once per fit and shared by the classes)
and updated by the few samples that enter or leave ``S`` from one step to the
next; the step length is exact (a piecewise quadratic in one variable). A few
steps reach the optimum, and with ``warm_start`` the next C of a grid starts
from the last solution. Wider features go to liblinear (``LinearSVC``: primal
from 10 samples per feature, dual below).
Timings and accuracies against liblinear: benchmarks/RESULTS.md, "A linear SVM
that is not the slowest row".
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from ...core.checks import is_positive_int

__all__ = ["NEWTON_MAX_FEATURES", "SOLVERS", "LinearSVM", "linear_svm_solver"]

SOLVERS = ("auto", "newton", "primal", "dual")
"""``LinearSVM(solver=...)`` values: "primal" and "dual" are liblinear's (``LinearSVC(dual=...)``)."""

NEWTON_MAX_FEATURES = 2048
"""Widest features fitted by Newton steps: their (d+1)² Gram and Hessian matrices stay small (32 MiB each)."""

_DEFAULT_MAX_ITER = {"newton": 100, "primal": 1_000, "dual": 10_000}


def linear_svm_solver(n_samples: int, n_features: int) -> str:
    """The solver ``LinearSVM(solver="auto")`` uses for ``n_samples × n_features``.

    "newton" up to :data:`NEWTON_MAX_FEATURES` features; beyond, liblinear's
    "primal" from 10 samples per feature and its "dual" below.
    """
    if n_features <= NEWTON_MAX_FEATURES:
        return "newton"
    return "dual" if n_samples < 10 * n_features else "primal"


def _line_search(w: np.ndarray, p: np.ndarray, o: np.ndarray, q: np.ndarray, y: np.ndarray, C: float) -> float:
    """The step t minimising ``½‖w + t p‖² + C Σ max(0, 1 − y (o + t q))²`` (convex, piecewise quadratic in t).

    Newton steps on the derivative (piecewise linear), kept inside a bracket
    where it changes sign, bisecting when a step leaves it.
    """
    wp, pp = float(w @ p), float(p @ p)

    def slope(t: float) -> tuple[float, float]:
        margin = o + t * q
        inside = y * margin < 1
        residual = margin[inside] - y[inside]
        return wp + t * pp + 2 * C * float(residual @ q[inside]), pp + 2 * C * float(q[inside] @ q[inside])

    low, high = 0.0, 1.0
    while slope(high)[0] < 0 and high < 1e6:
        low, high = high, 2 * high
    t = high
    for _ in range(100):
        first, second = slope(t)
        if abs(first) <= 1e-12 * max(1.0, abs(wp)):
            break
        if first > 0:
            high = t
        else:
            low = t
        step = t - first / second
        t = step if low < step < high else (low + high) / 2
        if high - low <= 1e-12 * high:
            break
    return t


def _newton_class(
    Xt: np.ndarray, gram: np.ndarray, y: np.ndarray, w: np.ndarray, C: float, tol: float, max_iter: int
) -> tuple[np.ndarray, int]:
    """One class of the one-vs-rest model (labels ±1) from `w`; returns the solution and the Newton steps taken.

    Stops as liblinear's primal solver does: when ‖gradient‖ ≤ tol · max(min(#pos, #neg), 1) / n · ‖gradient at 0‖.
    """
    n = y.shape[0]
    n_pos = int(np.sum(y > 0))
    stop = tol * max(min(n_pos, n - n_pos), 1) / n * np.linalg.norm(2 * C * (Xt.T @ y))
    o = Xt @ w
    inside_M = None  # the samples M = Xtᵀ Xt is summed over
    M = None
    for step in range(max_iter):
        inside = y * o < 1
        gradient = w + 2 * C * (Xt[inside].T @ (o[inside] - y[inside]))
        if np.linalg.norm(gradient) <= stop:
            return w, step
        n_inside = int(inside.sum())
        if inside_M is None:
            changed = n
        else:
            entered, left = inside & ~inside_M, inside_M & ~inside
            changed = int(entered.sum() + left.sum())
        if changed <= min(n_inside, n - n_inside):
            M = M + Xt[entered].T @ Xt[entered] - Xt[left].T @ Xt[left]
        elif n_inside <= n - n_inside:
            M = Xt[inside].T @ Xt[inside]
        else:
            outside = Xt[~inside]
            M = gram - outside.T @ outside
        inside_M = inside
        hessian = 2 * C * M
        hessian[np.diag_indices_from(hessian)] += 1.0
        p = -scipy.linalg.cho_solve(scipy.linalg.cho_factor(hessian, check_finite=False), gradient, check_finite=False)
        q = Xt @ p
        t = _line_search(w, p, o, q, y, C)
        w = w + t * p
        o = o + t * q
    return w, max_iter


class LinearSVM(LinearClassifierMixin, BaseEstimator):
    """Linear SVM (squared hinge, L2, one-vs-rest): ``LinearSVC``'s model, fitted by Newton steps where that is fast.

    Args:
        C: Inverse regularisation strength, > 0 (as ``LinearSVC``'s).
        solver: "newton" (exact Newton steps on the Gram matrix), "primal" or
            "dual" (liblinear), or "auto": :func:`linear_svm_solver` of the
            training shape.
        tol: Stopping tolerance (liblinear's for its solvers; the same relative
            gradient norm for "newton").
        max_iter: Iteration limit; None: 100 Newton steps, 1,000 primal or
            10,000 dual liblinear iterations.
        warm_start: With "newton", start from the previous fit's solution (a
            grid of C fitted in increasing order); liblinear always starts cold.
        random_state: Seed of liblinear's shuffling ("newton" is deterministic).

    Attributes:
        coef_: Weights, shape (1, n_features) for two classes, else (n_classes, n_features).
        intercept_: Intercepts, shape (1,) or (n_classes,).
        classes_: Class labels.
        n_iter_: Most Newton steps (or liblinear iterations) of any class.
        solver_: The solver used.

    Example:
        >>> LinearSVM(C=0.1).fit(X_train, y_train).score(X_test, y_test)
    """

    def __init__(
        self,
        C: float = 1.0,
        *,
        solver: str = "auto",
        tol: float = 1e-4,
        max_iter: int | None = None,
        warm_start: bool = False,
        random_state: int | None = None,
    ):
        self.C = C
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.random_state = random_state

    def _check_params(self) -> None:
        for name in ("C", "tol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0 \
                    or not np.isfinite(value):
                raise ValueError(
                    f"The {name!r} parameter of LinearSVM must be a float in the range (0, inf). Got {value!r} instead."
                )
        if self.solver not in SOLVERS:
            raise ValueError(
                f"The 'solver' parameter of LinearSVM must be one of {SOLVERS}. Got {self.solver!r} instead."
            )
        if self.max_iter is not None and not is_positive_int(self.max_iter):
            raise ValueError(
                f"The 'max_iter' parameter of LinearSVM must be a positive int or None. Got {self.max_iter!r} instead."
            )

    def fit(self, X: Any, y: Any) -> "LinearSVM":
        """Fits one weight vector per class (one for two classes) on the training data.

        Returns:
            self.

        Raises:
            ValueError: For invalid parameters, non-finite features or fewer than 2 classes.
        """
        self._check_params()
        previous = (self.coef_, self.intercept_, self.classes_) if self.warm_start and hasattr(self, "coef_") else None
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], order="C")
        check_classification_targets(y)
        classes = np.unique(y)
        if classes.size < 2:
            raise ValueError(
                "LinearSVM needs at least 2 classes in y to train a classifier. "
                f"Got 1 class instead: {classes.tolist()}."
            )
        solver = linear_svm_solver(*X.shape) if self.solver == "auto" else self.solver
        max_iter = self.max_iter or _DEFAULT_MAX_ITER[solver]
        if solver != "newton":
            from sklearn.svm import LinearSVC

            fitted = LinearSVC(
                C=self.C, dual=solver == "dual", tol=self.tol, max_iter=max_iter, random_state=self.random_state
            ).fit(X, y)
            self.coef_, self.intercept_, self.n_iter_ = fitted.coef_, fitted.intercept_, int(fitted.n_iter_)
        else:
            self._fit_newton(X, y, classes, max_iter, previous)
        self.classes_ = classes
        self.solver_ = solver
        return self

    def _fit_newton(self, X: np.ndarray, y: np.ndarray, classes: np.ndarray, max_iter: int, previous) -> None:
        Xt = np.empty((X.shape[0], X.shape[1] + 1))
        Xt[:, :-1] = X
        Xt[:, -1] = 1.0  # the intercept, penalised like a feature (LinearSVC's intercept_scaling=1)
        gram = Xt.T @ Xt
        targets = classes[1:] if classes.size == 2 else classes
        start = None
        if previous is not None and np.array_equal(previous[2], classes) and previous[0].shape[1] == X.shape[1]:
            start = np.column_stack([previous[0], previous[1]])
        W = np.empty((targets.size, Xt.shape[1]))
        steps = []
        for k, label in enumerate(targets):
            signs = np.where(y == label, 1.0, -1.0)
            w = np.zeros(Xt.shape[1]) if start is None else start[k].copy()
            W[k], taken = _newton_class(Xt, gram, signs, w, float(self.C), float(self.tol), max_iter)
            steps.append(taken)
        if max(steps) >= max_iter:
            warnings.warn(
                f"LinearSVM's Newton steps did not converge in max_iter={max_iter} steps; increase max_iter.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self.coef_ = W[:, :-1].copy()
        self.intercept_ = W[:, -1].copy()
        self.n_iter_ = int(max(steps))
