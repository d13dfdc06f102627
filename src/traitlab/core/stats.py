"""Statistics of steering results: paired bootstrap intervals of a delta, and slopes of a propensity curve.

Plain numbers in, plain numbers out (numpy float64). Undefined statistics are NaN, never 0: an interval
from fewer than two items, a slope from fewer than two distinct coefficients.

Steerability follows Tan et al. 2024 ("Analyzing the generalization and reliability of steering vectors"):
the propensity of each held-out pair (log-prob margin of its positive over its negative response) is a
function of the steering coefficient; its least-squares slope is that pair's steerability, their mean is
the vector's, and a pair whose slope is negative is *anti-steerable* (steering along the vector makes it
less likely to answer the positive way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ArrayLike = np.ndarray | Sequence[float]
NAN = float("nan")


@dataclass(frozen=True)
class Interval:
    """Mean of paired differences with a percentile-bootstrap interval; n = items used (NaN ones dropped)."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """True only for a defined interval strictly on one side of zero."""
        return bool(np.isfinite(self.low) and np.isfinite(self.high) and (self.low > 0 or self.high < 0))

    def __str__(self) -> str:
        return f"{self.mean:.3g} [{self.low:.3g}, {self.high:.3g}] (n={self.n})"


def _finite(x: ArrayLike) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    return arr[np.isfinite(arr)]


def bootstrap_mean(diffs: ArrayLike, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Mean of per-item differences and its percentile-bootstrap interval, resampling items.

    Pass *paired* differences (steered minus baseline on the same question or pair): resampling them keeps
    each item's own level out of the interval. NaN items are dropped (and not counted in n); with fewer than
    two items the interval is (NaN, NaN).
    """
    d = _finite(diffs)
    n = int(d.size)
    if n == 0:
        return Interval(NAN, NAN, NAN, 0, level)
    mean = float(d.mean())
    if n < 2:
        return Interval(mean, NAN, NAN, n, level)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return Interval(mean, float(lo), float(hi), n, level)


def paired_bootstrap(treated: ArrayLike, baseline: ArrayLike, **kwargs) -> Interval:
    """`bootstrap_mean` of treated - baseline, item by item; items missing (NaN) on either side are dropped."""
    t = np.asarray(treated, dtype=np.float64).reshape(-1)
    b = np.asarray(baseline, dtype=np.float64).reshape(-1)
    if t.shape != b.shape:
        raise ValueError(f"paired_bootstrap: {t.size} treated items but {b.size} baseline items")
    return bootstrap_mean(t - b, **kwargs)


def ols_slope(x: ArrayLike, y: ArrayLike) -> float:
    """Least-squares slope of y on x over the points where both are finite; NaN with < 2 distinct x."""
    xa = np.asarray(x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if xa.shape != ya.shape:
        raise ValueError(f"ols_slope: {xa.size} x values but {ya.size} y values")
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    if np.unique(xa).size < 2:
        return NAN
    xc = xa - xa.mean()
    return float((xc * (ya - ya.mean())).sum() / (xc * xc).sum())


@dataclass(frozen=True)
class Steerability:
    """Slopes of propensity against the coefficient over the points given (the coherent range).

    steerability: slope of the mean curve (= mean of the per-pair slopes when no value is missing);
    interval: bootstrap interval of the mean per-pair slope over pairs; anti_steerable: fraction of pairs
    with a negative slope; spread: standard deviation of the per-pair slopes (ddof=1).
    """

    steerability: float
    interval: Interval
    per_pair: tuple[float, ...]
    anti_steerable: float
    spread: float
    n_pairs: int
    n_points: int


def steerability(coefficients: ArrayLike, propensity: np.ndarray | Sequence[Sequence[float]], *,
                 seed: int = 0, n_boot: int = 2000) -> Steerability:
    """Per-pair and mean slopes of `propensity` [n_points, n_pairs] against `coefficients` [n_points]."""
    x = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    y = np.asarray(propensity, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] != x.size:
        raise ValueError(f"steerability: propensity must be [{x.size}, n_pairs], got shape {list(y.shape)}")
    per_pair = np.array([ols_slope(x, y[:, j]) for j in range(y.shape[1])])
    defined = per_pair[np.isfinite(per_pair)]
    n_points = int(np.unique(x[np.isfinite(x)]).size)
    with np.errstate(invalid="ignore"):
        curve = np.array([np.nanmean(row) if np.isfinite(row).any() else NAN for row in y])
    return Steerability(
        steerability=ols_slope(x, curve),
        interval=bootstrap_mean(defined, seed=seed, n_boot=n_boot),
        per_pair=tuple(float(s) for s in per_pair),
        anti_steerable=float((defined < 0).mean()) if defined.size else NAN,
        spread=float(defined.std(ddof=1)) if defined.size >= 2 else NAN,
        n_pairs=int(defined.size),
        n_points=n_points,
    )
