"""Intervals and standard errors on known examples."""

import math

import numpy as np
import pytest

from layerprobe.pipeline.uncertainty import binomial_se, fold_se, ties_with_best, within_noise, wilson_interval


def test_wilson_interval_matches_the_published_example():
    # Newcombe (1998), Table I: 81/263 -> Wilson 95 % interval 0.2553 to 0.3662.
    low, high = wilson_interval(81 / 263, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)


def test_wilson_interval_stays_inside_zero_one():
    assert wilson_interval(1.0, 10)[1] == 1.0 and wilson_interval(1.0, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0.0, 10)[0] == 0.0
    assert all(math.isnan(v) for v in wilson_interval(0.5, 0))


def test_fold_se_and_binomial_se():
    assert fold_se([0.7, 0.8, 0.9]) == pytest.approx(np.std([0.7, 0.8, 0.9], ddof=1) / math.sqrt(3))
    assert math.isnan(fold_se([0.8]))
    assert binomial_se(0.5, 100) == pytest.approx(0.05)


def test_within_noise():
    assert within_noise(0.80, 0.02, 0.77, 0.02)  # 3 points < 2 * 2.8
    assert not within_noise(0.80, 0.01, 0.70, 0.01)
    assert within_noise(0.8, math.nan, 0.8, math.nan) and not within_noise(0.8, math.nan, 0.79, math.nan)


def test_ties_with_best_uses_the_best_rows_spread_only():
    assert ties_with_best(0.80, 0.02, 0.77, n_se=2.0) and not ties_with_best(0.80, 0.02, 0.75, n_se=2.0)
    assert ties_with_best(0.90, 0.005, 0.89, n_se=2.0)  # exactly 2 SE below, despite float rounding
    assert ties_with_best(0.8, math.nan, 0.8) and not ties_with_best(0.8, math.nan, 0.79)
    assert ties_with_best(0.8, 0.01, 0.85)  # a better score always ties
