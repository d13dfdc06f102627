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


# ------------------------------------------------------------------------------ response-level correlation


def test_pearson_interval_known_values():
    from traitlab.core.analysis import pearson_interval

    # r = 8 / sqrt(10 * 10) = 0.8 by hand; Fisher z: tanh(atanh(0.8) -+ 1.96 / sqrt(5 - 3))
    est = pearson_interval([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert est.mean == pytest.approx(0.8) and est.n == 5
    assert (est.low, est.high) == pytest.approx((-0.279640, 0.986196), abs=1e-5)
    assert not est.excludes_zero
    with_nan = pearson_interval([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 5, math.nan])  # the NaN pair is dropped
    assert (with_nan.mean, with_nan.low, with_nan.n) == (pytest.approx(0.8), pytest.approx(est.low), 5)
    # r = 0.904762 for a zig-zag that rises (hand-computed), interval with n - 3 = 5: excludes 0
    up = pearson_interval(range(1, 9), [2, 1, 4, 3, 6, 5, 8, 7])
    assert up.mean == pytest.approx(0.904762, abs=1e-6)
    assert (up.low, up.high) == pytest.approx((0.552063, 0.982824), abs=1e-5) and up.excludes_zero
    three = pearson_interval([1, 2, 3], [1, 3, 2])
    assert three.mean == pytest.approx(0.5) and math.isnan(three.low) and three.n == 3  # interval needs n >= 4
    assert math.isnan(pearson_interval([1, 2, 3, 4], [5, 5, 5, 5]).mean)  # a constant side: undefined, not 0
    perfect = pearson_interval([1, 2, 3, 4], [3, 5, 7, 9])
    assert (perfect.mean, perfect.low, perfect.high) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))


def _record(pid: str, series: dict[str, list[float]], source: str = "set", tokens: list[str] | None = None,
            n_prompt: int = 2) -> dict:
    """A scored record as inference writes it: prompt tokens first (scored, but never part of a response)."""
    n = n_prompt + len(next(iter(series.values())))
    traits: dict = {}
    for label, resp in series.items():
        trait, layer = label.rsplit(" L", 1)
        scores = [1000.0] * n_prompt + [None if math.isnan(x) else x for x in resp]
        traits.setdefault(trait, {"layers": {}})["layers"][layer] = {"scores": scores}
    toks = tokens if tokens is not None else [f"t{i}" for i in range(n)]
    return {"prompt_id": pid, "source": source, "tokens": toks, "n_prompt_tokens": n_prompt, "traits": traits}


def test_response_correlation_of_co_varying_and_independent_traits():
    """Per response, trait b's mean is 2 x a's + 1 (r = 1) and c's is orthogonal to a's (r = 0 exactly), though
    the token series differ in length and shape; the prompt tokens (scored 1000) and NaN tokens are left out."""
    from traitlab.monitor.correlation import response_correlation

    a_means, c_means = [1.0, 2.0, 3.0, 4.0], [1.0, -1.0, -1.0, 1.0]
    records = []
    for i, (a, c) in enumerate(zip(a_means, c_means, strict=True)):
        b = 2 * a + 1
        records.append(_record(f"p{i}", {"x/a L3": [a - 1, a + 1, a, math.nan],
                                         "x/b L3": [b + 2, b - 2, b + 1, b - 1],
                                         "x/c L3": [c, c + 0.5, c - 0.5, c]}))
    corr = response_correlation(records)
    assert corr.means["x/a L3"] == pytest.approx(a_means)
    rows = {(r["a"], r["b"]): r for r in corr.rows}
    ab, ac = rows[("x/a L3", "x/b L3")], rows[("x/a L3", "x/c L3")]
    assert ab["r"] == pytest.approx(1.0) and ab["excludes_zero"] and ab["n"] == 4
    assert ac["r"] == pytest.approx(0.0, abs=1e-12) and not ac["excludes_zero"]
    assert (ac["low"], ac["high"]) == pytest.approx((-0.961087, 0.961087), abs=1e-5)  # tanh(-+1.96 / sqrt(1))
    assert corr.matrix[0, 2] == pytest.approx(0.0, abs=1e-12) and corr.headline() is ab


def test_pair_metrics_follow_the_layer_naming():
    from traitlab.monitor.correlation import pair_metrics, response_correlation

    records = [_record(f"p{i}", {"x/a L3": [v], "x/b L3": [v * v], "x/a L5": [-v]}) for i, v in enumerate([1., 2, 3, 5])]
    metrics = pair_metrics(response_correlation(records))
    assert [step for _, step in metrics] == [3]  # same layer, two traits: the only per-layer series
    (m, _), = metrics
    assert set(m) == {"layer/response_r/x/a vs x/b", "layer/response_r_low/x/a vs x/b",
                      "layer/response_r_high/x/a vs x/b", "layer/response_n/x/a vs x/b"}
    assert m["layer/response_n/x/a vs x/b"] == 4


# ------------------------------------------------------------------------------------ clauses and segments


def test_clause_spans_on_known_text():
    from traitlab.core.clauses import clause_spans

    tokens = ["I", " like", " tea", ",", " but", " she", " prefers", " coffee", ".", " We", " met", " at", " 3", ".",
              "5", " pm", " and", " talked", ".\n", "\n", "Bye", "!"]
    spans = clause_spans(tokens)
    texts = ["".join(tokens[a:b]) for a, b in spans]
    assert texts == ["I like tea,", " but she prefers coffee.", " We met at 3.5 pm", " and talked.\n\n", "Bye!"]
    assert spans == [(0, 4), (4, 9), (9, 16), (16, 20), (20, 22)]
    assert clause_spans([]) == [] and clause_spans(["\n", "."]) == []  # nothing but breaks and punctuation
    assert clause_spans(["Sandy", " beaches", " or", " hills"]) == [(0, 2), (2, 4)]  # " or" opens a clause ...
    assert clause_spans(["Sandy", " beaches", " or", "anges"]) == [(0, 4)]  # ... "oranges" does not
    assert clause_spans(["Done", "!", "Then"]) == [(0, 3)]  # "!" before a letter: no whitespace, no cut


def test_rank_segments_by_mean_with_min_tokens_and_nans():
    from traitlab.core.analysis import rank_segments

    a = torch.tensor([1.0, 1.0, 9.0, math.nan, 3.0, 3.0, 3.0])
    b = torch.tensor([5.0, 5.0, -2.0, -2.0])
    segs = [[(0, 2), (2, 4), (4, 7)], [(0, 2), (2, 4)]]
    top = rank_segments([a, b], segs, k=3)
    assert [(s.seq, s.start, s.stop, s.mean) for s in top] == [(0, 2, 4, 9.0), (1, 0, 2, 5.0), (0, 4, 7, 3.0)]
    # (2, 4) of a has one scored token: below min_tokens=2 it is not ranked
    assert [(s.seq, s.start) for s in rank_segments([a, b], segs, k=2, min_tokens=2)] == [(1, 0), (0, 4)]
    assert [(s.seq, s.start, s.mean) for s in rank_segments([a, b], segs, k=1, largest=False)] == [(1, 2, -2.0)]
    with pytest.raises(AnalysisError, match="outside"):
        rank_segments([b], [[(2, 6)]], k=1)


def test_clause_rows_name_the_set_and_the_text():
    from traitlab.monitor.spans import clause_rows, source_rows

    toks = ["Q", "?", "Yes", ",", " and", " it", " rains", " today", ".", " Fine", " then", "."]
    rec = _record("p1", {"x/a L3": [0.0, 0.0, 0.0, 2.0, 2.0, 3.0, 4.0, 0.0, 1.0, 1.0]}, source="smoke", tokens=toks)
    other = _record("q1", {"x/a L3": [0.5, 0.5, 0.5]}, source="starter", tokens=["P", "?", "A", " b", " c"])
    seqs = [torch.tensor(r["traits"]["x/a"]["layers"]["3"]["scores"][2:], dtype=torch.float64) for r in (rec, other)]
    rows = clause_rows([rec, other], seqs, {"trait": "x/a", "layer": 3}, k=2, largest=True, min_tokens=2)
    assert [(r["source"], r["prompt_id"], r["text"], r["mean"]) for r in rows] == [
        ("smoke", "p1", " and it rains today.", pytest.approx(11.0 / 5)),
        ("smoke", "p1", " Fine then.", pytest.approx(2.0 / 3))]
    assert rows[0]["unit"] == "clause" and (rows[0]["start"], rows[0]["stop"]) == (2, 7)
    means = {r["source"]: (r["mean"], r["n_responses"], r["n_tokens"]) for r in source_rows([rec, other])}
    assert means == {"smoke": (pytest.approx(13.0 / 10), 1, 10), "starter": (pytest.approx(0.5), 1, 3)}


def test_several_prompt_sets_get_the_responses_each_set_gets_alone(tiny_gpt2, char_tokenizer, tmp_path, monkeypatch):
    """A fresh pass over prompt_set=[a,b] generates each set as a run on that set alone would (same batches, same
    seeded samples, same cache entries), so its records match the sets' own inference runs."""
    from traitlab.config.analyze import AnalyzeConfig
    from traitlab.config.infer import InferenceConfig
    from traitlab.config.schema import GenerationConfig
    from traitlab.data.texts import Source, TextItem
    from traitlab.models.loading import LoadedModel, ModelSpec
    from traitlab.pipelines.analyze import Context
    from traitlab.pipelines.common import fill_responses

    monkeypatch.setenv("TRAITLAB_CACHE", str(tmp_path))
    lm = LoadedModel(tiny_gpt2, char_tokenizer, ModelSpec(name="tiny-gpt2", id="tiny-gpt2"), False)
    gen = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.0, batch_size=8)
    cfg = AnalyzeConfig(inference=InferenceConfig(generation=gen), seed=3)
    sources = [Source(name, [TextItem(f"{name}{i}", p, None) for i, p in enumerate(prompts)], False)
               for name, prompts in (("a", ["hi there", "why?"]), ("b", ["tell me more, please", "ok"]))]
    items, names = Context(cfg, None, [], lm, sources).items(lm)
    alone = [it for src in sources for it in fill_responses(lm, src.items, cfg.inference, cfg.seed)]
    assert names == ["a", "a", "b", "b"] and [it.id for it in items] == ["a0", "a1", "b0", "b1"]
    assert [it.response for it in items] == [it.response for it in alone]
    assert len(list((tmp_path / "responses").glob("*.json"))) == 2  # one cache entry per set, shared
