"""Train / held-out splits and cross-validation folds of a trait's examples: one place decides, so every stage
holds out the same pairs.

The unit that is held out is a *prompt group*: all rows that share a prompt text, together with their pair
partners. Rows of a `.json` trait (prompts x system prompts) share a prompt across system prompts, so
splitting by row would train on a prompt and score the same prompt as "held out". Paired traits keep
pos_i and neg_i together and aligned (train_pos[k] pairs with train_neg[k]).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from traitlab.errors import ConfigError

if TYPE_CHECKING:
    from traitlab.data.traits import TraitDataset

log = logging.getLogger(__name__)
Split = dict[str, torch.Tensor]
Groups = tuple[Sequence[int], Sequence[int]]


def _n_val(n: int, val_split: float) -> int:
    return max(1, round(n * val_split)) if n >= 4 else 0


def trait_groups(trait: TraitDataset) -> tuple[list[int], list[int]]:
    """Group id of every positive and negative row: rows linked by a shared prompt text (or by being a pair)
    get one id, numbered in order of first appearance."""
    pos, neg = trait.positive, trait.negative
    paired = trait.paired and len(pos) == len(neg)
    # union-find over units: pair i (paired) or every row (pos rows first, then neg rows)
    units = len(pos) if paired else len(pos) + len(neg)
    parent = list(range(units))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    first: dict[str, int] = {}
    rows = [(i, e.prompt) for i, e in enumerate(pos)] + \
           [(i if paired else len(pos) + i, e.prompt) for i, e in enumerate(neg)]
    for unit, prompt in rows:
        root = find(first.setdefault(prompt, unit))
        parent[find(unit)] = root
    ids: dict[int, int] = {}
    unit_id = [ids.setdefault(find(u), len(ids)) for u in range(units)]
    if paired:
        return unit_id, list(unit_id)
    return unit_id[:len(pos)], unit_id[len(pos):]


def _units(n_pos: int, n_neg: int, paired: bool, groups: Groups | None) -> list[tuple[int, int | None, int | None]]:
    """(group, pos index or None, neg index or None) per unit: a pair when paired, else one row."""
    gp = list(groups[0]) if groups is not None else list(range(n_pos))
    gn = list(groups[1]) if groups is not None else [n_pos + j for j in range(n_neg)]
    if len(gp) != n_pos or len(gn) != n_neg:
        raise ValueError(f"groups cover {len(gp)}/{len(gn)} rows, expected {n_pos}/{n_neg}")
    if paired and n_pos == n_neg:
        return [(gp[i], i, i) for i in range(n_pos)]
    return [(gp[i], i, None) for i in range(n_pos)] + [(gn[j], None, j) for j in range(n_neg)]


def _shuffled_groups(units: list[tuple[int, int | None, int | None]], keep: set[int], seed: int) -> list[list[int]]:
    """Unit indices per group (only units in `keep`), groups in a seeded random order."""
    by_group: dict[int, list[int]] = {}
    for k, u in enumerate(units):
        if k in keep:
            by_group.setdefault(u[0], []).append(k)
    ordered = list(by_group.values())
    perm = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed))
    return [ordered[int(i)] for i in perm]


def split_indices(n_pos: int, n_neg: int, val_split: float, seed: int, paired: bool,
                  groups: Groups | None = None) -> Split:
    """Seeded shuffled split by group: about `val_split` of each class held out, never part of a group.

    Without `groups` every pair (or row) is its own group. Returns index tensors train_pos, val_pos,
    train_neg, val_neg; for paired data the pos and neg tensors are equal (row k pairs with row k).
    """
    units = _units(n_pos, n_neg, paired, groups)
    is_paired = paired and n_pos == n_neg
    want = {1: _n_val(n_pos, val_split), 2: _n_val(n_neg, val_split)}
    if is_paired:
        want[2] = want[1]
    have = {1: 0, 2: 0}
    val: list[int] = []
    order: list[int] = []
    for members in _shuffled_groups(units, set(range(len(units))), seed):
        order += members
        sides = {s for k in members for s in (1, 2) if units[k][s] is not None}
        if any(have[s] < want[s] for s in sides):
            val += members
            for s in sides:
                have[s] += sum(units[k][s] is not None for k in members)
    held = set(val)
    return _ordered_split(units, val, [k for k in order if k not in held])


def _ordered_split(units: list, val: list[int], train: list[int]) -> Split:
    """Index tensors in the given unit order (the seeded shuffle), as the row-wise split always returned."""
    def idx(which: list[int], side: int) -> torch.Tensor:
        return torch.tensor([units[k][side] for k in which if units[k][side] is not None], dtype=torch.long)

    return {"train_pos": idx(train, 1), "val_pos": idx(val, 1), "train_neg": idx(train, 2), "val_neg": idx(val, 2)}


def fold_indices(split: Split, k: int, seed: int, paired: bool, groups: Groups | None = None) -> list[Split]:
    """k cross-validation folds over the TRAINING part of `split`, by group: each training unit is held out once.

    Each fold is a split dict over the same (full-dataset) indices; the held-out part of `split` appears
    in no fold. Groups go to the fold with the fewest units so far (largest groups first), so folds stay
    balanced when groups differ in size.
    """
    if k < 2:
        raise ConfigError("extraction.cv_folds", f"{k} folds: expected 0 (off) or at least 2")
    if groups is not None:
        n_pos, n_neg = len(groups[0]), len(groups[1])
    else:  # every row is in the train or the held-out part
        n_pos, n_neg = (max(split[f"train_{c}"].tolist() + split[f"val_{c}"].tolist(), default=-1) + 1
                        for c in ("pos", "neg"))
    units = _units(n_pos, n_neg, paired, groups)
    tp, tn = set(split["train_pos"].tolist()), set(split["train_neg"].tolist())
    keep = {j for j, u in enumerate(units) if (u[1] is not None and u[1] in tp) or (u[2] is not None and u[2] in tn)}
    shuffled = _shuffled_groups(units, keep, seed)
    if len(shuffled) < 2:
        raise ConfigError("extraction.cv_folds", f"cross-validation needs at least 2 training prompt groups, found "
                                                 f"{len(shuffled)}; set extraction.cv_folds=0 or add pairs")
    if len(shuffled) < k:
        log.warning("%d training prompt groups for %d folds: leave-one-group-out (%d folds)", len(shuffled), k,
                    len(shuffled))
        k = len(shuffled)
    folds: list[list[int]] = [[] for _ in range(k)]
    for members in sorted(shuffled, key=len, reverse=True):  # stable: equal sizes keep the seeded order
        min(folds, key=len).extend(members)
    order = [j for members in shuffled for j in members]
    out = []
    for f in range(k):
        held = set(folds[f])
        out.append(_ordered_split(units, [j for j in order if j in held], [j for j in order if j not in held]))
    return out


def trait_split(trait: TraitDataset, val_split: float, seed: int) -> Split:
    """`split_indices` of a trait, grouped by prompt."""
    return split_indices(len(trait.positive), len(trait.negative), val_split, seed, trait.paired, trait_groups(trait))
