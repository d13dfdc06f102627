"""core.analysis on planted values: projections, score modes, lags, spans, Cohen's d, logit lens, dynamics."""

from __future__ import annotations

import math

import pytest
import torch

from traitlab.core.analysis import (
    AnalysisError,
    correlation_matrix,
    dynamics,
    lagged_correlation,
    logit_lens,
    paired_cohens_d,
    project_tokens,
    score_modes,
    token_deltas,
    top_spans,
)
from traitlab.errors import ConfigError


def test_project_tokens_uses_unit_vectors_and_returns_norms():
    acts = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    scores, norms = project_tokens(acts, torch.tensor([[10.0, 0.0], [0.0, -0.5]]))
    assert scores.tolist() == [[3.0, -4.0], [0.0, -2.0]]
    assert norms.tolist() == [5.0, 2.0]
    with pytest.raises(AnalysisError, match="zero norm"):
        project_tokens(acts, torch.zeros(2))
    with pytest.raises(AnalysisError, match="dims"):
        project_tokens(acts, torch.ones(3))


def test_score_modes_share_the_centred_zero_point():
    raw = torch.tensor([10.0, 2.0, 6.0])
    norms = torch.tensor([100.0, 4.0, 12.0])
    response = torch.tensor([False, True, True])  # first token is the sink: excluded from the mean
    m = score_modes(raw, norms, mean_over=response, baseline=2.0)
    assert m["raw"].tolist() == [8.0, 0.0, 4.0]
    assert m["normalized"].tolist() == pytest.approx([1.0, 0.0, 0.5])  # mean norm over response = 8
    assert m["cosine"].tolist() == pytest.approx([0.08, 0.0, 4.0 / 12.0])
    assert score_modes(raw, norms)["normalized"][0] == pytest.approx(10.0 / (116.0 / 3))


def test_lagged_correlation_finds_the_planted_lag():
    g = torch.Generator().manual_seed(0)
    xs, ys = [], []
    for _ in range(4):
        x = torch.randn(40, generator=g)
        y = torch.zeros(40)
        y[2:] = x[:-2]  # y follows x by exactly two tokens
        xs.append(x)
        ys.append(y)
    r = lagged_correlation(xs, ys, max_lag=3)
    assert sorted(r) == [-3, -2, -1, 0, 1, 2, 3]
    assert r[2] == pytest.approx(1.0)
    assert max(r, key=r.get) == 2
    assert abs(r[0]) < 0.5
    assert lagged_correlation(ys, xs, 3)[-2] == pytest.approx(1.0)  # swapping sides flips the lag sign
    names, mat = correlation_matrix({"x": xs, "y": ys})
    assert names == ["x", "y"] and mat[0, 0] == pytest.approx(1.0) and mat[0, 1] == pytest.approx(r[0])


def test_lagged_correlation_edge_cases():
    assert math.isnan(lagged_correlation([torch.ones(5)], [torch.arange(5.0)], 0)[0])  # constant side
    assert math.isnan(lagged_correlation([torch.arange(3.0)], [torch.arange(3.0)], 2)[2])  # 1 pair only
    with pytest.raises(AnalysisError, match="length"):
        lagged_correlation([torch.ones(3)], [torch.ones(4)], 1)


def test_top_spans_non_overlapping_across_sequences():
    a = torch.tensor([0.0, 0.0, 5.0, 6.0, 0.0, 0.0, 3.0, 3.0])
    b = torch.tensor([4.0, 4.0, 0.0])
    spans = top_spans([a, b], window=2, k=3)
    assert [(s.seq, s.start, s.stop) for s in spans] == [(0, 2, 4), (1, 0, 2), (0, 6, 8)]
    assert spans[0].mean == pytest.approx(5.5)
    low = top_spans([a], window=2, k=1, largest=False)[0]
    assert low.mean == 0.0 and (low.start, low.stop) == (0, 2)
    short = top_spans([torch.tensor([1.0, 2.0])], window=5, k=2)
    assert [(s.start, s.stop, s.mean) for s in short] == [(0, 2, 1.5)]


def test_paired_cohens_d_is_d_z_on_the_paired_differences():
    """model_diff compares the same tokens under two models: the effect size is d_z = mean(b - a) / sd(b - a),
    not the unpaired pooled d (which would read a consistent shift as small when tokens vary a lot)."""
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert paired_cohens_d(a, a.clone()) == 0.0
    b = a + torch.tensor([1.0, 1.2, 0.8, 1.0])  # differences: mean 1.0, sd (ddof=1) sqrt(0.08 / 3)
    assert paired_cohens_d(a, b) == pytest.approx(1.0 / math.sqrt(0.08 / 3))  # 6.12; pooled d would say 0.77
    assert paired_cohens_d(b, a) == pytest.approx(-1.0 / math.sqrt(0.08 / 3))
    assert math.isnan(paired_cohens_d(a, a + 1.0))  # a constant shift: no spread, d_z undefined
    with pytest.raises(AnalysisError, match="same tokens"):
        paired_cohens_d(a, a[:3])
    b = a + 1.0
    assert token_deltas(a, b).tolist() == [1.0, 1.0, 1.0, 1.0]


def test_logit_lens_ranks_planted_tokens_through_the_norm():
    weight = torch.zeros(5, 3)
    weight[1] = torch.tensor([1.0, 0.0, 0.0])  # aligned with v
    weight[3] = torch.tensor([-2.0, 0.0, 0.0])  # anti-aligned, larger
    weight[4] = torch.tensor([0.0, 1.0, 0.0])
    res = logit_lens(torch.tensor([3.0, 0.0, 0.0]), weight, None, k=2)
    assert res.top_ids[0] == 1 and res.top_logits[0] == pytest.approx(1.0)
    assert res.bottom_ids[0] == 3 and res.bottom_logits[0] == pytest.approx(-2.0)
    # a norm that boosts dim 1 changes the ranking: token 4 wins
    res = logit_lens(torch.tensor([1.0, 1.0, 0.0]), weight, lambda x: x * torch.tensor([1.0, 10.0, 1.0]), k=1)
    assert res.top_ids == [4]


def test_dynamics_of_a_quadratic():
    s = torch.tensor([0.0, 1.0, 4.0, 9.0, 16.0])
    d = dynamics(s)
    assert d["velocity"].tolist() == [1.0, 3.0, 5.0, 7.0]
    assert d["acceleration"].tolist() == [2.0, 2.0, 2.0]
    assert d["mean_abs_velocity"] == 4.0 and d["peak_velocity_index"] == 3 and d["net_change"] == 16.0
    with pytest.raises(AnalysisError, match="3 tokens"):
        dynamics(torch.tensor([1.0, 2.0]))


def test_check_score_mode_lists_choices():
    from traitlab.core.analysis import check_score_mode

    with pytest.raises(ConfigError, match="raw, normalized, cosine"):
        check_score_mode("zscore")
