"""The pure part of stage 1 (method per layer + held-out metrics) on constructed activations with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from traitlab.data.splits import split_indices
from traitlab.pipelines.extract import ExtractResult, extract_vectors

D = 8


def _acts(pos_rows: list[list[float]], neg_rows: list[list[float]], n_layers: int = 1) -> dict[str, torch.Tensor]:
    """[N, n_layers, D] tensors holding the same rows at every layer."""
    def t(rows):
        return torch.tensor(rows, dtype=torch.float32)[:, None, :].repeat(1, n_layers, 1)

    return {"positive": t(pos_rows), "negative": t(neg_rows)}


def _row(x: float, y: float) -> list[float]:
    return [x, y] + [0.0] * (D - 2)


def _split(train: list[int], val: list[int]) -> dict[str, torch.Tensor]:
    tr, va = torch.tensor(train), torch.tensor(val)
    return {"train_pos": tr, "val_pos": va, "train_neg": tr, "val_neg": va}


def test_val_accuracy_uses_the_threshold_fit_on_train():
    # mean_diff on train gives v = e0. Cosine scores with e0: train pos 0.8, train neg 0.0 -> threshold 0.4.
    # Held out: both val positives score 0.6 (correct), both val negatives score 0.5 (above 0.4: wrong).
    # Accuracy with the train threshold is 2/4 = 0.5; a threshold fit on the val scores themselves
    # (midpoint 0.55) would call all four right.
    pos = [_row(0.8, 0.6)] * 4 + [_row(0.6, 0.8)] * 2
    neg = [_row(0.0, 0.6)] * 4 + [_row(0.5, math.sqrt(0.75))] * 2
    fits = extract_vectors(_acts(pos, neg), [0], "mean_diff", {}, _split([0, 1, 2, 3], [4, 5]), seed=0)
    vectors, metrics = fits.vectors, fits.metrics
    assert float(vectors[0][0]) == pytest.approx(1.0, abs=1e-6)
    assert metrics[0]["val_accuracy"] == pytest.approx(0.5)


def test_undefined_effect_size_is_nan_and_never_picks_the_best_layer(caplog):
    # One held-out pair: Cohen's d has no degrees of freedom. Layer 0 carries no signal, layer 1 does.
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(10, 2, D, generator=g) * 0.1
    signal = torch.zeros(D)
    signal[0] = 1.0
    pos, neg = noise.clone(), torch.randn(10, 2, D, generator=g) * 0.1
    pos[:, 1] += signal
    split = _split(list(range(1, 10)), [0])
    fits = extract_vectors({"positive": pos, "negative": neg}, [0, 1], "mean_diff", {}, split, seed=0)
    metrics = fits.metrics
    assert all(math.isnan(metrics[lyr]["val_effect_size"]) for lyr in (0, 1))
    result = ExtractResult("r", False, "t", [0, 1], metrics)
    assert result.best_layer is None  # no layer is "best" on undefined values
    assert fits.best_layer is None
    assert "held-out split has 1 positive and 1 negative examples" in caplog.text
    assert "no layer has a defined val_effect_size" in caplog.text


def test_random_baseline_and_gradient_get_a_different_seed_per_layer():
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(12, 1, 64, generator=g).repeat(1, 3, 1) + 0.5
    neg = torch.randn(12, 1, 64, generator=g).repeat(1, 3, 1)
    split = split_indices(12, 12, 0.25, seed=0, paired=True)
    vectors = extract_vectors({"positive": pos, "negative": neg}, [4, 5, 6], "random_baseline", {}, split, seed=7).vectors
    # independent random unit vectors in 64 dims have |cos| ~ 0.125; the same seed gives cos = 1
    for a, b in ((4, 5), (5, 6), (4, 6)):
        assert abs(float(vectors[a] @ vectors[b])) < 0.6
    again = extract_vectors({"positive": pos, "negative": neg}, [4, 5, 6], "random_baseline", {}, split, seed=7).vectors
    assert all(torch.equal(vectors[lyr], again[lyr]) for lyr in vectors)  # still reproducible from the run seed


def test_method_metadata_is_kept_per_layer():
    g = torch.Generator().manual_seed(2)
    pos = torch.randn(20, 2, D, generator=g) + 1.0
    neg = torch.randn(20, 2, D, generator=g)
    split = split_indices(20, 20, 0.2, seed=0, paired=True)
    fits = extract_vectors({"positive": pos, "negative": neg}, [3, 4], "gradient", {"steps": 2}, split, seed=0)
    metrics = fits.metrics
    for lyr in (3, 4):
        assert metrics[lyr]["method_converged"] == 0.0  # two Adam steps cannot converge
        assert metrics[lyr]["method_n_iter"] == 2.0
        assert metrics[lyr]["method_shrinkage"] == 0.5
    assert fits.method_metadata[3]["converged"] is False
    assert any("gradient did not converge at layers 3,4" in w for w in fits.warnings)


def _planted(n: int = 40, layers: int = 3, strong: int = 1, seed: int = 3):
    """Pairs with a trait along e0 at layer `strong` only (d' ~ 4), pure noise elsewhere."""
    g = torch.Generator().manual_seed(seed)
    pos, neg = torch.randn(n, layers, D, generator=g), torch.randn(n, layers, D, generator=g)
    pos[:, strong, 0] += 4.0
    return {"positive": pos, "negative": neg}


def test_cross_validation_scores_every_training_pair_and_picks_the_layer():
    from traitlab.data.splits import fold_indices

    acts = _planted()
    split = split_indices(40, 40, 0.1, seed=0, paired=True)
    folds = fold_indices(split, 5, seed=0, paired=True)
    ex = extract_vectors(acts, [0, 1, 2], "mean_diff", {}, split, seed=0, folds=folds)
    assert ex.selection == "cv_effect_size" and ex.best_layer == 1
    assert ex.counts == {"n_train_pos": 36, "n_train_neg": 36, "n_val_pos": 4, "n_val_neg": 4,
                         "n_cv_folds": 5, "n_cv_pos": 36, "n_cv_neg": 36}
    m = ex.metrics[1]
    for part in ("val", "cv"):
        for stat in ("accuracy", "effect_size", "auroc"):
            assert m[f"{part}_{stat}_lo"] <= m[f"{part}_{stat}"] <= m[f"{part}_{stat}_hi"]
    assert m["cv_accuracy_lo"] > 0.8  # 72 held-out scores of a d'~4 trait
    assert 0.2 < ex.metrics[0]["cv_accuracy"] < 0.8 and ex.metrics[0]["cv_accuracy_lo"] < 0.5  # noise layer: chance
    # the interval narrows with the 72 cross-validated scores against the 8 held-out ones
    assert m["cv_accuracy_hi"] - m["cv_accuracy_lo"] < m["val_accuracy_hi"] - m["val_accuracy_lo"]


def test_gradient_starts_from_a_different_seed_per_layer():
    acts = _planted(n=12)
    split = split_indices(12, 12, 0.25, seed=0, paired=True)
    ex = extract_vectors(acts, [0, 1, 2], "gradient", {"steps": 5}, split, seed=0)
    assert len({ex.metrics[lyr]["method_seed"] for lyr in (0, 1, 2)}) == 3


def test_length_confound_is_warned(caplog):
    acts = _planted()
    split = split_indices(40, 40, 0.1, seed=0, paired=True)
    lengths = {"positive": torch.full((40,), 20.0), "negative": torch.full((40,), 45.0)}
    lengths["positive"][::2] += 3
    ex = extract_vectors(acts, [0, 1, 2], "mean_diff", {}, split, seed=0, lengths=lengths)
    assert ex.data_stats["length_ratio"] == pytest.approx(21.5 / 45)
    assert any("negatives 45" in w for w in ex.warnings) and "negatives 45 (0.48x)" in caplog.text
    assert set(ex.diagnostics(1)) >= {"agreement", "separation", "length_corr", "length_cos", "length_ratio"}
