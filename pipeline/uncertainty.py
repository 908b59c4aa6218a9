"""How sure a score is: standard errors over folds and binomial intervals for accuracies.

Every score layerprobe reports carries its spread, so that a one-point
difference between two layers is not read as real when 150 test images give
a standard error of three points.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["Z_95", "binomial_se", "fold_se", "ties_with_best", "within_noise", "wilson_interval"]

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


def fold_se(fold_scores: Sequence[float]) -> float:
    """Standard error of the mean of cross-validation fold scores (sample std / sqrt(k)); NaN for < 2 folds."""
    scores = np.asarray(fold_scores, dtype=float)
    scores = scores[np.isfinite(scores)]
    if len(scores) < 2:
        return math.nan
    return float(scores.std(ddof=1) / math.sqrt(len(scores)))


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on `n` independent samples: sqrt(p (1 - p) / n)."""
    if n <= 0 or not math.isfinite(accuracy):
        return math.nan
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / n)


def wilson_interval(accuracy: float, n: int, *, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of an accuracy on `n` samples (95 % by default).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at
    accuracies of 0 or 1 and for small `n` (Wilson 1927; Brown, Cai & DasGupta 2001).

    Example:
        >>> [round(v, 4) for v in wilson_interval(0.8, 100)]
        [0.7112, 0.8666]
    """
    if n <= 0 or not math.isfinite(accuracy):
        return (math.nan, math.nan)
    p = min(max(float(accuracy), 0.0), 1.0)
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if p == 0.0 else low, 1.0 if p == 1.0 else high)  # exact ends, no rounding residue


def within_noise(best: float, best_se: float, other: float, other_se: float, *, n_se: float = 2.0) -> bool:
    """Whether `other` is within `n_se` combined standard errors of `best` (unknown SEs: exact ties only).

    For judging two independent measurements against each other (e.g. a benchmark's
    test accuracies). To choose among rows, use `ties_with_best`: here a noisier
    `other` is more likely to count as tied.
    """
    spread = math.sqrt(sum(se * se for se in (best_se, other_se) if math.isfinite(se)))
    return best - other <= n_se * spread


def ties_with_best(best: float, best_se: float, other: float, *, n_se: float = 1.0) -> bool:
    """Whether `other` scores at most `n_se` of the best's standard errors below `best`.

    The one-standard-error rule (Breiman et al. 1984; Hastie, Tibshirani &
    Friedman, *Elements of Statistical Learning*, 7.10): the tie's width is set
    by the best score's uncertainty alone, so a noisier row cannot enter a tie
    that a steadier row with the same mean leaves. An unknown `best_se` makes
    only exact ties (and better scores) ties.

    Example:
        >>> ties_with_best(0.80, 0.02, 0.79), ties_with_best(0.80, 0.02, 0.75)
        (True, False)
    """
    width = n_se * (best_se if math.isfinite(best_se) else 0.0)
    return best - other <= width + 1e-12  # float rounding: 0.90 - 0.89 is a hair above 0.01
