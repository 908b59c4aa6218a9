"""Logistic regression on the GPU: scikit-learn's objective, solved by L-BFGS in JAX.

`DeviceLogisticRegression` minimises what `LogisticRegression(penalty="l2",
solver="lbfgs")` minimises: the mean cross-entropy plus ||W||² / (2 C n), the
intercept not penalised; a sigmoid model of one weight vector for two
classes, a softmax (multinomial) model for more, as scikit-learn fits them. So
it chooses the same C and predicts the same labels up to the solver's
tolerance (tested against scikit-learn on CPU), while every iteration is a
pair of matrix products on the device: the probe rows of cached features that
dinov2's evaluation fits with cuML, here with JAX, which the device check
already has.

The solver is one compiled function per problem shape, with C an argument, so
the warm-started path over C (`layerprobe.pipeline.classifiers`) compiles once
per shape; rows are padded (with zero weight) to `padded_rows`, so the folds of
a cross-validation, a few rows apart, share one compilation. Computation is
float32 (the features are stored in float32 or float16); the results come back
as float64 numpy arrays.

Where rows run is chosen by `[classifiers] device` (`resolve_probe_device`):
"cpu" (scikit-learn), "gpu" (this estimator; refused where JAX sees no GPU),
"jax" (this estimator on whatever device JAX computes on: a TPU, or the CPU,
as the tests run it) or "auto" (the GPU where JAX sees one, else the CPU).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ...core.errors import InputError
from ..classifier_grids import PROBE_DEVICES

__all__ = ["DeviceLogisticRegression", "jax_gpu", "resolve_probe_device"]

_HISTORY = 10  # L-BFGS correction pairs


def padded_rows(n_samples: int) -> int:
    """The row count a problem of `n_samples` is padded to: a multiple of an eighth of the next power
    of two (at least 64), so at most 1/8 more rows, and one compiled shape for nearby sizes."""
    step = max(64, 1 << max(0, (n_samples - 1).bit_length() - 3))
    return -(-n_samples // step) * step


def jax_gpu() -> str | None:
    """The name of the GPU JAX computes on, or None (JAX not installed, or no GPU visible to it)."""
    try:
        import jax

        devices = jax.devices()
    except (ImportError, RuntimeError):
        return None
    device = devices[0]
    return None if device.platform == "cpu" else str(getattr(device, "device_kind", device.platform))


def resolve_probe_device(device: str) -> str:
    """`"cpu"` (scikit-learn) or `"jax"` (`DeviceLogisticRegression`): what fits the rows for a
    `[classifiers] device` value.

    Raises:
        InputError: For an unknown value, `"gpu"` where JAX sees no GPU, or `"jax"` where it is not installed.
    """
    if device not in PROBE_DEVICES:
        raise InputError(f"device must be one of {PROBE_DEVICES}. Received: device={device!r}")
    if device == "cpu":
        return device
    if device == "jax":
        try:
            import jax  # noqa: F401
        except ImportError:
            raise InputError("device='jax' needs JAX: pip install jax (or use device='cpu'). "
                             "Received: device='jax'") from None
        return "jax"
    if jax_gpu() is not None:
        return "jax"
    if device == "gpu":
        raise InputError(
            "device='gpu' fits the logreg rows with JAX on a GPU, but JAX sees no GPU here (or is not installed: "
            "pip install 'jax[cuda12]'). Use device='auto' (the GPU where there is one) or 'cpu'. "
            "Received: device='gpu'"
        )
    return "cpu"


class DeviceLogisticRegression(ClassifierMixin, BaseEstimator):
    """L2-penalised logistic regression fitted by L-BFGS in JAX (on the GPU where JAX runs there).

    Args:
        C: Inverse of the penalty strength, as in scikit-learn.
        max_iter: Most L-BFGS iterations.
        tol: Stop when the largest gradient component of the mean objective is below it.
        fit_intercept: Fit an unpenalised intercept.
        warm_start: Start from the previous fit's coefficients (the path over C).
        random_state: Unused (the fit is deterministic); accepted as scikit-learn's estimators do.

    Attributes:
        classes_, coef_, intercept_, n_iter_: As in scikit-learn's `LogisticRegression`.
    """

    def __init__(self, C: float = 1.0, *, max_iter: int = 2000, tol: float = 1e-4, fit_intercept: bool = True,
                 warm_start: bool = False, random_state: int | None = None):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.fit_intercept = fit_intercept
        self.warm_start = warm_start
        self.random_state = random_state

    def fit(self, X, y) -> DeviceLogisticRegression:
        if not (isinstance(self.C, (int, float)) and self.C > 0):
            raise ValueError(f"The 'C' parameter of DeviceLogisticRegression must be a float in the range (0, inf). "
                             f"Got {self.C!r} instead.")
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        self.classes_, targets = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"This solver needs samples of at least 2 classes in the data, but the data contains only "
                             f"one class: {self.classes_[0]!r}")
        n_outputs = 1 if len(self.classes_) == 2 else len(self.classes_)
        n_features = X.shape[1]
        start = np.zeros((n_features + 1, n_outputs), dtype=np.float32)
        if self.warm_start and getattr(self, "coef_", None) is not None and self.coef_.shape == (n_outputs, n_features):
            start[:-1] = self.coef_.T
            start[-1] = self.intercept_
        rows = padded_rows(len(X))
        padded = np.zeros((rows, n_features), dtype=np.float32)
        padded[: len(X)] = X
        labels = np.zeros(rows, dtype=np.int32)
        labels[: len(X)] = targets
        weights, n_iter = _solver(self.fit_intercept)(
            padded, labels, np.arange(rows) < len(X), start, np.float32(self.C), self.max_iter, np.float32(self.tol),
        )
        weights = np.asarray(weights, dtype=np.float64)
        self.coef_ = weights[:-1].T.copy()
        self.intercept_ = weights[-1].copy() if self.fit_intercept else np.zeros(n_outputs)
        self.n_iter_ = np.array([int(n_iter)])
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        scores = X @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict_proba(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        if scores.ndim == 1:
            positive = 1.0 / (1.0 + np.exp(-scores))
            return np.column_stack([1.0 - positive, positive])
        scores = scores - scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        return self.classes_[(scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)]


_SOLVERS: dict[bool, object] = {}


def _solver(fit_intercept: bool):
    """The compiled L-BFGS fit (one per `fit_intercept`; JAX compiles it once per problem shape)."""
    if fit_intercept not in _SOLVERS:
        _SOLVERS[fit_intercept] = _build_solver(fit_intercept)
    return _SOLVERS[fit_intercept]


def _build_solver(fit_intercept: bool):
    import jax
    import jax.numpy as jnp

    def objective(weights, X, targets, real, C):
        """Mean cross-entropy over the `real` rows + ||W||² / (2 C n): scikit-learn's objective divided by n."""
        n = jnp.sum(real)
        scores = X @ weights[:-1] + (weights[-1] if fit_intercept else 0.0)
        if weights.shape[1] == 1:  # two classes: a sigmoid of one score
            signs = 2.0 * targets.astype(scores.dtype) - 1.0
            losses = jax.nn.softplus(-signs * scores[:, 0])
        else:
            losses = jax.nn.logsumexp(scores, axis=1) - jnp.take_along_axis(scores, targets[:, None], 1)[:, 0]
        return jnp.sum(jnp.where(real, losses, 0.0)) / n + jnp.sum(weights[:-1] ** 2) / (2.0 * C * n)

    value_and_grad = jax.value_and_grad(objective)

    def direction(grad, S, Y, rho, count, newest):
        """The two-loop recursion: minus the inverse-Hessian estimate times `grad`."""
        history = S.shape[0]

        def backward(i, carry):
            q, alphas = carry
            slot = (newest - i) % history
            alpha = jnp.where(i < count, rho[slot] * jnp.vdot(S[slot], q), 0.0)
            return q - alpha * Y[slot], alphas.at[slot].set(alpha)

        q, alphas = jax.lax.fori_loop(0, history, backward, (grad, jnp.zeros(history, grad.dtype)))
        last = newest % history
        gamma = jnp.where(count > 0, jnp.vdot(S[last], Y[last]) / jnp.maximum(jnp.vdot(Y[last], Y[last]), 1e-30), 1.0)
        r = gamma * q

        def forward(i, r):
            slot = (newest - count + 1 + i) % history
            beta = rho[slot] * jnp.vdot(Y[slot], r)
            return jnp.where(i < count, r + S[slot] * (alphas[slot] - beta), r)

        return -jax.lax.fori_loop(0, history, forward, r)

    @jax.jit
    def fit(X, targets, real, start, C, max_iter, tol):
        shape = start.shape
        flat = lambda w: w.reshape(-1)  # noqa: E731
        def f_and_g(w):
            value, grad = value_and_grad(w.reshape(shape), X, targets, real, C)
            return value, flat(grad)

        size = start.size
        value, grad = f_and_g(flat(start))
        state = (flat(start), value, grad, jnp.zeros((_HISTORY, size), grad.dtype),
                 jnp.zeros((_HISTORY, size), grad.dtype), jnp.zeros(_HISTORY, grad.dtype), jnp.int32(0), jnp.int32(-1),
                 jnp.int32(0))

        def running(state):
            _, _, grad, _, _, _, _, _, iteration = state
            return (iteration < max_iter) & (jnp.max(jnp.abs(grad)) > tol)

        def step(state):
            w, value, grad, S, Y, rho, count, newest, iteration = state
            d = direction(grad, S, Y, rho, count, newest)
            slope = jnp.vdot(grad, d)
            d, slope = jnp.where(slope < 0, d, -grad), jnp.where(slope < 0, slope, -jnp.vdot(grad, grad))
            first = jnp.where(count > 0, 1.0, jnp.minimum(1.0, 1.0 / jnp.maximum(jnp.max(jnp.abs(grad)), 1e-12)))

            def shrink(search):  # backtracking until the Armijo condition holds
                t, *_ = search
                t = t * 0.5
                return (t, *f_and_g(w + t * d))

            def too_high(search):
                t, new_value, _ = search
                return (new_value > value + 1e-4 * t * slope) & (t > 1e-10)

            t, new_value, new_grad = jax.lax.while_loop(too_high, shrink, (first, *f_and_g(w + first * d)))
            s, yk = t * d, new_grad - grad
            curvature = jnp.vdot(s, yk)
            keep = curvature > 1e-10
            slot = (newest + 1) % _HISTORY
            S = jnp.where(keep, S.at[slot].set(s), S)
            Y = jnp.where(keep, Y.at[slot].set(yk), Y)
            rho = jnp.where(keep, rho.at[slot].set(1.0 / jnp.where(keep, curvature, 1.0)), rho)
            newest = jnp.where(keep, slot, newest).astype(jnp.int32)
            count = jnp.where(keep, jnp.minimum(count + 1, _HISTORY), count).astype(jnp.int32)
            return w + s, new_value, new_grad, S, Y, rho, count, newest, iteration + 1

        w, _, _, _, _, _, _, _, iterations = jax.lax.while_loop(running, step, state)
        return w.reshape(shape), iterations

    return fit
