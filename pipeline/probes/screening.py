"""Screening: rank every cached layer with the closed-form probes, keep the best few per backbone.

The expensive grid-searched classifiers (logistic regression, linear SVM) then
run only on the selected layers. Wiring it into a run is a few lines::

    features = {(backbone, layer): store.load(key, split="train") for ...}  # or (X, y) pairs
    table = screen_layers(features, top_k=2)
    for backbone, layers in selected_layers(table).items():
        ...  # fit_classifier(...) on these layers only

The table has one row per layer: ``backbone, layer, n_samples, feature_dim,
cv_score`` (ridge LOO accuracy), ``cv_se`` (``sqrt(p (1 - p) / n)``), ``alpha``,
``logme``, ``fit_seconds`` (the ridge probe), ``logme_seconds``, ``rank`` (1 = best
within its backbone) and ``selected`` (``rank <= top_k``).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from .logme import logme_score
from .ridge import DEFAULT_ALPHAS, RidgeProbeCV

__all__ = ["COLUMNS", "LayerProbe", "fit_layer_probes", "screen_layers", "selected_layers"]

COLUMNS = (
    "backbone", "layer", "n_samples", "feature_dim", "cv_score", "cv_se", "alpha",
    "logme", "fit_seconds", "logme_seconds", "rank", "selected",
)
"""Columns of the table :func:`screen_layers` returns, in order."""


@dataclass(frozen=True)
class LayerProbe:
    """The fast probes of one layer.

    Attributes:
        backbone: Backbone name (``""`` when the features were keyed by layer only).
        layer: Layer name.
        n_samples: Training rows the probes saw.
        probe: The fitted :class:`RidgeProbeCV`.
        logme: LogME of the layer (NaN when not computed).
        fit_seconds: Wall-clock time of the ridge probe's fit.
        logme_seconds: Wall-clock time of LogME (0 when not computed).
    """

    backbone: str
    layer: str
    n_samples: int
    probe: RidgeProbeCV
    logme: float
    fit_seconds: float
    logme_seconds: float


def _split_key(key: Hashable) -> tuple[str, str]:
    if isinstance(key, tuple) and len(key) == 2:
        return str(key[0]), str(key[1])
    if isinstance(key, str):
        return "", key
    raise ValueError(
        "Features must be keyed by (backbone, layer) tuples or by layer names. "
        f"Received: key {key!r}"
    )


def _arrays(key: Hashable, value: Any) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) from an (X, y) pair or from anything with ``.X`` and ``.y`` (a store ``FeatureSet``)."""
    if hasattr(value, "X") and hasattr(value, "y"):
        X, y = value.X, value.y
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        X, y = value
    else:
        raise ValueError(
            f"The features of {key!r} must be an (X_train, y_train) pair or a FeatureSet with .X and .y. "
            f"Received: {type(value).__name__}"
        )
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(
            f"The features of {key!r} must be 2-D (n_samples, n_features); pool or flatten them first. "
            f"Received: X with shape {X.shape}"
        )
    return X, np.asarray(y)


def _fit_one(key, value, alphas, dtype, with_logme) -> tuple[Hashable, LayerProbe]:
    backbone, layer = _split_key(key)
    X, y = _arrays(key, value)
    started = time.perf_counter()
    probe = RidgeProbeCV(alphas=alphas, dtype=dtype).fit(X, y)
    fit_seconds = time.perf_counter() - started
    score, logme_seconds = float("nan"), 0.0
    if with_logme:
        started = time.perf_counter()
        score = logme_score(X, y, dtype=dtype)
        logme_seconds = time.perf_counter() - started
    return key, LayerProbe(backbone, layer, int(X.shape[0]), probe, score, fit_seconds, logme_seconds)


def fit_layer_probes(
    features: Mapping[Hashable, Any],
    *,
    alphas: Any = DEFAULT_ALPHAS,
    dtype: str = "float32",
    logme: bool = True,
    n_jobs: int | None = None,
) -> dict[Hashable, LayerProbe]:
    """Fits :class:`RidgeProbeCV` (and LogME) on every layer, in joblib threads.

    Args:
        features: ``{(backbone, layer): (X_train, y_train)}`` (or keyed by layer
            name; values may be store ``FeatureSet`` objects).
        alphas: Relative penalties of the ridge probes.
        dtype: ``"float32"`` or ``"float64"``.
        logme: Also compute LogME per layer.
        n_jobs: Layers fitted at once, in threads (BLAS releases the GIL). ``None``
            or 1: one at a time, each product using all BLAS threads, which is
            usually as fast on few cores; more helps with many small layers.

    Returns:
        ``{key: LayerProbe}`` in the order of ``features``.

    Raises:
        ValueError: For malformed keys or features (see ``RidgeProbeCV.fit``).
    """
    if not isinstance(features, Mapping) or not features:
        raise ValueError(
            "features must be a non-empty dict of (backbone, layer) -> (X_train, y_train). "
            f"Received: {type(features).__name__}"
        )
    if not isinstance(logme, bool):
        raise ValueError(f"logme must be a bool. Received: logme={logme!r}")
    jobs = (delayed(_fit_one)(key, value, alphas, dtype, logme) for key, value in features.items())
    results = Parallel(n_jobs=n_jobs, prefer="threads")(jobs)
    return dict(results)


def screen_layers(
    features: Mapping[Hashable, Any],
    *,
    top_k: int = 2,
    alphas: Any = DEFAULT_ALPHAS,
    dtype: str = "float32",
    logme: bool = True,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """Ranks layers by ridge LOO accuracy and marks the ``top_k`` best of each backbone.

    Args:
        features: ``{(backbone, layer): (X_train, y_train)}``; layer-name keys put
            every layer under backbone ``""``.
        top_k: Layers selected per backbone.
        alphas, dtype, logme, n_jobs: See :func:`fit_layer_probes`.

    Returns:
        A DataFrame with the :data:`COLUMNS`, one row per layer, in input order.
        Ties in ``cv_score`` are ranked by ``logme``, then input order.

    Raises:
        ValueError: If ``top_k`` is not a positive integer, or for malformed features.

    Example:
        >>> table = screen_layers({("VGG16", "block3_pool"): (X3, y), ("VGG16", "block4_pool"): (X4, y)}, top_k=1)
        >>> table.loc[table.selected, "layer"].tolist()
        ['block4_pool']
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer. Received: top_k={top_k!r}")
    probes = fit_layer_probes(features, alphas=alphas, dtype=dtype, logme=logme, n_jobs=n_jobs)
    rows = []
    for position, result in enumerate(probes.values()):
        probe = result.probe
        rows.append({
            "backbone": result.backbone,
            "layer": result.layer,
            "n_samples": result.n_samples,
            "feature_dim": int(probe.n_features_in_),
            "cv_score": float(probe.best_score_),
            "cv_se": float(probe.cv_se_),
            "alpha": float(probe.alpha_),
            "logme": result.logme,
            "fit_seconds": result.fit_seconds,
            "logme_seconds": result.logme_seconds,
            "_position": position,
        })
    table = pd.DataFrame(rows)
    order = table.assign(_logme=table["logme"].fillna(-np.inf)).sort_values(
        ["backbone", "cv_score", "_logme", "_position"], ascending=[True, False, False, True]
    )
    table.loc[order.index, "rank"] = order.groupby("backbone", sort=False).cumcount().to_numpy() + 1
    table["rank"] = table["rank"].astype(int)
    table["selected"] = table["rank"] <= int(top_k)
    return table.drop(columns="_position")[list(COLUMNS)]


def selected_layers(table: pd.DataFrame) -> dict[str, list[str]]:
    """Backbone -> its selected layers, best first, from a :func:`screen_layers` table."""
    chosen = table[table["selected"]].sort_values(["backbone", "rank"])
    return {backbone: group["layer"].tolist() for backbone, group in chosen.groupby("backbone", sort=False)}
