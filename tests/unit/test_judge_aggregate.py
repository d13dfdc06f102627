"""logprob_score: the probability-weighted integer mean every judge backend relies on."""

from __future__ import annotations

import math

import pytest

from traitlab.judge.aggregate import integer_weights, logprob_score, parse_integer_token


def lp(p: float) -> float:
    return math.log(p)


def test_weighted_mean_exact():
    # 0.5*80 + 0.3*90 + 0.2*70 = 81, all mass on valid integers
    assert logprob_score({"80": lp(0.5), "90": lp(0.3), "70": lp(0.2)}) == pytest.approx(81.0)


def test_mean_is_renormalised_over_integer_mass():
    # Integers hold 0.6 of the mass; the mean is over them only: (0.4*10 + 0.2*40) / 0.6 = 20
    top = {"10": lp(0.4), "40": lp(0.2), "The": lp(0.3), "I": lp(0.1)}
    assert logprob_score(top) == pytest.approx(20.0)


def test_gate_returns_none_below_min_weight():
    top = {"50": lp(0.2), "Sorry": lp(0.7)}
    assert logprob_score(top, min_weight=0.25) is None
    assert logprob_score(top, min_weight=0.2) == pytest.approx(50.0)  # exactly at the gate is enough
    assert logprob_score(top, min_weight=0.0) == pytest.approx(50.0)


def test_no_integers_is_none_even_with_zero_gate():
    assert logprob_score({"The": lp(0.9)}, min_weight=0.0) is None
    assert logprob_score({}, min_weight=0.0) is None


def test_non_integer_tokens_ignored():
    top = {"60": lp(0.5), "6.5": lp(0.1), "60%": lp(0.1), "sixty": lp(0.1), "+60": lp(0.05),
           "1_0": lp(0.05), "٣": lp(0.05), "": lp(0.05)}
    assert logprob_score(top, min_weight=0.0) == pytest.approx(60.0)
    assert integer_weights(top) == {60: pytest.approx(0.5)}


def test_out_of_range_ignored_and_do_not_count_for_the_gate():
    top = {"101": lp(0.5), "-1": lp(0.2), "30": lp(0.3)}
    assert logprob_score(top, min_weight=0.0) == pytest.approx(30.0)
    assert logprob_score(top, min_weight=0.35) is None  # only 0.3 is valid
    assert logprob_score({"5": lp(0.5), "20": lp(0.5)}, lo=0, hi=9) == pytest.approx(5.0)


def test_whitespace_is_stripped_and_same_integer_tokens_add_up():
    # " 7" and "7" are different tokens meaning the same answer: 0.3+0.3 on 7, 0.4 on 3 -> 5.4
    top = {" 7": lp(0.3), "7": lp(0.3), "3\n": lp(0.4)}
    assert integer_weights(top) == {7: pytest.approx(0.6), 3: pytest.approx(0.4)}
    assert logprob_score(top) == pytest.approx(0.6 * 7 + 0.4 * 3)


def test_negative_range_and_leading_zeros():
    assert parse_integer_token(" -3 ") == -3
    assert parse_integer_token("007") == 7
    assert parse_integer_token("8.") is None
    assert logprob_score({"-2": lp(0.5), "2": lp(0.5)}, lo=-5, hi=5) == pytest.approx(0.0)


def test_bad_logprobs_are_safe():
    # -inf carries zero probability; NaN is dropped; a slightly positive rounding error is clamped to p=1
    top = {"10": -math.inf, "20": float("nan"), "30": 1e-7}
    assert logprob_score(top, min_weight=0.0) == pytest.approx(30.0)
    assert integer_weights(top)[30] == pytest.approx(1.0)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="lo=5"):
        logprob_score({"1": 0.0}, lo=5, hi=1)
    with pytest.raises(ValueError, match="min_weight"):
        logprob_score({"1": 0.0}, min_weight=1.5)
