"""The rank correlation the steerability report uses to say whether diagnostics predicted steerability."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from steerability_report import spearman_exact  # noqa: E402


def test_perfect_order_has_rho_one_and_the_exact_p_of_two_orderings():
    rho, p = spearman_exact([1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 60])
    assert rho == pytest.approx(1.0)
    assert p == pytest.approx(2 / 720)   # only the same order and its reverse reach |rho| = 1


def test_rho_matches_the_textbook_formula_and_is_not_significant_at_n6():
    # adjacent swaps: d = 1 for every item, rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 36/210
    rho, p = spearman_exact([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])
    assert rho == pytest.approx(1 - 36 / 210)
    # |rho| >= 0.829 <=> sum(d^2) <= 6 (or >= 64 by reversal): identity 1, one adjacent swap 5, two disjoint
    # ones 6, three 1, a rotation of three neighbours 8 -> 21 orderings, twice: 42 of 720, not significant at 5%
    assert p == pytest.approx(42 / 720)


def test_undefined_is_nan():
    assert all(math.isnan(v) for v in spearman_exact([1, 2, 3], [1, 1, 1]))
    assert all(math.isnan(v) for v in spearman_exact([1, 2, float("nan")], [1, 2, 3]))
