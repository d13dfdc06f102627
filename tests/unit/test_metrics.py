"""Separation metrics against hand-computed values and sklearn's reference AUROC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from traitlab.core.metrics import accuracy, auroc, effect_size, polarity_correct
from traitlab.errors import TraitlabError


def test_effect_size_known_values():
    # Means 2 and 5, both sample variances 1 -> pooled sd 1 -> d = -3.
    assert effect_size([1, 2, 3], [4, 5, 6]) == pytest.approx(-3.0)
    assert effect_size([1, 2, 3], [4, 5, 6], signed=False) == pytest.approx(3.0)
    assert effect_size(torch.tensor([4.0, 5, 6]), np.array([1.0, 2, 3])) == pytest.approx(3.0)
    # Unequal sizes and spreads: pooled var = (2*1 + 3*(20/3)) / 5 = 4.4.
    assert effect_size([1, 2, 3], [0, 2, 4, 6]) == pytest.approx((2 - 3) / np.sqrt(4.4))


def test_effect_size_degenerate_is_zero():
    assert effect_size([1.0, 1.0], [2.0, 2.0]) == 0.0  # zero spread
    assert effect_size([1.0], [2.0]) == 0.0  # no degrees of freedom
    assert effect_size([], [1.0, 2.0]) == 0.0


def test_accuracy_midpoint_threshold():
    assert accuracy([3.0, 4.0, 5.0], [0.0, 1.0, 2.0]) == 1.0
    assert accuracy([0.0, 1.0, 2.0], [3.0, 4.0, 5.0]) == 0.0  # wrong polarity is visible
    # Midpoint of means 2.0 and 0.0 is 1.0: pos 0.5 is wrong, pos 1.0 is a tie (half).
    assert accuracy([0.5, 1.0, 4.5], [-1.0, 0.0, 1.0]) == pytest.approx((1 + 0.5 + 2 + 0.5) / 6)
    assert accuracy([0.5, 1.0, 4.5], [-1.0, 0.0, 1.0], threshold=0.25) == pytest.approx(5 / 6)


def test_accuracy_returns_plain_float():
    value = accuracy(torch.tensor([1.0]), torch.tensor([0.0]))
    assert type(value) is float and value == 1.0


def test_polarity_correct():
    assert polarity_correct([1.0, 2.0], [0.0, 0.5]) is True
    assert polarity_correct([0.0, 0.5], [1.0, 2.0]) is False
    assert polarity_correct([1.0], [1.0]) is False


def test_auroc_known_values():
    assert auroc([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(0.5)
    assert auroc([4.0, 5.0], [1.0, 2.0]) == 1.0
    assert auroc([1.0, 2.0], [4.0, 5.0]) == 0.0
    # Pairs: (2>1) (2=2 half) (3>1) (3>2) -> 3.5 / 4.
    assert auroc([2.0, 3.0], [1.0, 2.0]) == pytest.approx(0.875)


def test_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos = np.round(rng.normal(0.5, 1.0, 57), 1)  # rounding creates ties
    neg = np.round(rng.normal(0.0, 1.0, 43), 1)
    expected = roc_auc_score(np.r_[np.ones(57), np.zeros(43)], np.r_[pos, neg])
    assert auroc(pos, neg) == pytest.approx(expected, abs=1e-12)


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(TraitlabError, match="positive scores are empty"):
        accuracy([], [1.0])
    with pytest.raises(TraitlabError, match="non-finite"):
        auroc([1.0, float("nan")], [0.0])
    with pytest.raises(TraitlabError, match="must be 1-D"):
        effect_size(np.zeros((2, 2)), [1.0])


def test_paired_bootstrap_interval_matches_the_normal_theory_one():
    from traitlab.core.metrics import paired_bootstrap

    g = torch.Generator().manual_seed(0)
    before = torch.randn(400, generator=g, dtype=torch.float64)
    diff = 0.3 + 0.5 * torch.randn(400, generator=g, dtype=torch.float64)
    s = paired_bootstrap(before, before + diff, n_boot=4000)
    half = 1.96 * float(diff.std()) / math.sqrt(400)  # t/normal interval of a mean, computed by hand
    assert s.n == 400 and s.mean == pytest.approx(float(diff.mean()), abs=1e-12)
    assert s.low == pytest.approx(float(diff.mean()) - half, abs=0.01)
    assert s.high == pytest.approx(float(diff.mean()) + half, abs=0.01)
    assert s.excludes_zero


def test_paired_bootstrap_drops_undefined_pairs_and_says_nan():
    from traitlab.core.metrics import paired_bootstrap

    s = paired_bootstrap([1.0, float("nan"), 2.0, 4.0], [2.0, 5.0, float("nan"), 4.5])
    assert s.n == 2 and s.mean == pytest.approx(0.75)
    assert 0.5 <= s.low <= s.high <= 1.0  # resamples of the differences {1.0, 0.5}
    one = paired_bootstrap([1.0], [3.0])
    assert one.n == 1 and one.mean == 2.0 and math.isnan(one.low) and math.isnan(one.high)
    assert not one.excludes_zero
    none = paired_bootstrap([float("nan")], [1.0])
    assert none.n == 0 and math.isnan(none.mean)
