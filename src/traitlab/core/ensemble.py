"""Ensembles of trait vectors: members (layer, vector) with weights, combined per layer for steering and for
projection. Pure tensor code.

Steering adds w_i * v_i at member i's layer; members sharing a layer (several methods) add up, so the ensemble
is one direction per layer: d_L = sum over members at L of w_i * v_i.

Projection of hidden states onto an ensemble: the per-layer scalar projections onto the unit directions,
averaged with weights proportional to ||d_L|| (a layer that gets twice the push counts twice as much):
    score = sum_L ||d_L|| * <h_L, d_L / ||d_L||> / sum_L ||d_L|| = sum_L <h_L, d_L> / sum_L ||d_L||.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def combine(members: Sequence[tuple[int, Tensor]], weights: Sequence[float]) -> dict[int, Tensor]:
    """{layer: sum of weight * vector over the members at that layer}, float32; zero-weight members add nothing
    but their layer stays present (a zero direction)."""
    if len(members) != len(weights):
        raise ValueError(f"combine: {len(members)} members but {len(weights)} weights")
    out: dict[int, Tensor] = {}
    for (layer, v), w in zip(members, weights, strict=True):
        d = float(w) * v.detach().float()
        out[int(layer)] = out[int(layer)] + d if int(layer) in out else d
    return dict(sorted(out.items()))


def layer_shares(directions: Mapping[int, Tensor]) -> dict[int, float]:
    """Each layer's share of the ensemble's push, ||d_L|| / sum ||d||; NaN when every direction is zero."""
    norms = {layer: float(d.norm()) for layer, d in directions.items()}
    total = sum(norms.values())
    return {layer: (n / total if total > 0 else float("nan")) for layer, n in norms.items()}


def project(hidden: Mapping[int, Tensor], directions: Mapping[int, Tensor]) -> Tensor:
    """Ensemble projection of hidden states [..., D] per layer onto `directions` (see the module note); NaN
    where every direction is zero."""
    missing = sorted(set(directions) - set(hidden))
    if missing:
        raise ValueError(f"project: no hidden states for layers {missing}")
    total = sum(float(d.norm()) for d in directions.values())
    score = sum(hidden[layer].float() @ d.float() for layer, d in directions.items())
    if total == 0:
        return torch.full_like(torch.as_tensor(score, dtype=torch.float32), float("nan"))
    return score / total
