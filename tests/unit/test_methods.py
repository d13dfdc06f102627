"""Every extraction method must recover a planted trait direction that naive PCA would miss."""

from __future__ import annotations

import json

import pytest
import torch

from traitlab.core.methods import METHODS, ExtractionError, MethodResult, get_method
from traitlab.core.metrics import accuracy
from traitlab.core.vecmath import pca
from traitlab.errors import ConfigError

# cos(vector, u) each method must reach on the planted data; the near-exact ones must be almost perfect.
THRESHOLDS = {"mean_diff": 0.99, "probe": 0.99, "pca_diff": 0.99, "gradient": 0.99, "ica": 0.95, "rfm": 0.95}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The CI box has 2 shared cores; multithreaded LAPACK on small matrices spins and runs ~100x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planted(
    d: int = 128,
    n: int = 200,
    a: float = 2.0,
    nuisance_std: float = 8.0,
    basis_seed: int = 0,
    noise_seed: int = 0,
    rotate: bool = True,
):
    """Paired data pos_i = s_i + a·u + e_i, neg_i = s_i − a·u + e'_i.

    s_i is shared anisotropic noise (stds 1.5 → 0.5 in a random rotated basis) with a nuisance
    direction w ⟂ u of std 8 and nothing along u; e are small independent noises. Returns pos, neg, u, w.
    rotate=False keeps the standard basis (u = e_0, w = e_1).
    """
    gb = torch.Generator().manual_seed(basis_seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gb, dtype=torch.float64))
    if not rotate:
        q = torch.eye(d, dtype=torch.float64)
    u, w = q[:, 0], q[:, 1]
    stds = torch.linspace(1.5, 0.5, d, dtype=torch.float64)
    stds[0], stds[1] = 0.0, nuisance_std
    g = torch.Generator().manual_seed(1000 + noise_seed)
    shared = (torch.randn(n, d, generator=g, dtype=torch.float64) * stds) @ q.T
    pos = shared + a * u + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    neg = shared - a * u + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return pos.float(), neg.float(), u.float(), w.float()


@pytest.fixture(scope="module")
def data():
    return planted()


def test_planted_data_fools_naive_pca(data):
    pos, neg, u, w = data
    comps, _, _ = pca(torch.cat([pos, neg]), 1)
    assert abs(float(comps[0] @ w)) > 0.95
    assert abs(float(comps[0] @ u)) < 0.1


@pytest.fixture(scope="module")
def results(data):
    pos, neg, _, _ = data
    return {name: get_method(name).extract(pos, neg, seed=0) for name in THRESHOLDS}


@pytest.mark.parametrize("name", list(THRESHOLDS))
def test_method_recovers_planted_direction(name, data, results):
    pos, neg, u, w = data
    res = results[name]
    assert isinstance(res, MethodResult)
    v = res.vector
    assert v.dtype == torch.float32 and v.shape == (pos.shape[1],)
    assert abs(float(v.norm()) - 1.0) < 1e-5
    cos = float(v @ u)
    assert cos > THRESHOLDS[name], f"{name}: cos(vector, u) = {cos:.4f}"  # also checks the sign
    assert abs(float(v @ w)) < 0.05
    assert float((pos @ v).mean()) > float((neg @ v).mean())
    assert res.metadata["method"] == name and res.metadata["train_acc"] == 1.0
    json.dumps(res.metadata)  # metadata goes to MLflow as-is


@pytest.mark.parametrize("name", list(METHODS))
def test_deterministic_for_a_seed(name, data):
    pos, neg, _, _ = data
    pos, neg = pos[:80], neg[:80]
    a = get_method(name).extract(pos, neg, seed=3).vector
    b = get_method(name).extract(pos, neg, seed=3).vector
    assert torch.equal(a, b)
    if METHODS[name].stochastic:
        c = get_method(name).extract(pos, neg, seed=4).vector
        assert not torch.equal(a, c)


def test_random_baseline_is_chance():
    pos, neg, u, _ = planted(d=256, n=100)
    test_pos, test_neg, _, _ = planted(d=256, n=100, noise_seed=1)
    accs = []
    for seed in range(20):
        v = get_method("random_baseline").extract(pos, neg, seed=seed).vector
        assert abs(float(v @ u)) < 0.3
        assert abs(float(v.norm()) - 1.0) < 1e-5
        accs.append(accuracy(test_pos @ v, test_neg @ v))
    assert abs(sum(accs) / len(accs) - 0.5) < 0.06
    # Same dimension but no data dependence: different activations give the same vector.
    assert torch.equal(
        get_method("random_baseline").extract(pos, neg, seed=7).vector,
        get_method("random_baseline").extract(test_pos * 5, None, seed=7).vector,
    )


def test_pca_diff_follows_mean_difference_not_majority_vote():
    # 4 pairs differ by +10·u, 16 pairs by −1·u: mean difference is +1.2·u, but 80% of the pairs point at −u.
    d = 64
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    base = torch.randn(20, d, generator=g) * 3
    c = torch.tensor([10.0] * 4 + [-1.0] * 16)
    neg = base
    pos = base + c[:, None] * u + 0.01 * torch.randn(20, d, generator=g)
    res = get_method("pca_diff").extract(pos, neg)
    assert float(res.vector @ u) > 0.99
    assert res.metadata["frac_diffs_positive"] == pytest.approx(0.2)
    assert float((pos @ res.vector).mean()) > float((neg @ res.vector).mean())


def test_pca_diff_unpaired_falls_back_with_warning():
    # Without pairing the shared noise no longer cancels, so keep the nuisance (var 4) below the signal (var 16).
    pos, neg, u, _ = planted(nuisance_std=2.0)
    res = get_method("pca_diff").extract(pos[:150], neg[:120])
    assert res.metadata["paired"] is False and "unpaired" in res.metadata["warning"]
    assert float(res.vector @ u) > 0.95


def test_single_polarity_against_reference():
    pos, neg, u, _ = planted(nuisance_std=2.0)
    reference = neg.mean(0)
    for name in ("mean_diff", "pca_diff"):
        v = get_method(name, reference=reference).extract(pos, None).vector
        assert float(v @ u) > 0.95, name
    with pytest.raises(ExtractionError, match="reference"):
        get_method("mean_diff").extract(pos, None)
    for name in ("probe", "gradient", "ica", "rfm"):
        with pytest.raises(ExtractionError, match=f"method {name} needs negative examples"):
            get_method(name).extract(pos, None)


def test_probe_l1_finds_an_axis_aligned_direction():
    # L1 favours few coordinates, so plant u on one axis (identity basis) and expect a sparse, exact vector.
    pos, neg, u, _ = planted(rotate=False)
    res = get_method("probe", penalty="l1", C=1.0).extract(pos, neg)
    assert res.metadata["solver"] == "liblinear"
    assert res.metadata["l1_sparsity"] > 0.5
    assert float(res.vector @ u) > 0.99
    dense = get_method("probe").extract(pos, neg).vector
    assert int(torch.count_nonzero(res.vector)) < int(torch.count_nonzero(dense)) // 2


def test_probe_is_invariant_to_activation_scale(data):
    pos, neg, _, _ = data
    a = get_method("probe").extract(pos, neg).vector
    b = get_method("probe").extract(pos * 100, neg * 100).vector
    assert float(a @ b) > 0.99999


def test_half_precision_input_is_upcast(data):
    pos, neg, u, _ = data
    res = get_method("mean_diff").extract(pos.half(), neg.half())
    assert res.vector.dtype == torch.float32
    assert float(res.vector @ u) > 0.99


def test_rfm_reports_bandwidth_choice(results):
    meta = results["rfm"].metadata
    assert meta["bandwidth"] in (1.0, 3.0, 10.0)
    assert set(meta["val_auc_by_bandwidth"]) == {"1.0", "3.0", "10.0"}
    assert meta["val_auc_by_bandwidth"][str(meta["bandwidth"])] == max(meta["val_auc_by_bandwidth"].values())


def test_unknown_method_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        get_method("lda")
    msg = str(err.value)
    assert "\n" not in msg and "'lda'" in msg
    for name in METHODS:
        assert name in msg


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="valid options: C, penalty, solver, max_iter"):
        get_method("probe", lr=0.1)
    with pytest.raises(ConfigError, match="method.penalty"):
        get_method("probe", penalty="l3")
    with pytest.raises(ConfigError, match="method.shrinkage"):
        get_method("gradient", shrinkage=2.0)


def test_bad_shapes_and_values_are_rejected(data):
    pos, neg, _, _ = data
    with pytest.raises(ExtractionError, match="differ in width"):
        get_method("mean_diff").extract(pos, neg[:, :10])
    bad = pos.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ExtractionError, match="non-finite"):
        get_method("probe").extract(bad, neg)
    with pytest.raises(ExtractionError, match=r"\[n, D\]"):
        get_method("mean_diff").extract(pos[0], neg)
    with pytest.raises(ExtractionError, match="zero or non-finite"):
        get_method("mean_diff").extract(pos, pos.clone())


def test_rfm_bandwidth_split_holds_out_whole_pairs():
    """Equal class counts are pairs (as pca_diff assumes): RFM's inner split must hold out the same pairs on both
    sides, or a pair's two halves land on both sides of its bandwidth choice."""
    from traitlab.core.methods import _stratified_split

    for seed in range(5):
        tr_p, va_p, tr_n, va_n = _stratified_split(30, 30, 0.2, seed)
        assert torch.equal(va_p, va_n) and torch.equal(tr_p, tr_n)
        assert len(va_p) == 6
    tr_p, va_p, tr_n, va_n = _stratified_split(30, 20, 0.2, 0)  # unpaired: stratified per class
    assert (len(va_p), len(va_n)) == (6, 4)
