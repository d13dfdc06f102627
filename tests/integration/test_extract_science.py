"""The science of stage 1 on the real SmolLM2 and a starter trait: a real vector beats a random one by a clear
margin held out, the same pipeline on labels shuffled within pairs falls to chance, and the split never
puts one pair or one prompt on both sides."""

from __future__ import annotations

import pytest
import torch

from traitlab.config.schema import ExtractConfig, MethodConfig, TraitConfig
from traitlab.data.splits import fold_indices, trait_groups, trait_split
from traitlab.pipelines.extract import extract_vectors, fit_trait, trait_activations, validate_inputs

pytestmark = pytest.mark.slow
TRAIT = "starter/optimism"


def cfg(method: str) -> ExtractConfig:
    return ExtractConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name=method))


@pytest.fixture(scope="module")
def data(smollm2):
    c = cfg("mean_diff")
    trait = validate_inputs(c)
    layers = list(range(smollm2.n_layers))
    acts, lengths = trait_activations(smollm2, c, trait, layers)
    split = trait_split(trait, c.extraction.val_split, c.seed)
    folds = fold_indices(split, c.extraction.cv_folds, c.seed, trait.paired, trait_groups(trait))
    return trait, layers, acts, lengths, split, folds


@pytest.fixture(scope="module")
def mean_diff(smollm2, data):
    trait, layers, *_ = data
    return fit_trait(cfg("mean_diff"), smollm2, trait, layers)


def test_split_keeps_pairs_and_prompts_on_one_side(data):
    trait, _, _, _, split, folds = data
    assert torch.equal(split["val_pos"], split["val_neg"]) and torch.equal(split["train_pos"], split["train_neg"])
    for part in (split, *folds):
        train = {e.prompt for side in ("positive", "negative") for i in part[f"train_{side[:3]}"].tolist()
                 for e in [getattr(trait, side)[i]]}
        val = {e.prompt for side in ("positive", "negative") for i in part[f"val_{side[:3]}"].tolist()
               for e in [getattr(trait, side)[i]]}
        assert train and val and not train & val


def test_mean_diff_is_the_train_mean_difference(mean_diff, data):
    _, layers, acts, _, split, _ = data
    layer = mean_diff.best_layer
    j = layers.index(layer)
    expected = acts["positive"][split["train_pos"], j].double().mean(0) - acts["negative"][split["train_neg"], j].double().mean(0)
    assert float(mean_diff.vectors[layer].double() @ (expected / expected.norm())) > 0.9999
    assert mean_diff.counts["n_train_pos"] == 63 and mean_diff.counts["n_val_pos"] == 7


def test_mean_diff_beats_random_baseline_held_out(smollm2, data, mean_diff):
    trait, layers, *_ = data
    rand = fit_trait(cfg("random_baseline"), smollm2, trait, layers)
    best = mean_diff.best_layer
    md, rb = mean_diff.metrics[best], rand.metrics[best]
    # cross-validated over the 126 training examples: the intervals do not overlap
    assert md["cv_accuracy_lo"] > rb["cv_accuracy_hi"], (md["cv_accuracy"], rb["cv_accuracy"])
    assert md["cv_accuracy_lo"] > 0.85
    # on the 14 held-out examples too, by a clear margin
    assert md["val_accuracy"] - rb["val_accuracy"] >= 0.25
    assert md["val_accuracy_lo"] > 0.5
    # even the best of 30 random directions stays below mean_diff's interval
    assert mean_diff.metrics[best]["cv_accuracy_lo"] > max(m["cv_accuracy"] for m in rand.metrics.values())


def test_labels_shuffled_within_pairs_fall_to_chance(data, mean_diff):
    _, layers, acts, _, split, folds = data
    # swap the two sides of exactly half the pairs: no consistent direction is left to find
    n = len(acts["positive"])
    flip = torch.zeros(n, dtype=torch.bool)
    flip[torch.randperm(n, generator=torch.Generator().manual_seed(0))[: n // 2]] = True
    f = flip[:, None, None]
    shuffled = {"positive": torch.where(f, acts["negative"], acts["positive"]),
                "negative": torch.where(f, acts["positive"], acts["negative"])}
    best = mean_diff.best_layer
    null = extract_vectors(shuffled, layers, "mean_diff", {}, split, seed=42, folds=folds).metrics[best]
    # chance, not better: cross-validation on a null with a strong shared direction runs a little BELOW 0.5
    # (each held-out fold's flips are missing from its training folds), never above
    assert abs(null["cv_accuracy"] - 0.5) < 0.15 and null["cv_accuracy_lo"] < 0.5, null["cv_accuracy"]
    assert null["cv_accuracy_hi"] < mean_diff.metrics[best]["cv_accuracy_lo"]
    assert null["val_accuracy_lo"] < 0.5 < null["val_accuracy_hi"]
    assert abs(null["cv_effect_size"]) < 0.5


def test_trait_diagnostics_at_the_best_layer(smollm2, mean_diff):
    from traitlab.pipelines.extract import trait_diagnostics

    d = trait_diagnostics(TRAIT, lm=smollm2)
    assert d["layer"] == mean_diff.best_layer
    assert d["agreement"] == pytest.approx(mean_diff.metrics[mean_diff.best_layer]["diag_agreement"])
    # optimism's two sides are about equally long (31 vs 30 tokens): no length confound to report
    assert 0.9 < d["length_ratio"] < 1.1 and abs(d["length_cos"]) < 0.3
