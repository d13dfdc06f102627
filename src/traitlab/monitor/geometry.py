"""Geometry of the selected vectors (cosines and PCA per layer) and their logit lens, as rows for tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from traitlab.core.analysis import logit_lens
from traitlab.core.vecmath import pairwise_cosine_matrix, pca


@dataclass
class LayerGeometry:
    layer: int
    names: list[str]  # traits with a vector at this layer
    cosine: Tensor  # [N, N]
    pc: Tensor  # [N, 2] coordinates on the first two principal components
    explained: Tensor  # [2] variance ratio

    @property
    def mean_abs_cosine(self) -> float:
        return float(self.cosine[~torch.eye(len(self.names), dtype=torch.bool)].abs().mean())

    def rows(self) -> list[dict[str, Any]]:
        return [{"layer": self.layer, "trait_a": a, "trait_b": b, "cosine": float(self.cosine[i, j]),
                 "pc1_a": float(self.pc[i, 0]), "pc1_b": float(self.pc[j, 0])}
                for i, a in enumerate(self.names) for j, b in enumerate(self.names) if i < j]


def layer_geometry(vectors: Sequence[Any]) -> list[LayerGeometry]:
    """Per layer holding >= 2 traits' vectors (TraitVector: trait, layer, vector): cosines and a 2-D PCA."""
    by_layer: dict[int, list[Any]] = {}
    for tv in vectors:
        by_layer.setdefault(tv.layer, []).append(tv)
    out = []
    for layer, tvs in sorted(by_layer.items()):
        if len(tvs) < 2:
            continue
        stacked = torch.stack([tv.vector for tv in tvs])
        _, ratio, proj = pca(stacked, 2)
        out.append(LayerGeometry(layer, [tv.trait for tv in tvs], pairwise_cosine_matrix(stacked), proj, ratio))
    return out


def lens_rows(vectors: Sequence[Any], weight: Tensor, norm: Callable[[Tensor], Tensor] | None, k: int,
              decode: Callable[[list[int]], list[str]]) -> tuple[list[dict[str, Any]], str]:
    """The k tokens each vector promotes (+) and suppresses (-): table rows and a markdown table."""
    rows, lines = [], []
    for tv in vectors:
        res = logit_lens(tv.vector.to(weight.device), weight, norm, k)
        for direction, ids, logits in (("+", res.top_ids, res.top_logits), ("-", res.bottom_ids, res.bottom_logits)):
            toks = decode(ids)
            for rank, (tid, tok, lg) in enumerate(zip(ids, toks, logits, strict=True)):
                rows.append({"trait": tv.trait, "layer": tv.layer, "direction": direction, "rank": rank,
                             "token_id": tid, "token": tok, "logit": lg})
            lines.append(f"| {tv.trait} | {tv.layer} | {direction} | " + " ".join(repr(t) for t in toks) + " |")
    return rows, "| trait | layer | dir | tokens (strongest first) |\n|---|---|---|---|\n" + "\n".join(lines) + "\n"
