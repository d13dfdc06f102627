"""Math behind the inference views and analyses: token projections, score modes, lagged correlation,
response-level correlation with its interval, top-activating spans and segments, model-diff effect sizes,
the logit lens of a vector and trajectory dynamics.

Pure torch (+ numpy via core.metrics); plain tensors and floats in and out, so every function can be
checked on planted values without a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor

from traitlab.core.stats import Interval  # one interval type for every delta and estimate
from traitlab.core.vecmath import SCORE_MODES, derivative
from traitlab.errors import ConfigError, TraitlabError

_EPS = 1e-12


class AnalysisError(TraitlabError, ValueError):
    """An analysis got data of the wrong shape or too little of it."""


# ----------------------------------------------------------------------------------------- projection


def unit_rows(vectors: Tensor) -> Tensor:
    """[T, D] (or [D]) -> float32 rows of unit length; exactly the normalisation the projection hooks use."""
    v = vectors.detach().float()
    v = v.unsqueeze(0) if v.dim() == 1 else v
    if v.dim() != 2:
        raise AnalysisError(f"unit_rows: expected [T, D] vectors, got {list(vectors.shape)}")
    norms = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    if bool((norms < 1e-8).any()):
        raise AnalysisError("unit_rows: a vector has zero norm; expected nonzero directions")
    return v / norms


def project_tokens(acts: Tensor, vectors: Tensor) -> tuple[Tensor, Tensor]:
    """Scores ``h . v̂`` [..., T] and norms ``‖h‖`` [...] of activations [..., D]: the hooks' math, offline.

    Used to re-project captured activations; it computes the same float32 products as
    ``core.hooks.MultiLayerProjection`` so both paths agree to float rounding.
    """
    units = unit_rows(vectors)
    h = acts.detach().float()
    if h.shape[-1] != units.shape[-1]:
        raise AnalysisError(f"project_tokens: activations have {h.shape[-1]} dims, vectors {units.shape[-1]}")
    return torch.matmul(h, units.T.contiguous().to(h.device)), torch.linalg.vector_norm(h, dim=-1)


def score_modes(
    raw: Tensor, norms: Tensor, mean_over: Tensor | None = None, baseline: float = 0.0
) -> dict[str, Tensor]:
    """Every score mode of one trajectory: raw, normalized (÷ mean ‖h‖ over ``mean_over``), cosine (÷ ‖h‖).

    ``baseline`` (0 unless centering) is subtracted from the raw projection first, so all three modes
    share one zero point. ``mean_over`` is a bool mask of the tokens whose mean norm scales the
    normalized mode (default all): the pipeline passes the response tokens, because the first token of
    most models is an attention sink with a norm many times the others.
    """
    raw, norms = raw.float(), norms.float()
    if raw.shape != norms.shape:
        raise AnalysisError(f"score_modes: raw {list(raw.shape)} and norms {list(norms.shape)} differ")
    centred = raw - float(baseline)
    ref = norms if mean_over is None or not bool(mean_over.any()) else norms[mean_over]
    mean_norm = float(ref.mean()) if ref.numel() else 0.0
    return {
        "raw": centred,
        "normalized": centred / max(mean_norm, _EPS),
        "cosine": centred / norms.clamp_min(_EPS),
    }


def check_score_mode(mode: str, key: str = "inference.score_mode") -> str:
    if mode not in SCORE_MODES:
        raise ConfigError(key, f"unknown score mode {mode!r}; expected one of {', '.join(SCORE_MODES)}")
    return mode


# ---------------------------------------------------------------------------------------- correlation


def _pearson(x: Tensor, y: Tensor) -> float:
    if x.numel() < 3:
        return float("nan")
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / den if den > _EPS else float("nan")


def lagged_correlation(xs: Sequence[Tensor], ys: Sequence[Tensor], max_lag: int) -> dict[int, float]:
    """Pearson r of x[t] with y[t + lag], lag in -max_lag..max_lag, pooled over sequences.

    Pairs never cross sequence boundaries. Positive lag: y follows x (x leads). NaN where fewer than 3
    pairs exist or a side is constant.
    """
    if len(xs) != len(ys) or not xs:
        raise AnalysisError(
            f"lagged_correlation: got {len(xs)} x and {len(ys)} y sequences; expected equal, >= 1"
        )
    if max_lag < 0:
        raise AnalysisError(f"lagged_correlation: max_lag must be >= 0, got {max_lag}")
    out = {}
    for lag in range(-max_lag, max_lag + 1):
        px, py = [], []
        for x, y in zip(xs, ys, strict=True):
            x, y = torch.as_tensor(x).flatten(), torch.as_tensor(y).flatten()
            if x.shape != y.shape:
                raise AnalysisError(
                    f"lagged_correlation: paired sequences differ in length ({x.numel()} vs {y.numel()})"
                )
            n = x.numel() - abs(lag)
            if n <= 0:
                continue
            px.append(x[:n] if lag >= 0 else x[-n:])
            py.append(y[lag : lag + n] if lag >= 0 else y[:n])
        out[lag] = _pearson(torch.cat(px), torch.cat(py)) if px else float("nan")
    return out


def correlation_matrix(series: Mapping[str, Sequence[Tensor]], lag: int = 0) -> tuple[list[str], Tensor]:
    """[N, N] lag-``lag`` correlations between named score series (each a list of sequences)."""
    names = list(series)
    mat = torch.full((len(names), len(names)), float("nan"), dtype=torch.float64)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            mat[i, j] = lagged_correlation(series[a], series[b], abs(lag))[lag]
    return names, mat


def pearson_interval(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor, level: float = 0.95) -> Interval:
    """Pearson r of paired values (``Interval.mean``) with its Fisher-z interval and the pairs used.

    Pairs with a NaN on either side are dropped. r is NaN with fewer than 3 pairs or a constant side; the
    interval (``tanh(atanh r +- z / sqrt(n - 3))``) is NaN with fewer than 4 pairs. |r| = 1 gives [r, r].
    """
    a = torch.as_tensor(x, dtype=torch.float64).flatten()
    b = torch.as_tensor(y, dtype=torch.float64).flatten()
    if a.shape != b.shape:
        raise AnalysisError(f"pearson_interval: {a.numel()} x values and {b.numel()} y values; expected pairs")
    keep = ~(torch.isnan(a) | torch.isnan(b))
    a, b = a[keep], b[keep]
    n = int(a.numel())
    r = _pearson(a, b)
    if not math.isfinite(r) or n < 4:
        return Interval(r, math.nan, math.nan, n, level)
    r = max(-1.0, min(1.0, r))
    if abs(r) == 1.0:
        return Interval(r, r, r, n, level)
    z, half = math.atanh(r), NormalDist().inv_cdf(0.5 + level / 2) / math.sqrt(n - 3)
    return Interval(r, math.tanh(z - half), math.tanh(z + half), n, level)


# -------------------------------------------------------------------------------------------- spans


@dataclass(frozen=True)
class Span:
    seq: int  # index of the sequence in the input list
    start: int  # [start, stop) token indices within that sequence
    stop: int
    mean: float


def top_spans(seqs: Sequence[Tensor], window: int, k: int, largest: bool = True) -> list[Span]:
    """The ``k`` windows of ``window`` tokens with the highest (or lowest) mean score over all sequences.

    Windows of one sequence never overlap (greedy, best first), so one long peak is reported once.
    Sequences shorter than the window contribute one window covering all of them.
    """
    if window < 1 or k < 1:
        raise AnalysisError(f"top_spans: window and k must be >= 1, got window={window}, k={k}")
    candidates: list[Span] = []
    for i, s in enumerate(seqs):
        s = torch.as_tensor(s).double().flatten()
        if s.numel() == 0:
            continue
        w = min(window, s.numel())
        means = s.unfold(0, w, 1).mean(-1)
        candidates.extend(Span(i, j, j + w, float(m)) for j, m in enumerate(means.tolist()))
    candidates.sort(key=lambda sp: (-sp.mean if largest else sp.mean, sp.seq, sp.start))
    taken: dict[int, list[Span]] = {}
    out: list[Span] = []
    for sp in candidates:
        if any(sp.start < o.stop and o.start < sp.stop for o in taken.get(sp.seq, [])):
            continue
        taken.setdefault(sp.seq, []).append(sp)
        out.append(sp)
        if len(out) == k:
            break
    return out


def rank_segments(
    seqs: Sequence[Tensor], segments: Sequence[Sequence[tuple[int, int]]], k: int, largest: bool = True,
    min_tokens: int = 1,
) -> list[Span]:
    """The ``k`` given segments (``segments[i]``: ``[start, stop)`` offsets into ``seqs[i]``) with the highest
    (or lowest) mean score. NaN scores are left out of a mean; a segment with fewer than ``min_tokens``
    scored tokens is not ranked."""
    if k < 1 or min_tokens < 1:
        raise AnalysisError(f"rank_segments: k and min_tokens must be >= 1, got k={k}, min_tokens={min_tokens}")
    if len(seqs) != len(segments):
        raise AnalysisError(f"rank_segments: {len(seqs)} sequences but {len(segments)} segment lists")
    ranked: list[Span] = []
    for i, (s, segs) in enumerate(zip(seqs, segments, strict=True)):
        s = torch.as_tensor(s).double().flatten()
        for start, stop in segs:
            if not 0 <= start < stop <= s.numel():
                raise AnalysisError(f"rank_segments: segment [{start}, {stop}) outside sequence {i} of {s.numel()}")
            part = s[start:stop]
            part = part[~torch.isnan(part)]
            if part.numel() >= min_tokens:
                ranked.append(Span(i, start, stop, float(part.mean())))
    ranked.sort(key=lambda sp: (-sp.mean if largest else sp.mean, sp.seq, sp.start))
    return ranked[:k]


# --------------------------------------------------------------------------------------- model diff


def paired_cohens_d(a: Tensor, b: Tensor) -> float:
    """Cohen's d_z of variant b vs variant a on the same tokens: mean(b - a) / sd(b - a) (ddof=1).

    The scores are paired (same tokens, same order), so the spread that counts is that of the differences, not
    of the tokens. Identical inputs give exactly 0; differences without spread (a constant shift, or fewer than
    two tokens) leave d_z undefined: NaN.
    """
    a, b = torch.as_tensor(a).flatten().double(), torch.as_tensor(b).flatten().double()
    if a.shape != b.shape:
        raise AnalysisError(f"paired_cohens_d: {a.numel()} vs {b.numel()} scores; expected the same tokens")
    if a.numel() == 0:
        raise AnalysisError("paired_cohens_d: no scores")
    if torch.equal(a, b):
        return 0.0
    diff = b - a
    sd = float(diff.std(correction=1)) if diff.numel() > 1 else 0.0
    if not sd > 1e-12 * max(1.0, float(diff.abs().max())):
        return float("nan")
    return float(diff.mean()) / sd


def token_deltas(a: Tensor, b: Tensor) -> Tensor:
    """Per-token score change b - a (float64) of two variants on the same tokens."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise AnalysisError(f"token_deltas: shapes {list(a.shape)} and {list(b.shape)} differ")
    return b.double() - a.double()


# --------------------------------------------------------------------------------------- logit lens


@dataclass
class LensResult:
    top_ids: list[int]
    top_logits: list[float]
    bottom_ids: list[int]
    bottom_logits: list[float]


def logit_lens(
    vector: Tensor, weight: Tensor, norm: Callable[[Tensor], Tensor] | None = None, k: int = 10
) -> LensResult:
    """Tokens a direction promotes (top) and suppresses (bottom): ``W_U · norm(v̂)``.

    ``norm`` is the model's final norm (its per-dim gain matters: it rescales some dims by 10x or more).
    """
    if weight.dim() != 2 or weight.shape[1] != vector.shape[-1]:
        raise AnalysisError(
            f"logit_lens: unembedding {list(weight.shape)} does not match a {vector.shape[-1]}-dim vector"
        )
    k = max(1, min(k, weight.shape[0]))
    v = unit_rows(vector)[0].to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        x = norm(v.unsqueeze(0)).squeeze(0) if norm is not None else v
        logits = (weight @ x).float().cpu()
    top = torch.topk(logits, k)
    bottom = torch.topk(-logits, k)
    return LensResult(
        top.indices.tolist(), top.values.tolist(), bottom.indices.tolist(), (-bottom.values).tolist()
    )


# ----------------------------------------------------------------------------------------- dynamics


def dynamics(traj: Tensor) -> dict[str, Tensor | float]:
    """Velocity and acceleration of a per-token score trajectory [T], with summary numbers.

    velocity[t] = s[t+1] - s[t]; acceleration[t] = s[t+2] - 2 s[t+1] + s[t]. Needs T >= 3.
    """
    s = torch.as_tensor(traj).double().flatten()
    if s.numel() < 3:
        raise AnalysisError(f"dynamics: need at least 3 tokens, got {s.numel()}")
    vel = derivative(s)
    acc = derivative(s, order=2)
    return {
        "velocity": vel,
        "acceleration": acc,
        "mean_abs_velocity": float(vel.abs().mean()),
        "mean_abs_acceleration": float(acc.abs().mean()),
        "peak_velocity_index": int(vel.abs().argmax()),
        "net_change": float(s[-1] - s[0]),
    }
