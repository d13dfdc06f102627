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


def test_effect_size_undefined_is_nan():
    # An undefined statistic must not look like "no effect" (0.0): a best-layer search would rank it.
    assert math.isnan(effect_size([1.0, 1.0], [2.0, 2.0]))  # zero spread
    assert math.isnan(effect_size([1.0], [2.0]))  # no degrees of freedom
    assert math.isnan(effect_size([], [1.0, 2.0]))


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


def test_midpoint_threshold_is_the_midpoint_of_class_means():
    from traitlab.core.metrics import midpoint_threshold

    assert midpoint_threshold([1.0, 3.0], [0.0, -2.0, -4.0]) == pytest.approx((2.0 + -2.0) / 2)


def test_wilson_interval_known_values():
    from traitlab.core.metrics import wilson_interval

    # Textbook values (Newcombe 1998, method 3): 8/10 -> [0.490, 0.943]; 0/10 -> [0, 0.278]; 10/10 -> [0.722, 1].
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_bootstrap_interval_width_matches_theory_and_is_reproducible():
    from traitlab.core.metrics import bootstrap_intervals

    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    ci = bootstrap_intervals(pos, neg, paired=False, seed=0)
    d = effect_size(pos, neg)
    lo, hi = ci["effect_size"]
    assert lo < d < hi
    # Large-sample SE of d: sqrt((n1+n2)/(n1 n2) + d^2 / (2 (n1+n2))) = 0.106 for d=1, n=200 each.
    se = math.sqrt(400 / 200**2 + d**2 / 800)
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.2)
    a_lo, a_hi = ci["auroc"]
    assert a_lo < auroc(pos, neg) < a_hi
    assert bootstrap_intervals(pos, neg, paired=False, seed=0) == ci


def test_paired_bootstrap_resamples_whole_pairs():
    from traitlab.core.metrics import bootstrap_intervals

    # A large per-pair offset shared by both sides: resampling pairs keeps it out of the difference of means,
    # resampling each side alone does not, so the paired interval must be much narrower.
    rng = np.random.default_rng(1)
    shared = rng.normal(0.0, 5.0, 60)
    pos, neg = shared + 1.0 + rng.normal(0, 0.3, 60), shared + rng.normal(0, 0.3, 60)
    paired = bootstrap_intervals(pos, neg, paired=True, seed=0)["effect_size"]
    unpaired = bootstrap_intervals(pos, neg, paired=False, seed=0)["effect_size"]
    assert (paired[1] - paired[0]) < 0.5 * (unpaired[1] - unpaired[0])


def test_bootstrap_of_an_undefined_statistic_is_nan():
    from traitlab.core.metrics import bootstrap_intervals

    ci = bootstrap_intervals([1.0], [0.0], paired=True, seed=0)
    assert all(math.isnan(x) for x in ci["effect_size"])


def test_heldout_metrics_use_the_given_threshold_and_report_intervals():
    from traitlab.core.metrics import heldout_metrics, wilson_interval

    m = heldout_metrics([0.6, 0.6, 0.7], [0.5, 0.5, 0.1], threshold=0.55, paired=True, seed=0)
    assert m["accuracy"] == pytest.approx(1.0)
    m = heldout_metrics([0.6, 0.6, 0.7], [0.5, 0.5, 0.1], threshold=0.4, paired=True, seed=0)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert (m["accuracy_lo"], m["accuracy_hi"]) == pytest.approx(wilson_interval(4, 6))
    assert m["polarity_correct"] == 1.0
    assert math.isnan(m["effect_size_lo"])  # 3 pairs: too many resamples without spread to trust an interval
    m = heldout_metrics([0.6, 0.65, 0.7, 0.8, 0.55, 0.9], [0.5, 0.45, 0.1, 0.3, 0.6, 0.2], threshold=0.4,
                        paired=True, seed=0)
    assert m["effect_size_lo"] < m["effect_size"] < m["effect_size_hi"]
    assert m["auroc_lo"] < m["auroc"] <= m["auroc_hi"]
    empty = heldout_metrics([], [], threshold=0.0, paired=True, seed=0)
    assert all(math.isnan(v) for v in empty.values())


def test_argmax_finite_skips_undefined_values():
    from traitlab.core.metrics import argmax_finite

    assert argmax_finite({0: float("nan"), 3: 0.2, 5: 0.9, 7: float("nan")}) == 5
    assert argmax_finite({0: float("nan"), 1: float("nan")}) is None
    assert argmax_finite({}) is None
