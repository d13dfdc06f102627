"""Train / held-out splits of a trait's examples: one place decides, so every stage holds out the same pairs."""

from __future__ import annotations

import torch


def split_indices(n_pos: int, n_neg: int, val_split: float, seed: int, paired: bool) -> dict[str, torch.Tensor]:
    """Seeded shuffled split; pairs stay together so a prompt never sits on both sides."""
    g = torch.Generator().manual_seed(seed)

    def one(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        perm = torch.randperm(n, generator=g)
        n_val = max(1, round(n * val_split)) if n >= 4 else 0
        return perm[n_val:], perm[:n_val]

    tp, vp = one(n_pos)
    tn, vn = (tp, vp) if paired and n_pos == n_neg else one(n_neg)
    return {"train_pos": tp, "val_pos": vp, "train_neg": tn, "val_neg": vn}
