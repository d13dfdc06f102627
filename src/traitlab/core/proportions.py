"""95% intervals for accuracies: Wilson's score interval for one (core.metrics), Newcombe's for a paired
difference.

Why not the textbook p ± 1.96·sqrt(p(1-p)/n): at the sizes a capability check uses (~100-200 items) and
accuracies near 0 or 1 it undercovers badly and collapses to zero width at p = 0 or 1. Wilson's score
interval keeps its coverage there. Steered and unsteered accuracy are measured on the SAME items, so their
difference is paired: items both settings get right (or wrong) carry no information about the change, and
an unpaired interval would be far too wide. Newcombe's hybrid score interval for paired proportions
(Newcombe 1998, Stat Med 17:2635, method 10) combines the two Wilson intervals with the correlation of the
paired outcomes; it is analytic, so intervals along many coefficients cost nothing.

A mean shift measured twice on the same items (a trait score per prompt, unsteered then steered) gets a
percentile bootstrap over whole pairs (``paired_bootstrap``).

Undefined statistics are NaN (no items), never 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from traitlab.core.metrics import wilson_interval
from traitlab.core.stats import Interval  # one interval type for every delta and estimate

Z95 = 1.959964  # two-sided 95% normal quantile, as core.metrics uses


def accuracy_estimate(correct: Sequence[bool]) -> Interval:
    """Accuracy of a list of per-item outcomes with its Wilson interval."""
    n, k = len(correct), sum(bool(c) for c in correct)
    lo, hi = wilson_interval(k, n)
    return Interval(k / n if n else math.nan, lo, hi, n)


def paired_table(first: Sequence[bool], second: Sequence[bool]) -> tuple[int, int, int, int]:
    """(both right, only first right, only second right, both wrong) over paired items."""
    if len(first) != len(second):
        raise ValueError(f"paired outcomes differ in length: {len(first)} vs {len(second)}")
    e = sum(1 for a, b in zip(first, second, strict=True) if a and b)
    f = sum(1 for a, b in zip(first, second, strict=True) if a and not b)
    g = sum(1 for a, b in zip(first, second, strict=True) if b and not a)
    return e, f, g, len(first) - e - f - g


def paired_difference_interval(e: int, f: int, g: int, h: int, z: float = Z95) -> tuple[float, float, float]:
    """(difference, low, high) for p1 - p2 from a paired 2x2 table, by Newcombe's method 10 (square-and-add).

    e: both right, f: only the first right, g: only the second right, h: both wrong; p1 = (e+f)/n,
    p2 = (e+g)/n. NaNs when n == 0.
    """
    if min(e, f, g, h) < 0:
        raise ValueError(f"paired table counts must be >= 0, got {(e, f, g, h)}")
    n = e + f + g + h
    if n == 0:
        return math.nan, math.nan, math.nan
    p1, p2 = (e + f) / n, (e + g) / n
    l1, u1 = wilson_interval(e + f, n, z)
    l2, u2 = wilson_interval(e + g, n, z)
    denom = (e + f) * (g + h) * (e + g) * (f + h)
    # Correlation of the paired outcomes, shrunk toward 0 by n/2 when positive as Newcombe prescribes
    # (the raw phi overstates a positive correlation and would make the interval too narrow).
    cross = e * h - f * g
    shrunk = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
    phi = shrunk / math.sqrt(denom) if denom > 0 else 0.0
    d1, d2 = p1 - l1, u2 - p2
    lower = math.sqrt(max(0.0, d1 * d1 - 2 * phi * d1 * d2 + d2 * d2))
    d3, d4 = u1 - p1, p2 - l2
    upper = math.sqrt(max(0.0, d3 * d3 - 2 * phi * d3 * d4 + d4 * d4))
    diff = p1 - p2
    return diff, max(-1.0, diff - lower), min(1.0, diff + upper)


def paired_accuracy_difference(treated: Sequence[bool], reference: Sequence[bool]) -> Interval:
    """Accuracy of `treated` minus accuracy of `reference` on the same items, with Newcombe's interval."""
    e, f, g, h = paired_table(treated, reference)
    diff, lo, hi = paired_difference_interval(e, f, g, h)
    return Interval(diff, lo, hi, len(treated))


def paired_bootstrap(before: Sequence[float], after: Sequence[float], *, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> Interval:
    """Mean shift ``after - before`` over pairs (e.g. one prompt unsteered, then steered) with a percentile
    bootstrap interval that resamples whole pairs.

    Pairs with a non-finite value on either side are dropped and not counted in ``n``. With n = 0 every field
    is NaN; with n = 1 the mean is defined but the interval is not (NaN).
    """
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two 1-D arrays of one length, got {a.shape} and {b.shape}")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"level must be in (0, 1) and n_boot >= 1, got {level}, {n_boot}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = (b - a)[keep]
    n = int(d.size)
    if n < 2:
        return Interval(float(d[0]) if n else math.nan, math.nan, math.nan, n, level)
    means = d[np.random.default_rng(seed).integers(0, n, size=(n_boot, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Interval(float(d.mean()), float(low), float(high), n, level)
