"""The projections stage 1 keeps for its histogram: cosines at the best layer, by part, as the metrics saw them."""

from __future__ import annotations

import pytest
import torch

from traitlab.pipelines.extract import extract_vectors

D = 6


def test_projections_are_the_cosines_at_the_best_layer_split_by_part():
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(12, 2, D, generator=g) * 0.2, torch.randn(12, 2, D, generator=g) * 0.2
    pos[:, 1, 0] += 1.0  # only layer 1 separates the classes: it is the best layer
    ood = {"ood_positive": torch.randn(5, 2, D, generator=g) * 0.2, "ood_negative": torch.randn(4, 2, D, generator=g)}
    ood["ood_positive"][:, 1, 0] += 1.0
    split = {"train_pos": torch.arange(0, 9), "val_pos": torch.arange(9, 12),
             "train_neg": torch.arange(0, 9), "val_neg": torch.arange(9, 12)}
    ex = extract_vectors({"positive": pos, "negative": neg, **ood}, [3, 7], "mean_diff", {}, split, seed=0)
    assert ex.best_layer == 7
    v = ex.vectors[7]
    cos = torch.nn.functional.cosine_similarity
    for part, acts in (("val_pos", pos[9:, 1]), ("train_neg", neg[:9, 1]), ("ood_neg", ood["ood_negative"][:, 1])):
        assert ex.projections[part].tolist() == pytest.approx(cos(acts, v[None], dim=-1).tolist(), abs=1e-6), part
    assert sorted(ex.projections) == ["ood_neg", "ood_pos", "train_neg", "train_pos", "val_neg", "val_pos"]
