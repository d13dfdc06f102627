"""Paired bootstrap intervals and propensity slopes against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from traitlab.core.stats import bootstrap_mean, ols_slope, paired_bootstrap, steerability


def test_bootstrap_interval_of_two_items_spans_their_values():
    # Resampling two items {0, 2}: means 0 (p=1/4), 1 (1/2), 2 (1/4); both tails hold more than 2.5%.
    iv = bootstrap_mean([0.0, 2.0], n_boot=20000, seed=1)
    assert (iv.mean, iv.low, iv.high, iv.n) == (1.0, 0.0, 2.0, 2)
    assert not iv.excludes_zero


def test_bootstrap_interval_upper_tail_by_hand():
    # {0, 0, 0, 10}: P(mean = 10) = 1/256 < 2.5% but P(mean >= 7.5) = 13/256 = 5.1%, so the 97.5th
    # percentile is 7.5; P(mean = 0) = (3/4)^4 = 32% puts the 2.5th at 0.
    iv = bootstrap_mean([0.0, 0.0, 0.0, 10.0], n_boot=20000, seed=3)
    assert iv.mean == 2.5 and iv.low == 0.0 and iv.high == 7.5


def test_paired_bootstrap_uses_differences_and_drops_missing_items():
    treated = [5.0, 7.0, float("nan"), 9.0]
    baseline = [4.0, 6.0, 1.0, 8.0]   # every available difference is exactly +1
    iv = paired_bootstrap(treated, baseline, seed=0)
    assert (iv.mean, iv.low, iv.high, iv.n) == (1.0, 1.0, 1.0, 3)
    assert iv.excludes_zero
    # unpaired, the same numbers would have a wide interval: the baseline's own spread is not noise here
    with pytest.raises(ValueError, match="3 treated items but 4"):
        paired_bootstrap(treated[:3], baseline)


def test_undefined_interval_is_nan_not_zero():
    one = bootstrap_mean([3.0])
    assert one.mean == 3.0 and math.isnan(one.low) and math.isnan(one.high) and not one.excludes_zero
    none = bootstrap_mean([float("nan")])
    assert none.n == 0 and math.isnan(none.mean)


def test_ols_slope_by_hand():
    assert ols_slope([0, 1, 2], [1, 3, 5]) == pytest.approx(2.0)
    # x mean 1, y mean 2: sum (x-1)(y-2) = 2 + 0 + 3 = 5, sum (x-1)^2 = 2
    assert ols_slope([0, 1, 2], [0, 1, 5]) == pytest.approx(2.5)
    assert math.isnan(ols_slope([3, 3], [1, 2]))            # one distinct coefficient: no slope
    assert ols_slope([0, 1, float("nan")], [0, 2, 100]) == pytest.approx(2.0)


def test_steerability_per_pair_slopes_and_anti_steerable_fraction():
    coefs = [0.0, 1.0, 2.0]
    # pair 0 rises by 1 per unit, pair 1 by 3, pair 2 falls by 1 (anti-steerable), pair 3 flat
    prop = np.array([[0.0, 1.0, 2.0, 0.5],
                     [1.0, 4.0, 1.0, 0.5],
                     [2.0, 7.0, 0.0, 0.5]])
    s = steerability(coefs, prop, seed=0)
    assert s.per_pair == pytest.approx((1.0, 3.0, -1.0, 0.0))
    assert s.steerability == pytest.approx(0.75)            # slope of the mean curve = mean of slopes
    assert s.anti_steerable == pytest.approx(0.25)          # one of four pairs
    assert s.spread == pytest.approx(np.std([1, 3, -1, 0], ddof=1))
    assert (s.n_pairs, s.n_points) == (4, 3)
    assert s.interval.mean == pytest.approx(0.75) and s.interval.low < 0.75 < s.interval.high


def test_steerability_of_a_single_coefficient_is_undefined():
    s = steerability([0.0], np.array([[0.1, 0.2]]))
    assert math.isnan(s.steerability) and math.isnan(s.anti_steerable) and s.n_pairs == 0
