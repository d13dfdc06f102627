"""Pre-flight diagnostics of contrast data at one layer: is there one coherent direction, and is it length?

Braun et al. 2025 ("Understanding (un)reliability of steering vectors") find two properties of the training
data that predict how reliably a vector steers: the agreement of the per-pair activation differences
(their mean cosine with the mean difference) and how well the classes separate along the vector. Contrast
data also carries confounds; the cheapest to check, and common in written pairs, is response length
(a sycophantic "You're right!" is shorter than a correction). Length checks here:

- `length_stats`: token counts of the two sides (a data property, the same at every layer);
- `length_corr`: Pearson r of the projection with response length over both classes, which mixes the
  trait with length whenever the data confounds them, and `length_corr_within`: the same with each
  class centred first, i.e. whether the vector tracks length when the trait is held fixed;
- `length_cos`: cosine of the vector with a length-only direction: the within-class covariance of the
  activations with length (how activations move as responses get longer, the trait held fixed).

Pure torch in, plain floats out; undefined values are NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_EPS = 1e-12
NAN = float("nan")
# A "strong" confound: one side at least 1.5x as long as the other on average, or a vector that leans on
# length (|cos| with the length direction, or |within-class r| with length, above these).
LENGTH_RATIO_LIMIT = 1.5
LENGTH_COS_LIMIT = 0.3
LENGTH_CORR_LIMIT = 0.5


def _d(x: Tensor) -> Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def pair_agreement(pos: Tensor, neg: Tensor) -> float:
    """Mean cosine of each pair's difference pos_i - neg_i with the mean difference; NaN without pairs."""
    pos, neg = _d(pos), _d(neg)
    if pos.shape != neg.shape or pos.shape[0] == 0:
        return NAN
    diffs = pos - neg
    mean = diffs.mean(0)
    if float(mean.norm()) <= _EPS:
        return NAN
    cos = (diffs @ mean) / (diffs.norm(dim=1).clamp_min(_EPS) * mean.norm())
    return float(cos.mean())


def separation(pos: Tensor, neg: Tensor, vector: Tensor) -> float:
    """Discriminability d' of the projections on the unit vector: (mean_p - mean_n) / sqrt((var_p + var_n) / 2)."""
    pos, neg, v = _d(pos), _d(neg), _d(vector)
    if pos.shape[0] < 2 or neg.shape[0] < 2:
        return NAN
    v = v / v.norm().clamp_min(_EPS)
    ps, ns = pos @ v, neg @ v
    spread = math.sqrt((float(ps.var()) + float(ns.var())) / 2)
    return NAN if spread <= _EPS * max(1.0, abs(float(ps.mean()))) else float(ps.mean() - ns.mean()) / spread


def length_stats(pos_len: Tensor, neg_len: Tensor) -> dict[str, float]:
    """Mean token counts per side, their difference and ratio (pos / neg), and the difference as Cohen's d."""
    p, n = _d(pos_len), _d(neg_len)
    if p.numel() == 0 or n.numel() == 0:
        return {}
    mp, mn = float(p.mean()), float(n.mean())
    dof = p.numel() + n.numel() - 2
    ss = float(((p - mp) ** 2).sum() + ((n - mn) ** 2).sum())
    pooled = math.sqrt(ss / dof) if dof > 0 else 0.0
    return {"length_pos": mp, "length_neg": mn, "length_diff": mp - mn,
            "length_ratio": mp / mn if mn > 0 else NAN,
            "length_d": (mp - mn) / pooled if pooled > _EPS else NAN}


def _pearson(x: Tensor, y: Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    return float(x @ y) / den if den > _EPS else NAN


def length_direction(pos: Tensor, neg: Tensor, pos_len: Tensor, neg_len: Tensor) -> Tensor:
    """Within-class covariance of activations with length, sum over classes of (h - mean_c) * (len - mean_c).

    The direction along which activations move as a response gets longer with the trait held fixed.
    """
    out = torch.zeros(_d(pos).shape[1], dtype=torch.float64)
    for h, ell in ((_d(pos), _d(pos_len)), (_d(neg), _d(neg_len))):
        out += (h - h.mean(0)).T @ (ell - ell.mean())
    return out


def preflight(pos: Tensor, neg: Tensor, vector: Tensor, pos_len: Tensor | None = None,
              neg_len: Tensor | None = None, *, paired: bool = True) -> dict[str, float]:
    """agreement (paired data only, else NaN), separation; with lengths also length_corr, length_corr_within
    and length_cos (all floats)."""
    out = {"agreement": pair_agreement(pos, neg) if paired else NAN, "separation": separation(pos, neg, vector)}
    if pos_len is None or neg_len is None:
        return out
    pos, neg, v = _d(pos), _d(neg), _d(vector)
    v = v / v.norm().clamp_min(_EPS)
    ps, ns, pl, nl = pos @ v, neg @ v, _d(pos_len), _d(neg_len)
    out["length_corr"] = _pearson(torch.cat([ps, ns]), torch.cat([pl, nl]))
    out["length_corr_within"] = _pearson(torch.cat([ps - ps.mean(), ns - ns.mean()]),
                                         torch.cat([pl - pl.mean(), nl - nl.mean()]))
    ld = length_direction(pos, neg, pl, nl)
    out["length_cos"] = float(ld @ v / ld.norm()) if float(ld.norm()) > _EPS else NAN
    return out


def confound_warnings(diag: dict[str, float]) -> list[str]:
    """Plain-language warnings for strong length confounds in `diag` (length_stats and/or preflight keys)."""
    out = []
    ratio = diag.get("length_ratio", NAN)
    if math.isfinite(ratio) and ratio > 0 and max(ratio, 1 / ratio) >= LENGTH_RATIO_LIMIT:
        out.append(f"positive responses average {diag['length_pos']:.0f} tokens, negatives {diag['length_neg']:.0f} "
                   f"({ratio:.2f}x): a vector can separate them by length alone")
    cos = diag.get("length_cos", NAN)
    if math.isfinite(cos) and abs(cos) >= LENGTH_COS_LIMIT:
        out.append(f"the vector has cosine {cos:+.2f} with the length-only direction")
    within = diag.get("length_corr_within", NAN)
    if math.isfinite(within) and abs(within) >= LENGTH_CORR_LIMIT:
        out.append(f"within each class the projection correlates with response length (r = {within:+.2f})")
    return out
