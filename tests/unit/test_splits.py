"""Train / held-out splits and cross-validation folds: pairs and prompt groups never straddle a split."""

from __future__ import annotations

import json

import pytest
import torch

from traitlab.data import load_trait
from traitlab.data.splits import fold_indices, split_indices, trait_groups, trait_split
from traitlab.errors import ConfigError


def _json_trait(tmp_path, n_prompts: int = 12, n_systems: int = 3):
    """A `.json` trait: every prompt appears under 3 system prompts on each side (36 pairs, 12 prompts)."""
    d = tmp_path / "t"
    d.mkdir()
    prompts = [f"question {i}?" for i in range(n_prompts)]
    (d / "positive.json").write_text(json.dumps({"prompts": prompts,
                                                 "system_prompts": [f"be x, way {k}" for k in range(n_systems)]}))
    (d / "negative.json").write_text(json.dumps({"prompts": prompts,
                                                 "system_prompts": [f"be not x, way {k}" for k in range(n_systems)]}))
    return load_trait(d, root=tmp_path)


def _prompts(trait, idx: torch.Tensor, side: str = "positive") -> set[str]:
    return {getattr(trait, side)[int(i)].prompt for i in idx}


@pytest.mark.parametrize("seed", range(5))
def test_json_prompt_groups_never_straddle_train_and_val(tmp_path, seed):
    trait = _json_trait(tmp_path)
    split = trait_split(trait, val_split=0.25, seed=seed)
    train = _prompts(trait, split["train_pos"]) | _prompts(trait, split["train_neg"], "negative")
    val = _prompts(trait, split["val_pos"]) | _prompts(trait, split["val_neg"], "negative")
    assert train & val == set()
    assert len(val) == 3  # 25% of 12 prompt groups (9 pairs of 36)
    assert len(split["val_pos"]) + len(split["train_pos"]) == 36


def test_rowwise_split_would_straddle(tmp_path):
    """The check above can fail: a split that ignores groups puts prompts on both sides."""
    trait = _json_trait(tmp_path)
    split = split_indices(36, 36, 0.25, seed=0, paired=True)
    assert _prompts(trait, split["train_pos"]) & _prompts(trait, split["val_pos"])


def test_pairs_stay_aligned_and_together():
    split = split_indices(40, 40, 0.1, seed=3, paired=True)
    assert torch.equal(split["train_pos"], split["train_neg"]) and torch.equal(split["val_pos"], split["val_neg"])
    assert len(split["val_pos"]) == 4
    assert sorted(torch.cat([split["train_pos"], split["val_pos"]]).tolist()) == list(range(40))


def test_singleton_groups_hold_out_the_same_pairs_as_a_seeded_permutation():
    # one prompt per pair (the starter traits): the held-out pairs are the first round(n * val_split) of
    # torch.randperm(n) under the seed, as before prompt groups existed, so existing runs stay comparable
    perm = torch.randperm(66, generator=torch.Generator().manual_seed(42))
    split = split_indices(66, 66, 0.1, seed=42, paired=True)
    assert split["val_pos"].tolist() == perm[:7].tolist() and split["train_pos"].tolist() == perm[7:].tolist()


def test_folds_without_groups_cover_the_training_pairs():
    split = split_indices(20, 20, 0.1, seed=1, paired=True)
    folds = fold_indices(split, 3, seed=0, paired=True)
    assert sorted(len(f["val_pos"]) for f in folds) == [6, 6, 6]
    assert sorted(torch.cat([f["val_pos"] for f in folds]).tolist()) == sorted(split["train_pos"].tolist())


def test_groups_link_rows_across_classes_when_unpaired(tmp_path):
    d = tmp_path / "u"
    d.mkdir()
    (d / "positive.json").write_text(json.dumps({"prompts": ["a", "b", "c", "d"], "system_prompts": ["s1", "s2"]}))
    (d / "ood_negative.jsonl").write_text('{"prompt": "a"}\n')
    trait = load_trait(d, root=tmp_path)
    pos_groups, _ = trait_groups(trait)
    assert pos_groups == [0, 0, 1, 1, 2, 2, 3, 3]


def test_folds_score_every_training_pair_once_and_respect_groups(tmp_path):
    trait = _json_trait(tmp_path)
    split = trait_split(trait, val_split=0.25, seed=0)
    groups = trait_groups(trait)
    folds = fold_indices(split, 4, seed=0, paired=True, groups=groups)
    assert len(folds) == 4
    held = torch.cat([f["val_pos"] for f in folds]).tolist()
    assert sorted(held) == sorted(split["train_pos"].tolist())  # each training pair held out exactly once
    for f in folds:
        assert torch.equal(f["train_pos"], f["train_neg"]) and torch.equal(f["val_pos"], f["val_neg"])
        assert _prompts(trait, f["train_pos"]) & _prompts(trait, f["val_pos"]) == set()
        assert set(f["train_pos"].tolist()) | set(f["val_pos"].tolist()) == set(split["train_pos"].tolist())
    # 9 training prompts (27 pairs) in 4 folds of whole prompt groups: 3 + 2 + 2 + 2 prompts
    assert sorted(len(f["val_pos"]) for f in folds) == [6, 6, 6, 9]


def test_folds_need_two_groups_and_shrink_to_leave_one_group_out():
    split = split_indices(3, 3, 0.1, seed=0, paired=True)  # under 4 pairs: nothing held out, all 3 train
    with pytest.raises(ConfigError, match="extraction.cv_folds"):
        fold_indices(split, 5, seed=0, paired=True, groups=([0, 0, 0], [0, 0, 0]))
    folds = fold_indices(split, 5, seed=0, paired=True)
    assert sorted(f["val_pos"].tolist() for f in folds) == [[0], [1], [2]]
