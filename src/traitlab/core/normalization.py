"""Cross-trait normalisation of a set of trait vectors at one layer: grand-mean centring and neutral-PC denoising.

Vectors extracted one trait at a time share directions that have nothing to do with any one trait: whatever
all the trait datasets have in common (a style, a prompt format), and the directions along which the model's
activations vary most on any text. Two corrections (as in Emotion Concepts, 2025):

- grand-mean centring: subtract the mean of the traits' unit vectors, removing the part they all share. It
  needs several traits: with two it leaves +-(v1 - v2)/2, so the two vectors come out exactly opposite;
- denoising: project out the top principal components of activations on a neutral set (the PCs explaining
  `variance` of its variance), the directions of large generic variation.

Centring goes first, then denoising, then each vector is scaled back to unit length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from traitlab.core.vecmath import (
    grand_mean_center,
    pairwise_cosine_matrix,
    project_out_subspace,
    top_pcs_by_variance,
)
from traitlab.errors import TraitlabError

_EPS = 1e-8


@dataclass
class NormalizedVectors:
    """Unit vectors after normalisation and how much each step took away (fractions of the unit input)."""

    vectors: dict[str, Tensor]
    removed_by_centering: dict[str, float] = field(default_factory=dict)  # |v - centred v| (v unit)
    removed_by_denoising: dict[str, float] = field(default_factory=dict)  # |part in the neutral PCs| / |input|
    n_pcs: int = 0
    pc_variance: float = float("nan")  # neutral variance those PCs explain


def neutral_basis(neutral_acts: Tensor, variance: float) -> tuple[Tensor, float]:
    """Top PCs of neutral activations [N, D] explaining `variance` of their variance: (basis [k, D], explained)."""
    if neutral_acts.dim() != 2 or neutral_acts.shape[0] < 3:
        raise TraitlabError(f"neutral activations must be [N>=3, D], got shape {tuple(neutral_acts.shape)}")
    basis, ratio, _ = top_pcs_by_variance(neutral_acts, variance)
    return basis, float(ratio.sum())


def normalize_vectors(vectors: Mapping[str, Tensor], *, center: bool, basis: Tensor | None = None) -> NormalizedVectors:
    """Centre (over the traits) and/or denoise (project out `basis` rows) unit vectors, then renormalise."""
    if not vectors:
        raise TraitlabError("normalize_vectors: no vectors given")
    if center and len(vectors) < 2:
        raise TraitlabError("grand-mean centring needs at least 2 traits (one trait minus its own mean is zero)")
    unit = {k: v.double() / v.double().norm().clamp_min(_EPS) for k, v in vectors.items()}
    out = NormalizedVectors(dict(unit))
    if center:
        centred, _ = grand_mean_center(unit)
        out.removed_by_centering = {k: float((unit[k] - centred[k]).norm()) for k in unit}
        out.vectors = centred
    if basis is not None:
        before = out.vectors
        out.vectors = {k: project_out_subspace(v, basis.double()) for k, v in before.items()}
        out.removed_by_denoising = {k: float((before[k] - out.vectors[k]).norm() / before[k].norm().clamp_min(_EPS))
                                    for k in before}
        out.n_pcs = int(basis.shape[0]) if basis.dim() == 2 else 1
    for k, v in out.vectors.items():
        n = float(v.norm())
        if n < 1e-6:
            raise TraitlabError(f"normalisation left nothing of {k}'s vector (norm {n:.1e}): it lies in the removed "
                                "directions; use fewer neutral PCs (a smaller normalize.variance) or more traits")
        out.vectors[k] = (v / n).float()
    return out


def mean_abs_cosine(vectors: Mapping[str, Tensor]) -> float:
    """Mean |cosine| over distinct pairs of vectors: how much the traits' directions overlap (NaN with one)."""
    if len(vectors) < 2:
        return float("nan")
    m = pairwise_cosine_matrix(torch.stack([v.float() for v in vectors.values()]))
    off = ~torch.eye(m.shape[0], dtype=torch.bool)
    return float(m[off].abs().mean())
