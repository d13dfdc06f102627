"""Pre-flight diagnostics of a trait's data at a layer, on constructed activations with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from traitlab.core.diagnostics import (
    confound_warnings,
    length_direction,
    length_stats,
    pair_agreement,
    preflight,
    separation,
)

D = 16


def _e(i: int) -> torch.Tensor:
    v = torch.zeros(D, dtype=torch.float64)
    v[i] = 1.0
    return v


def test_agreement_of_identical_differences_is_one():
    g = torch.Generator().manual_seed(0)
    neg = torch.randn(10, D, generator=g, dtype=torch.float64)
    assert pair_agreement(neg + 2.0 * _e(0), neg) == pytest.approx(1.0)


def test_agreement_of_half_disagreeing_differences():
    # d_i = e1 ± e0, half each: mean difference e1, each difference at 45 degrees to it -> cos = 1/sqrt(2).
    neg = torch.zeros(8, D, dtype=torch.float64)
    signs = torch.tensor([1.0, -1.0] * 4, dtype=torch.float64)[:, None]
    pos = neg + _e(1) + signs * _e(0)
    assert pair_agreement(pos, neg) == pytest.approx(1 / math.sqrt(2))


def test_agreement_needs_pairs():
    assert math.isnan(pair_agreement(torch.ones(3, D), torch.zeros(4, D)))


def test_separation_is_d_prime_of_projections():
    # projections on e0: pos 1, 2, 3 (mean 2, var 1), neg -1, 0, 1 (mean 0, var 1) -> d' = 2 / sqrt(1) = 2
    pos = torch.stack([k * _e(0) + 5.0 * _e(3) for k in (1.0, 2.0, 3.0)])
    neg = torch.stack([k * _e(0) - 7.0 * _e(4) for k in (-1.0, 0.0, 1.0)])
    assert separation(pos, neg, 3.0 * _e(0)) == pytest.approx(2.0)
    assert math.isnan(separation(pos[:1], neg[:1], _e(0)))  # no spread to measure against


def test_length_stats_known_values():
    s = length_stats(torch.tensor([10.0, 12.0]), torch.tensor([20.0, 24.0]))
    assert s["length_pos"] == 11.0 and s["length_neg"] == 22.0
    assert s["length_diff"] == -11.0 and s["length_ratio"] == pytest.approx(0.5)
    assert s["length_d"] < -2.0


def _confounded(n: int = 200, trait_dir: torch.Tensor | None = None):
    """h = ±u (trait) + 0.1·(length - mean) along w + noise; positives are half as long as negatives."""
    g = torch.Generator().manual_seed(1)
    u, w = _e(0), _e(1)
    pos_len = torch.randint(20, 40, (n,), generator=g).double()
    neg_len = torch.randint(40, 80, (n,), generator=g).double()
    mean_len = torch.cat([pos_len, neg_len]).mean()
    noise = 0.3
    pos = u + 0.1 * (pos_len - mean_len)[:, None] * w + noise * torch.randn(n, D, generator=g, dtype=torch.float64)
    neg = -u + 0.1 * (neg_len - mean_len)[:, None] * w + noise * torch.randn(n, D, generator=g, dtype=torch.float64)
    return pos, neg, pos_len, neg_len, u, w


def test_length_direction_recovers_the_planted_length_axis():
    pos, neg, pos_len, neg_len, u, w = _confounded()
    ld = length_direction(pos, neg, pos_len, neg_len)
    assert float(ld @ w) / float(ld.norm()) > 0.95
    assert abs(float(ld @ u)) / float(ld.norm()) < 0.1  # the trait itself is not mistaken for length


def test_preflight_separates_a_clean_vector_from_a_length_vector():
    pos, neg, pos_len, neg_len, u, w = _confounded()
    clean = preflight(pos, neg, u, pos_len, neg_len)
    assert abs(clean["length_cos"]) < 0.1
    assert abs(clean["length_corr_within"]) < 0.15  # within a class the trait projection ignores length
    assert clean["length_corr"] < -0.7  # ...but pooled, short positives project high: the data is confounded
    assert clean["separation"] > 3.0
    leaky = preflight(pos, neg, (u + w) / math.sqrt(2), pos_len, neg_len)
    assert leaky["length_cos"] == pytest.approx(1 / math.sqrt(2), abs=0.05)
    assert leaky["length_corr_within"] > 0.8
    no_lengths = preflight(pos, neg, u)
    assert set(no_lengths) == {"agreement", "separation"}


def test_confound_warnings_flag_a_strong_length_difference_only():
    assert confound_warnings({"length_ratio": 0.5, "length_pos": 30.0, "length_neg": 60.0, "length_cos": 0.05})
    assert confound_warnings({"length_ratio": 1.0, "length_pos": 30.0, "length_neg": 30.0, "length_cos": 0.6})
    assert confound_warnings({"length_ratio": 0.95, "length_pos": 30.0, "length_neg": 31.5, "length_cos": 0.1,
                              "length_corr_within": 0.1}) == []
    assert confound_warnings({}) == []
