"""Separation metrics on projection scores of positive vs negative examples; plain floats out.

Every metric is oriented: "pos should score higher". A vector with the wrong sign therefore gets an
accuracy near 0 and a negative effect size, which is how polarity errors show up in the logs.
A statistic that is undefined (too few examples, no spread) is NaN, never 0: a 0 would rank as "no
effect" in a best-layer search, a NaN is skipped (`argmax_finite`). Held-out metrics come with 95%
intervals: Wilson for accuracy, a percentile bootstrap for effect size and AUROC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
    """Cohen's d with pooled (ddof=1) standard deviation; NaN when undefined (no dof or zero spread)."""
    pos = _scores(pos_scores, "positive", allow_empty=True)
    neg = _scores(neg_scores, "negative", allow_empty=True)
    n1, n2 = pos.size, neg.size
    if n1 == 0 or n2 == 0 or n1 + n2 - 2 <= 0:
        return float("nan")
    ss = ((pos - pos.mean()) ** 2).sum() + ((neg - neg.mean()) ** 2).sum()
    pooled = np.sqrt(ss / (n1 + n2 - 2))
    if not pooled > 1e-12 * max(1.0, abs(pos.mean()), abs(neg.mean())):
        return float("nan")
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


def midpoint_threshold(pos_scores: ScoreLike, neg_scores: ScoreLike) -> float:
    """Decision threshold halfway between the class means: fit it on TRAIN scores, apply it to held-out ones."""
    return float(0.5 * (_scores(pos_scores, "positive").mean() + _scores(neg_scores, "negative").mean()))


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); (nan, nan) for n = 0.

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not zero-width at 0/n or n/n,
    which is where small held-out sets of a separable trait land.
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z / den * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """[n_boot, n] multiplicities of each example in a bootstrap resample of size n."""
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    return counts


def bootstrap_intervals(pos_scores: ScoreLike, neg_scores: ScoreLike, *, paired: bool, seed: int,
                        n_boot: int = 1000, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of effect size (Cohen's d) and AUROC.

    paired=True resamples whole pairs (pos_i with neg_i), which keeps a pair's shared variation out of
    the interval; otherwise each class is resampled on its own. Resamples where d is undefined (all
    copies of one example) are dropped; when more than 5% are, or d itself is undefined, the interval
    is (nan, nan): the data cannot support one.
    """
    pos = _scores(pos_scores, "positive", allow_empty=True)
    neg = _scores(neg_scores, "negative", allow_empty=True)
    nan = (float("nan"), float("nan"))
    if pos.size < 2 or neg.size < 2 or (paired and pos.size != neg.size):
        return {"effect_size": nan, "auroc": nan}
    rng = np.random.default_rng(seed)
    wp = _resample_counts(rng, pos.size, n_boot)
    wn = wp if paired else _resample_counts(rng, neg.size, n_boot)
    n1, n2 = pos.size, neg.size
    mp, mn = wp @ pos / n1, wn @ neg / n2
    ss = (wp @ pos**2 - n1 * mp**2) + (wn @ neg**2 - n2 * mn**2)
    pooled = np.sqrt(np.clip(ss, 0.0, None) / (n1 + n2 - 2))
    ok = pooled > 1e-12 * np.maximum(1.0, np.maximum(np.abs(mp), np.abs(mn)))
    d = np.where(ok, (mp - mn) / np.where(ok, pooled, 1.0), np.nan)
    # AUROC of a resample = weighted share of (pos, neg) pairs ordered right, ties half.
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    au = np.einsum("bi,ij,bj->b", wp, wins, wn) / (n1 * n2)
    tail = 100 * (1 - level) / 2

    def interval(x: np.ndarray) -> tuple[float, float]:
        good = x[np.isfinite(x)]
        if good.size < 0.95 * x.size:
            return nan
        lo, hi = np.percentile(good, [tail, 100 - tail])
        return float(lo), float(hi)

    return {"effect_size": interval(d) if np.isfinite(effect_size(pos, neg)) else nan, "auroc": interval(au)}


def heldout_metrics(pos_scores: ScoreLike, neg_scores: ScoreLike, threshold: float, *, paired: bool, seed: int,
                    n_boot: int = 1000) -> dict[str, float]:
    """Accuracy at a given (train-fit) threshold, effect size, AUROC and polarity, each with its 95% interval.

    Keys: accuracy, effect_size, auroc (+ _lo, _hi) and polarity_correct; all NaN when a class is empty.
    """
    pos = _scores(pos_scores, "positive", allow_empty=True)
    neg = _scores(neg_scores, "negative", allow_empty=True)
    keys = [f"{k}{s}" for k in ("accuracy", "effect_size", "auroc") for s in ("", "_lo", "_hi")]
    if pos.size == 0 or neg.size == 0:
        return {**dict.fromkeys(keys, float("nan")), "polarity_correct": float("nan")}
    acc = accuracy(pos, neg, threshold=threshold)
    n = pos.size + neg.size
    ci = bootstrap_intervals(pos, neg, paired=paired, seed=seed, n_boot=n_boot)
    out = {"accuracy": acc}
    out["accuracy_lo"], out["accuracy_hi"] = wilson_interval(acc * n, n)
    out["effect_size"] = effect_size(pos, neg)
    out["effect_size_lo"], out["effect_size_hi"] = ci["effect_size"]
    out["auroc"] = auroc(pos, neg)
    out["auroc_lo"], out["auroc_hi"] = ci["auroc"]
    out["polarity_correct"] = float(polarity_correct(pos, neg))
    return out


def argmax_finite(values: Mapping[Any, float]) -> Any | None:
    """The key with the largest finite value; None when no value is defined (never an arbitrary first key)."""
    finite = {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}
    return max(finite, key=finite.__getitem__) if finite else None
