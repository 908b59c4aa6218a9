"""LogME: the log marginal evidence of a Bayesian linear model, a label-aware transferability score.

You, Liu, Wang and Long, "LogME: Practical Assessment of Pre-trained Models for
Transfer Learning", ICML 2021, Algorithm 1. For each class ``k``, the one-hot
column ``y_k`` is modelled as ``y_k = F w + ε`` with prior ``w ~ N(0, α⁻¹ I)`` and
noise ``ε ~ N(0, β⁻¹ I)``. The evidence

    log p(y | F, α, β) = n/2 log β + D/2 log α − n/2 log 2π
                         − β/2 ‖F m − y‖² − α/2 ‖m‖² − 1/2 log det A,
    A = α I + β FᵀF,  m = β A⁻¹ Fᵀ y,

is maximised over ``α, β`` by the MacKay fixed-point updates
``γ = Σ βσⱼ / (α + βσⱼ)``, ``α ← γ / ‖m‖²``, ``β ← (n − γ) / ‖F m − y‖²``, where
``σⱼ`` are the eigenvalues of ``FᵀF``. LogME is the mean over classes of the
maximised evidence divided by ``n``: higher means the features explain the labels
better with a simpler model.

Cost: one Gram matrix ``FᵀF`` (float32 BLAS) and one eigendecomposition (float64)
for all classes; in its eigenbasis every quantity above is a sum over the ``D``
eigenvalues (with ``x = Uᵀy`` the labels in the basis of F's column space and
``λ = α/β``: ``‖F m − y‖² = Σ xⱼ² λ²/(σⱼ+λ)² + (‖y‖² − ‖x‖²)``), so each fixed-point
step costs O(D), not O(n D) as in the ICML reference code. Features are used as given (no centring), as in the paper. Unlike the
reference implementation, which stops when ``α/β`` moves by less than 1 %, the
iterations run to a relative change of ``tol`` (1e-7), so the score is the
maximised evidence, not an approximation of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from ..threads import with_native_threads
from .blocks import row_blocks

__all__ = ["LogMEResult", "fit_logme", "logme_score"]

_DTYPES = ("float32", "float64")


class LogMEResult:
    """The per-class outcome of :func:`fit_logme`.

    Attributes:
        score: LogME, the mean of ``evidence`` (higher = more transferable).
        classes: Class labels, shape (n_classes,).
        evidence: Maximised log evidence / n per class, shape (n_classes,).
        alpha: Prior precision at the maximum, per class.
        beta: Noise precision at the maximum, per class.
        n_iter: Fixed-point iterations used, per class.
    """

    def __init__(self, score, classes, evidence, alpha, beta, n_iter):
        self.score = float(score)
        self.classes = classes
        self.evidence = evidence
        self.alpha = alpha
        self.beta = beta
        self.n_iter = n_iter

    def __repr__(self) -> str:
        return f"LogMEResult(score={self.score:.6g}, n_classes={len(self.classes)})"


def _check_inputs(X: Any, y: Any, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}. Received: dtype={dtype!r}")
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] == 0 or not np.issubdtype(X.dtype, np.number):
        raise ValueError(
            "X must be a numeric 2-D array of shape (n_samples, n_features) with at least 2 samples; "
            f"flatten pooled features to one row per sample. Received: X with shape {X.shape} and dtype {X.dtype}"
        )
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"y must be 1-D with one label per row of X. Received: X with shape {X.shape}, y with shape {y.shape}"
        )
    if not np.all(np.isfinite(X)):
        raise ValueError(
            "X holds NaN or inf values; LogME needs finite features. Drop those samples or re-extract "
            f"with float32 storage. Received: X with {int((~np.isfinite(X)).sum())} non-finite values"
        )
    return X, y


@with_native_threads("X")
def fit_logme(X: Any, y: Any, *, dtype: str = "float32", tol: float = 1e-7, max_iter: int = 100) -> LogMEResult:
    """LogME of features ``X`` for labels ``y``, with the per-class evidences and precisions.

    Args:
        X: Features, shape (n_samples, n_features), used as given (no centring); or a stream of
            them in row blocks (`FeatureStore.stream`), read once when ``n_samples >= n_features``.
        y: Class labels, shape (n_samples,), at least 2 classes.
        dtype: ``"float32"`` (the Gram matrix is a float32 product) or ``"float64"``.
            The eigendecomposition and the iterations are always float64.
        tol: Stop when ``α/β`` changes by less than this fraction.
        max_iter: At most this many fixed-point updates per class.

    Returns:
        A :class:`LogMEResult`.

    Raises:
        ValueError: If the shapes or the dtype are invalid, ``X`` is not finite or
            ``y`` holds fewer than 2 classes.
    """
    if hasattr(X, "blocks"):
        y = np.asarray(y)
        if dtype not in _DTYPES or y.ndim != 1 or len(y) != len(X) or len(y) < 2:
            raise ValueError(
                f"fit_logme needs dtype in {_DTYPES} and one label per row of the feature stream (at least 2). "
                f"Received: dtype={dtype!r}, {len(X)} rows, y with shape {y.shape}"
            )
        n_samples, n_features = len(X), X.n_features
    else:
        X, y = _check_inputs(X, y, dtype)
        n_samples, n_features = X.shape
    classes, y_index = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"y must hold at least 2 classes. Received: y with classes {classes.tolist()}")
    if n_samples >= n_features:
        # FᵀF and FᵀY accumulated block by block: memory O(D²) whatever n (X may be a stream).
        gram, FtY, start = np.zeros((n_features, n_features)), np.zeros((n_features, classes.size)), 0
        for block in row_blocks(X)():
            F = np.asarray(block, dtype=dtype)
            Y = np.zeros((len(F), classes.size), dtype=dtype)
            Y[np.arange(len(F)), y_index[start : start + len(F)]] = 1
            gram += F.T @ F
            FtY += F.T @ Y
            start += len(F)
        if not np.isfinite(gram).all():
            raise ValueError("X holds NaN or inf values; LogME needs finite features.")
        sigma, V = scipy.linalg.eigh((gram + gram.T) / 2.0, driver="evd", check_finite=False)
        Z = V.T @ FtY  # z = Vᵀ Fᵀ y = sqrt(σ) Uᵀ y, shape (D, K)
    else:
        # n < D: the non-zero eigenvalues of FᵀF are those of F Fᵀ = U diag(σ) Uᵀ, and on them
        # Vᵀ Fᵀ y = sqrt(σ) Uᵀ y; the D − n other eigenvalues are 0. (n × D < D²: in memory.)
        F = np.concatenate([np.asarray(block, dtype=dtype) for block in row_blocks(X)()])
        Y = np.zeros((n_samples, classes.size), dtype=dtype)
        Y[np.arange(n_samples), y_index] = 1
        kernel = (F @ F.T).astype(np.float64)
        sigma, U = scipy.linalg.eigh((kernel + kernel.T) / 2.0, driver="evd", check_finite=False)
        Z = np.sqrt(np.clip(sigma, 0.0, None))[:, None] * (U.T @ Y.astype(np.float64))
    # Eigenvalues at the Gram's rounding level are zero for the model (their directions carry noise).
    floor = (1e-6 if np.dtype(dtype) == np.float32 else 1e-12) * max(sigma.max(), 0.0)
    signal = sigma > max(floor, np.finfo(np.float64).tiny)
    sigma, Z = sigma[signal], Z[signal]
    # x = Uᵀ y, the labels in the orthonormal basis of F's column space; what is left of ‖y‖²
    # lies outside it and no weight can fit it.
    X2 = Z**2 / sigma[:, None]
    y_sq = np.bincount(y_index, minlength=classes.size).astype(np.float64)  # ‖y_k‖² of one-hot columns
    outside = np.clip(y_sq - X2.sum(axis=0), 0.0, None)

    evidence = np.empty(classes.size)
    alphas, betas, n_iters = np.empty(classes.size), np.empty(classes.size), np.zeros(classes.size, dtype=int)
    for k in range(classes.size):
        evidence[k], alphas[k], betas[k], n_iters[k] = _max_evidence(
            sigma, X2[:, k], outside[k], y_sq[k], n_samples, n_features, tol, max_iter
        )
    return LogMEResult(evidence.mean(), classes, evidence, alphas, betas, n_iters)


def _max_evidence(
    sigma: np.ndarray, x2: np.ndarray, outside: float, y_sq: float, n: int, D: int, tol: float, max_iter: int
) -> tuple[float, float, float, int]:
    """Fixed-point maximisation of one class's evidence in the eigenbasis of FᵀF.

    With ``λ = α/β``, ``x = Uᵀy`` and the eigenvalues ``σ`` (``r`` of them non-zero):
    ``γ = Σ σ/(σ+λ)``, ``‖m‖² = Σ σ x²/(σ+λ)²``, ``‖Fm − y‖² = Σ x² λ²/(σ+λ)² + outside``,
    and ``n − γ = Σ λ/(σ+λ) + (n − r)``, each without cancellation.
    """
    r = sigma.size
    if r == 0:
        # All-zero features: only the noise model is left (w = 0, α = ∞), β = n / ‖y‖².
        beta = n / y_sq
        value = n / 2.0 * np.log(beta) - n / 2.0 * np.log(2 * np.pi) - n / 2.0
        return value / n, np.inf, beta, 0

    def moments(lam):
        ratio = lam / (sigma + lam)
        gamma = float(np.sum(sigma / (sigma + lam)))
        n_minus_gamma = float(np.sum(ratio)) + (n - r)
        m_sq = float(np.sum(sigma * x2 / (sigma + lam) ** 2))
        residual = float(np.sum(x2 * ratio**2)) + outside
        return gamma, n_minus_gamma, m_sq, residual

    sigma_max = float(sigma.max())
    alpha, beta = 1.0, 1.0
    iteration = 0
    for iteration in range(1, max_iter + 1):
        lam = alpha / beta
        gamma, n_minus_gamma, m_sq, residual = moments(lam)
        with np.errstate(divide="ignore", over="ignore"):
            new_alpha = gamma / m_sq if m_sq > 0 else np.inf
            new_beta = n_minus_gamma / residual if residual > 0 else np.inf
        if not (0 < new_alpha < np.inf and 0 < new_beta < np.inf):
            break  # a boundary of the evidence (see below) reached within rounding: keep the last state
        alpha, beta = new_alpha, new_beta
        if abs(alpha / beta - lam) <= tol * lam:
            break
        if not 1e-12 * sigma_max < alpha / beta < 1e12 * sigma_max:
            # The maximum lies on a boundary, where the evidence has reached its limit to ~1e-12
            # and further updates only drift towards overflow: α → ∞ when the features explain
            # nothing (w = 0), β → ∞ when they interpolate the labels (possible when r = n).
            break
    # The evidence at the final (α, β), with m and the residual evaluated there.
    _, _, m_sq, residual = moments(alpha / beta)
    log_det_A = float(np.sum(np.log(alpha + beta * sigma))) + (D - r) * np.log(alpha)
    value = (
        D / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - n / 2.0 * np.log(2 * np.pi)
        - beta / 2.0 * residual
        - alpha / 2.0 * m_sq
        - 0.5 * log_det_A
    )
    return value / n, alpha, beta, iteration


def logme_score(X: Any, y: Any, *, dtype: str = "float32") -> float:
    """LogME of features ``X`` for labels ``y`` (higher = more transferable).

    See :func:`fit_logme` for the arguments; this returns only the score.

    Example:
        >>> logme_score(X_block4, y) > logme_score(X_block1, y)
    """
    return fit_logme(X, y, dtype=dtype).score
