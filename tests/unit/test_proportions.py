"""Accuracy intervals: Wilson against published values, Newcombe's paired interval by its coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from traitlab.core.metrics import wilson_interval
from traitlab.core.proportions import (
    accuracy_estimate,
    paired_accuracy_difference,
    paired_difference_interval,
    paired_table,
)


@pytest.mark.parametrize("k, n, low, high", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, Wilson score.
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_published_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_accuracy_estimate_edges_and_undefined():
    est = accuracy_estimate([True] * 10)
    assert (est.mean, est.high, est.n) == (1.0, pytest.approx(1.0), 10) and est.low < 1.0
    est = accuracy_estimate([])
    assert math.isnan(est.mean) and math.isnan(est.low) and est.n == 0 and not est.excludes_zero


def test_paired_table_counts():
    treated = [True, True, False, False, True]
    reference = [True, False, True, False, False]
    assert paired_table(treated, reference) == (1, 2, 1, 1)
    with pytest.raises(ValueError, match="differ in length"):
        paired_table([True], [True, False])


def test_paired_difference_is_antisymmetric_and_uses_only_discordant_pairs_for_the_estimate():
    d, lo, hi = paired_difference_interval(30, 9, 3, 8)
    assert d == pytest.approx(6 / 50)
    d2, lo2, hi2 = paired_difference_interval(30, 3, 9, 8)
    assert (d2, lo2, hi2) == pytest.approx((-d, -hi, -lo))
    assert lo < d < hi


def test_paired_interval_is_narrower_than_ignoring_the_pairing():
    # 40 items both settings get right, 40 both get wrong, 12 only steered, 8 only unsteered: the
    # concordant items say nothing about the change, so the paired interval must be much tighter than
    # the interval for two independent samples (Newcombe's unpaired square-and-add, phi = 0).
    e, f, g, h = 40, 12, 8, 40
    n = e + f + g + h
    _, lo, hi = paired_difference_interval(e, f, g, h)
    l1, u1 = wilson_interval(e + f, n)
    l2, u2 = wilson_interval(e + g, n)
    p1, p2 = (e + f) / n, (e + g) / n
    unpaired = math.hypot(p1 - l1, u2 - p2) + math.hypot(u1 - p1, p2 - l2)
    assert hi - lo < 0.75 * unpaired


def test_no_change_gives_a_zero_centred_interval_not_a_point():
    est = paired_accuracy_difference([True] * 30 + [False] * 20, [True] * 30 + [False] * 20)
    assert est.mean == 0.0 and est.low < 0.0 < est.high and est.n == 50
    assert not est.excludes_zero


def test_empty_pairs_are_nan():
    d, lo, hi = paired_difference_interval(0, 0, 0, 0)
    assert math.isnan(d) and math.isnan(lo) and math.isnan(hi)


# At rho = 0.9 an interval that ignores the pairing covers 100% of the time (measured), at rho = 0.5 97.7%.
@pytest.mark.parametrize("p_ref, p_treated, rho", [(0.6, 0.45, 0.5), (0.5, 0.4, 0.9), (0.85, 0.7, 0.0)])
def test_paired_interval_covers_the_true_difference_95_percent_of_the_time(p_ref, p_treated, rho):
    """Simulated paired outcomes (correlated Bernoullis from a Gaussian copula), 100 items, 1500 draws:
    a 95% interval must cover the true difference close to 95% of the time, neither much less (too narrow,
    e.g. a wrong sign on the correlation term) nor much more (too wide, e.g. pairing ignored)."""
    rng = np.random.default_rng(7)
    from statistics import NormalDist

    t_ref, t_treated = NormalDist().inv_cdf(p_ref), NormalDist().inv_cdf(p_treated)
    cov = [[1.0, rho], [rho, 1.0]]
    hits, draws, n = 0, 1500, 100
    for _ in range(draws):
        z = rng.multivariate_normal([0.0, 0.0], cov, size=n)
        reference = (z[:, 0] < t_ref).tolist()
        treated = (z[:, 1] < t_treated).tolist()
        est = paired_accuracy_difference(treated, reference)
        hits += est.low <= p_treated - p_ref <= est.high
    coverage = hits / draws
    assert 0.925 <= coverage <= 0.975, coverage


def test_paired_bootstrap_interval_matches_the_normal_theory_one():
    import torch

    from traitlab.core.proportions import paired_bootstrap

    g = torch.Generator().manual_seed(0)
    before = torch.randn(400, generator=g, dtype=torch.float64)
    diff = 0.3 + 0.5 * torch.randn(400, generator=g, dtype=torch.float64)
    s = paired_bootstrap(before.tolist(), (before + diff).tolist(), n_boot=4000)
    half = 1.96 * float(diff.std()) / math.sqrt(400)  # normal interval of a mean, computed by hand
    assert s.n == 400 and s.mean == pytest.approx(float(diff.mean()), abs=1e-12)
    assert s.low == pytest.approx(float(diff.mean()) - half, abs=0.01)
    assert s.high == pytest.approx(float(diff.mean()) + half, abs=0.01)
    assert s.excludes_zero


def test_paired_bootstrap_drops_undefined_pairs_and_says_nan():
    from traitlab.core.proportions import paired_bootstrap

    s = paired_bootstrap([1.0, float("nan"), 2.0, 4.0], [2.0, 5.0, float("nan"), 4.5])
    assert s.n == 2 and s.mean == pytest.approx(0.75)
    assert 0.5 <= s.low <= s.high <= 1.0  # resamples of the differences {1.0, 0.5}
    one = paired_bootstrap([1.0], [3.0])
    assert one.n == 1 and one.mean == 2.0 and math.isnan(one.low) and math.isnan(one.high)
    assert not one.excludes_zero
    none = paired_bootstrap([float("nan")], [1.0])
    assert none.n == 0 and math.isnan(none.mean)
