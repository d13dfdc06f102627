"""Separation metrics on projection scores of positive vs negative examples; plain floats out.

Every metric is oriented: "pos should score higher". A vector with the wrong sign therefore gets an
accuracy near 0 and a negative effect size, which is how polarity errors show up in the logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from traitlab.errors import TraitlabError

ScoreLike = torch.Tensor | np.ndarray | Sequence[float]


def _scores(x: ScoreLike, what: str, allow_empty: bool = False) -> np.ndarray:
    """Any 1-D score container -> float64 numpy array (float64 so means of many scores stay exact)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise TraitlabError(f"{what} scores must be 1-D, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise TraitlabError(f"{what} scores are empty; expected at least one score")
    if not np.isfinite(arr).all():
        raise TraitlabError(f"{what} scores contain {int((~np.isfinite(arr)).sum())} non-finite values")
    return arr


def accuracy(pos_scores: ScoreLike, neg_scores: ScoreLike, threshold: float | None = None) -> float:
    """Fraction of examples on their own side of the threshold (pos above, neg below); ties count half.

    The default threshold is the midpoint of the two class means, i.e. the best a 1-D classifier
    with no tuned bias would do when both classes have equal spread.
    """
    pos = _scores(pos_scores, "positive")
    neg = _scores(neg_scores, "negative")
    thr = 0.5 * (pos.mean() + neg.mean()) if threshold is None else float(threshold)
    correct = (pos > thr).sum() + (neg < thr).sum() + 0.5 * ((pos == thr).sum() + (neg == thr).sum())
    return float(correct / (pos.size + neg.size))


def effect_size(pos_scores: ScoreLike, neg_scores: ScoreLike, signed: bool = True) -> float:
    """Cohen's d with pooled (ddof=1) standard deviation; 0.0 when undefined (n<2 total dof or zero spread)."""
    pos = _scores(pos_scores, "positive", allow_empty=True)
    neg = _scores(neg_scores, "negative", allow_empty=True)
    n1, n2 = pos.size, neg.size
    if n1 == 0 or n2 == 0 or n1 + n2 - 2 <= 0:
        return 0.0
    ss = ((pos - pos.mean()) ** 2).sum() + ((neg - neg.mean()) ** 2).sum()
    pooled = np.sqrt(ss / (n1 + n2 - 2))
    if not pooled > 1e-12 * max(1.0, abs(pos.mean()), abs(neg.mean())):
        return 0.0
    d = float((pos.mean() - neg.mean()) / pooled)
    return d if signed else abs(d)


def polarity_correct(pos_scores: ScoreLike, neg_scores: ScoreLike) -> bool:
    """True when the positive examples score higher on average (the vector points the right way)."""
    pos = _scores(pos_scores, "positive")
    neg = _scores(neg_scores, "negative")
    return bool(pos.mean() > neg.mean())


def auroc(pos_scores: ScoreLike, neg_scores: ScoreLike) -> float:
    """P(random pos score > random neg score), ties counted half (Mann–Whitney U / (n1·n2))."""
    pos = _scores(pos_scores, "positive")
    neg = np.sort(_scores(neg_scores, "negative"))
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (pos.size * neg.size))


@dataclass(frozen=True)
class PairedShift:
    """Mean of paired differences (after - before) with a percentile bootstrap interval; NaN when undefined."""

    mean: float
    low: float
    high: float
    n: int  # pairs with both values finite

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)  # False for a NaN interval


def paired_bootstrap(before: ScoreLike, after: ScoreLike, *, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> PairedShift:
    """Shift ``after - before`` over pairs (e.g. one prompt unsteered vs steered), resampling pairs.

    Pairs with a non-finite value on either side are dropped and not counted in ``n``. With n = 0 every field
    is NaN; with n = 1 the mean is defined but the interval is not (NaN).
    """
    a = np.asarray(before.detach().cpu() if isinstance(before, torch.Tensor) else before, dtype=np.float64)
    b = np.asarray(after.detach().cpu() if isinstance(after, torch.Tensor) else after, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise TraitlabError(f"paired scores must be two 1-D arrays of one length, got {a.shape} and {b.shape}")
    if not 0 < level < 1 or n_boot < 1:
        raise TraitlabError(f"level must be in (0, 1) and n_boot >= 1, got {level}, {n_boot}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = (b - a)[keep]
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return PairedShift(nan, nan, nan, 0)
    if n == 1:
        return PairedShift(float(d[0]), nan, nan, 1)
    means = d[np.random.default_rng(seed).integers(0, n, size=(n_boot, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return PairedShift(float(d.mean()), float(low), float(high), n)
