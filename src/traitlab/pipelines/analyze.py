"""Analyses of trait vectors and per-token scores; each is one MLflow run with figures and tables.

``geometry``     cosine-similarity matrix and PCA of the traits' vectors at each selected layer
``logit_lens``   tokens each vector promotes / suppresses through the final norm and the unembedding
``correlation``  trait-score correlation across tokens at lags -max_lag..max_lag
``dynamics``     velocity and acceleration of per-token score trajectories
``top_spans``    top- (and bottom-) activating windows of tokens per trait and layer over a prompt set
``model_diff``   two model variants on the same text: Cohen's d per layer and trait, per-token deltas,
                 top spans by mean delta

Scores come from an inference run's per-prompt JSONs (``analysis.source_run``) or from a fresh pass
with the inference pipeline's own scoring. The math lives in core.analysis; this module composes it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from traitlab.config.analyze import ANALYSES, AnalyzeConfig
from traitlab.config.infer import InferenceConfig
from traitlab.core.analysis import (
    check_score_mode,
    correlation_matrix,
    dynamics,
    lagged_correlation,
    logit_lens,
    paired_cohens_d,
    token_deltas,
)
from traitlab.core.components import component_dim, unembedding
from traitlab.core.layers import parse_layers
from traitlab.core.vecmath import pairwise_cosine_matrix, pca
from traitlab.data.texts import Source, load_source
from traitlab.errors import ConfigError
from traitlab.io import content_hash
from traitlab.models.identity import identity_of, model_tags, vectors_key
from traitlab.models.loading import LoadedModel, ModelSpec, load_model
from traitlab.monitor.records import response_scores, series_by_label, span_rows
from traitlab.monitor.scoring import decode_tokens, encode_items, score_items
from traitlab.monitor.vectors import TraitVector, resolve_traits, select_vectors, trait_list
from traitlab.monitor.views import log_delta_views, read_run_records
from traitlab.pipelines.common import fill_responses, model_key
from traitlab.tracking.artifacts import FIGURES, TABLES, slug
from traitlab.tracking.runs import JobRun, stage_run

log = logging.getLogger(__name__)


@dataclass
class AnalyzeResult:
    run_id: str
    skipped: bool
    analysis: str
    values: dict[str, Any] = field(default_factory=dict)  # the analysis' main numbers, for callers and tests

    def headline(self) -> float:
        v = self.values.get("headline", float("nan"))
        return float(v) if v is not None else float("nan")


@dataclass
class Context:
    """What an analysis needs, loaded lazily (geometry needs no forward, model_diff two models)."""

    cfg: AnalyzeConfig
    run: JobRun
    vectors: list[TraitVector]
    lm: LoadedModel | None
    source: Source | None
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def inf(self) -> InferenceConfig:
        return self.cfg.inference


def _table(run: JobRun, rows: Sequence[dict[str, Any]], name: str) -> None:
    if rows:
        run.log_table({k: [r.get(k) for r in rows] for k in rows[0]}, f"{TABLES}/{name}.json")


def _fig(run: JobRun, fig: Any, name: str) -> None:
    run.log_figure(fig, f"{FIGURES}/{name}.png")


def _by_layer(vectors: Sequence[TraitVector]) -> dict[int, list[TraitVector]]:
    out: dict[int, list[TraitVector]] = {}
    for tv in vectors:
        out.setdefault(tv.layer, []).append(tv)
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------- vector analyses


def geometry(ctx: Context) -> None:
    from traitlab.viz.figures import cosine_matrix_figure, pca_scatter_figure

    rows, done = [], []
    for layer, tvs in _by_layer(ctx.vectors).items():
        if len(tvs) < 2:
            continue
        names = [tv.trait for tv in tvs]
        stacked = torch.stack([tv.vector for tv in tvs])
        mat = pairwise_cosine_matrix(stacked)
        fig = cosine_matrix_figure(names, mat.numpy())
        fig.axes[0].set_title(f"cosine similarity of trait vectors, layer {layer}", fontsize=8)
        _fig(ctx.run, fig, f"geometry/cosine_L{layer:03d}")
        comps, ratio, proj = pca(stacked, 2)
        fig = pca_scatter_figure(names, proj.numpy(), ratio.numpy())
        fig.axes[0].set_title(f"PCA of trait vectors, layer {layer}", fontsize=8)
        _fig(ctx.run, fig, f"geometry/pca_L{layer:03d}")
        off = mat[~torch.eye(len(names), dtype=torch.bool)]
        ctx.run.log_metric("mean_abs_cosine", float(off.abs().mean()), step=layer)
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                if i < j:
                    rows.append({"layer": layer, "trait_a": a, "trait_b": b, "cosine": float(mat[i, j]),
                                 "pc1_a": float(proj[i, 0]), "pc1_b": float(proj[j, 0])})
        done.append(layer)
        ctx.values.setdefault("cosine", {})[layer] = {"names": names, "matrix": mat.tolist()}
    if not done:
        have = {tv.trait: sorted(t.layer for t in ctx.vectors if t.trait == tv.trait) for tv in ctx.vectors}
        raise ConfigError("layers", f"geometry needs >= 2 traits with vectors at one selected layer; selected: {have}")
    _table(ctx.run, rows, "geometry_cosine")
    ctx.values["layers"] = done
    ctx.values["headline"] = float(sum(abs(r["cosine"]) for r in rows) / len(rows))


def logit_lens_analysis(ctx: Context) -> None:
    assert ctx.lm is not None
    norm, weight = unembedding(ctx.lm.model)
    if weight.shape[1] != ctx.vectors[0].vector.shape[0]:
        raise ConfigError("inference.component", "the logit lens needs residual-stream vectors (hidden-size wide)")
    rows, lines = [], []
    k = ctx.cfg.analysis.top_k
    for tv in ctx.vectors:
        res = logit_lens(tv.vector.to(weight.device), weight, norm, k)
        for direction, ids, logits in (("+", res.top_ids, res.top_logits), ("-", res.bottom_ids, res.bottom_logits)):
            toks = decode_tokens(ctx.lm.tokenizer, ids)
            for rank, (tid, tok, lg) in enumerate(zip(ids, toks, logits, strict=True)):
                rows.append({"trait": tv.trait, "layer": tv.layer, "direction": direction, "rank": rank,
                             "token_id": tid, "token": tok, "logit": lg})
            lines.append(f"| {tv.trait} | {tv.layer} | {direction} | " + " ".join(repr(t) for t in toks) + " |")
        ctx.values.setdefault("top", {})[tv.label] = decode_tokens(ctx.lm.tokenizer, res.top_ids)
    _table(ctx.run, rows, "logit_lens")
    md = "| trait | layer | dir | tokens (strongest first) |\n|---|---|---|---|\n" + "\n".join(lines) + "\n"
    ctx.run.log_text(md, f"{TABLES}/logit_lens.md")
    ctx.values["rows"] = rows
    ctx.values["headline"] = float(len(rows))


# ------------------------------------------------------------------------------------- score analyses


def _records(ctx: Context) -> list[dict[str, Any]]:
    """Per-prompt records: downloaded from an inference run, or scored now with the selected vectors."""
    src = ctx.cfg.analysis.source_run
    if src:
        records = read_run_records(ctx.run.client, src, key="analysis.source_run")
        wanted = {tv.label for tv in ctx.vectors}
        have = sorted({f"{t} L{ly}" for r in records for t, d in r["traits"].items() for ly in d["layers"]})
        if not wanted & set(have):
            raise ConfigError("layers", f"run {src!r} scored {have}; traits/layers select {sorted(wanted)}")
        for r in records:  # keep the trait x layer series that `traits` and `layers` select
            r["traits"] = {
                t: {"layers": {ly: e for ly, e in d["layers"].items() if f"{t} L{ly}" in wanted}}
                for t, d in r["traits"].items()
            }
            r["traits"] = {t: d for t, d in r["traits"].items() if d["layers"]}
        return records
    assert ctx.lm is not None and ctx.source is not None
    src_items = ctx.source.items
    items = src_items if ctx.source.given_responses else fill_responses(ctx.lm, src_items, ctx.inf, ctx.cfg.seed)
    return score_items(ctx.lm, items, ctx.vectors, ctx.inf, source=ctx.source.name)


def correlation(ctx: Context) -> None:
    from traitlab.viz.figures import cosine_matrix_figure, trajectory_figure

    series = {k: [s.nan_to_num(0.0) for s in v] for k, v in series_by_label(_records(ctx)).items()}
    if len(series) < 2:
        raise ConfigError("traits", f"correlation needs >= 2 trait x layer series, got {list(series)}")
    names, mat = correlation_matrix(series)
    fig = cosine_matrix_figure(names, mat.numpy())
    fig.axes[0].set_title("trait-score correlation across tokens (Pearson r, lag 0)", fontsize=8)
    _fig(ctx.run, fig, "correlation/lag0_matrix")
    max_lag = ctx.cfg.analysis.max_lag
    lags = list(range(-max_lag, max_lag + 1))
    rows, curves = [], {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            by_lag = lagged_correlation(series[a], series[b], max_lag)
            curves[f"{a} → {b}"] = [None if math.isnan(by_lag[g]) else by_lag[g] for g in lags]
            rows.extend({"a": a, "b": b, "lag": g, "r": by_lag[g]} for g in lags)
    fig = trajectory_figure(
        [str(g) for g in lags], curves, "correlation vs lag (lag > 0: the second trait follows the first)"
    )
    fig.axes[0].set_xlabel("lag (tokens)", fontsize=8)
    fig.axes[0].set_ylabel("Pearson r", fontsize=8)
    _fig(ctx.run, fig, "correlation/by_lag")
    _table(ctx.run, rows, "correlation_by_lag")
    ctx.values.update(names=names, matrix=mat.tolist(), rows=rows)
    ctx.values["headline"] = float(mat[0, 1])


def dynamics_analysis(ctx: Context) -> None:
    from traitlab.viz.figures import trajectory_figure

    records = _records(ctx)
    rows = []
    per_label: dict[tuple[str, int], list[float]] = {}
    for n, rec in enumerate(records):
        vel_series, acc_series = {}, {}
        tokens = rec["tokens"][rec["n_prompt_tokens"] :]
        for trait, d in rec["traits"].items():
            for ly in d["layers"]:
                s = response_scores(rec, trait, ly).nan_to_num(0.0)
                if s.numel() < 3:
                    continue
                dyn = dynamics(s)
                peak = int(dyn["peak_velocity_index"])
                rows.append({"prompt_id": rec["prompt_id"], "trait": trait, "layer": int(ly),
                             "mean_abs_velocity": dyn["mean_abs_velocity"],
                             "mean_abs_acceleration": dyn["mean_abs_acceleration"],
                             "peak_velocity_token": tokens[peak + 1] if peak + 1 < len(tokens) else "",
                             "peak_velocity_index": peak + 1, "net_change": dyn["net_change"]})
                per_label.setdefault((trait, int(ly)), []).append(dyn["mean_abs_velocity"])
                vel_series[f"{trait} L{ly}"] = [None] + dyn["velocity"].tolist()
                acc_series[f"{trait} L{ly}"] = [None, None] + dyn["acceleration"].tolist()
        if n < ctx.cfg.analysis.max_figures and vel_series:
            for what, series in (("velocity", vel_series), ("acceleration", acc_series)):
                fig = trajectory_figure(tokens, series, f"{rec['prompt_id']}: {what} of the {rec['score_mode']} score")
                fig.axes[0].set_ylabel(what, fontsize=8)
                _fig(ctx.run, fig, f"dynamics/{slug(rec['prompt_id'])}_{what}")
    if not rows:
        raise ConfigError("inference.generation.max_new_tokens", "dynamics needs responses of >= 3 tokens")
    for (trait, layer), v in sorted(per_label.items()):
        ctx.run.log_metric(f"mean_abs_velocity/{trait}", sum(v) / len(v), step=layer)
    _table(ctx.run, rows, "dynamics")
    ctx.values["rows"] = rows
    ctx.values["headline"] = sum(r["mean_abs_velocity"] for r in rows) / len(rows)


def top_spans_analysis(ctx: Context) -> None:
    records = _records(ctx)
    a = ctx.cfg.analysis
    rows = []
    for lab, seqs in series_by_label(records).items():
        trait, ly = lab.rsplit(" L", 1)
        for largest in (True, False):
            rows.extend(span_rows(records, seqs, {"trait": trait, "layer": int(ly)}, a.window, a.top_n, largest))
    if not rows:
        raise ConfigError("prompt_set", "top_spans found no scored response tokens")
    _table(ctx.run, rows, "top_spans")
    md = ["| trait | layer | dir | rank | prompt | mean | text |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['trait']} | {r['layer']} | {r['direction']} | {r['rank']} | {r['prompt_id']} | "
           f"{r['mean']:+.4f} | {r['text']!r} |" for r in rows]
    ctx.run.log_text("\n".join(md) + "\n", f"{TABLES}/top_spans.md")
    ctx.values["rows"] = rows
    ctx.values["headline"] = rows[0]["mean"]


# ------------------------------------------------------------------------------------------ model diff


def _same_spec(a: ModelSpec, b: ModelSpec) -> bool:
    return asdict(a) == asdict(b)


def model_diff(ctx: Context) -> None:
    from traitlab.viz.figures import model_diff_figure

    cfg, inf = ctx.cfg, ctx.inf
    assert ctx.lm is not None and ctx.source is not None
    lm_a = ctx.lm
    lm_b = lm_a if _same_spec(cfg.variant_a, cfg.variant_b) else load_model(cfg.variant_b)
    if (lm_b.n_layers, component_dim(lm_b.model, inf.component)) != (lm_a.n_layers, component_dim(lm_a.model, inf.component)):
        raise ConfigError(
            "variant_b",
            f"{lm_b.name} has a different shape ({lm_b.n_layers} layers) than "
            f"{lm_a.name} ({lm_a.n_layers}); model_diff compares variants of one model",
        )
    items = ctx.source.items if ctx.source.given_responses else fill_responses(lm_a, ctx.source.items, inf, cfg.seed)
    enc_a = encode_items(lm_a, items, inf.max_length)
    enc_b = enc_a if lm_b is lm_a else encode_items(lm_b, items, inf.max_length)
    if [e.ids for e in enc_a] != [e.ids for e in enc_b]:
        raise ConfigError(
            "variant_b",
            f"{lm_b.name} tokenizes the text differently from {lm_a.name}; model_diff needs one tokenizer",
        )

    def records_of(lm: LoadedModel) -> list[dict[str, Any]]:  # lm_a's tokens through either model
        return score_items(lm, items, ctx.vectors, inf, source=ctx.source.name, encoded=enc_a,
                           tokenizer=lm_a.tokenizer, clean_massive=False)

    rec_a, rec_b = records_of(lm_a), records_of(lm_b)
    d_by_trait: dict[str, dict[int, float]] = {}
    rows, spans, deltas_out = [], [], []
    for tv in ctx.vectors:
        a_seqs = [response_scores(r, tv.trait, tv.layer) for r in rec_a]
        b_seqs = [response_scores(r, tv.trait, tv.layer) for r in rec_b]
        a_all, b_all = torch.cat(a_seqs), torch.cat(b_seqs)
        keep = ~(torch.isnan(a_all) | torch.isnan(b_all))
        d = paired_cohens_d(a_all[keep], b_all[keep])
        deltas = [token_deltas(a, b) for a, b in zip(a_seqs, b_seqs, strict=True)]
        mean_delta = float(torch.cat(deltas).nanmean())
        d_by_trait.setdefault(tv.trait, {})[tv.layer] = d
        rows.append({"trait": tv.trait, "layer": tv.layer, "cohens_d": d, "mean_delta": mean_delta,
                     "mean_a": float(a_all.nanmean()), "mean_b": float(b_all.nanmean()), "n_tokens": int(keep.sum())})
        ctx.run.log_metric(f"cohens_d/{tv.trait}", d, step=tv.layer)
        spans.extend(span_rows(rec_a, deltas, {"trait": tv.trait, "layer": tv.layer}, cfg.analysis.window,
                               cfg.analysis.top_n, largest=True))
        for r, dl in zip(rec_a, deltas, strict=True):
            deltas_out.append((r, tv, dl))
    _fig(ctx.run, model_diff_figure(d_by_trait, f"model diff: {lm_b.name} vs {lm_a.name}"), "model_diff/cohens_d")
    _table(ctx.run, rows, "model_diff")
    _table(ctx.run, spans, "model_diff_top_spans")
    log_delta_views(ctx.run, deltas_out, variant_a=lm_a.name, variant_b=lm_b.name, score_mode=inf.score_mode,
                    max_figures=cfg.analysis.max_figures)
    ctx.values.update(d=d_by_trait, rows=rows, spans=spans)
    ctx.values["headline"] = max((abs(r["cohens_d"]) for r in rows), default=0.0)


RUNNERS: dict[str, Callable[[Context], None]] = {
    "geometry": geometry,
    "logit_lens": logit_lens_analysis,
    "correlation": correlation,
    "dynamics": dynamics_analysis,
    "top_spans": top_spans_analysis,
    "model_diff": model_diff,
}
_NEEDS_MODEL = {"logit_lens", "model_diff"}
_NEEDS_SCORES = {"correlation", "dynamics", "top_spans", "model_diff"}


# ------------------------------------------------------------------------------------------------- run


def validate(cfg: AnalyzeConfig) -> None:
    name = cfg.analysis.name
    if name not in ANALYSES:
        raise ConfigError("analysis", f"{name!r} is not one of {', '.join(ANALYSES)}")
    check_score_mode(cfg.inference.score_mode)
    trait_list(cfg.traits)
    parse_layers(cfg.layers, 10_000, best=5_000)
    a = cfg.analysis
    if a.window < 1 or a.top_n < 1 or a.top_k < 1 or a.max_lag < 0:
        raise ConfigError("analysis", f"window/top_n/top_k must be >= 1 and max_lag >= 0, got {a}")


def _n_layers_and_dim(cfg: AnalyzeConfig, lm: LoadedModel | None) -> tuple[int, int | None]:
    if lm is not None:
        return lm.n_layers, component_dim(lm.model, cfg.inference.component)
    from traitlab.models.loading import model_config

    return int(model_config(cfg.model).num_hidden_layers), None


def run_analyze(
    cfg: AnalyzeConfig, parent_run_id: str | None = None, lm: LoadedModel | None = None
) -> AnalyzeResult:
    validate(cfg)
    name = cfg.analysis.name
    fresh = name in _NEEDS_SCORES and not (name != "model_diff" and cfg.analysis.source_run)
    source = load_source(cfg.prompt_set, cfg.responses, cfg.inference.max_prompts) if fresh else None
    if lm is None and (name in _NEEDS_MODEL or fresh):
        lm = load_model(cfg.variant_a if name == "model_diff" else cfg.model)
    tracking = {"experiment": cfg.tracking.experiment, "uri": cfg.tracking.uri}
    traits = resolve_traits(cfg.traits, vectors_key(cfg.model), **tracking)
    n_layers, dim = _n_layers_and_dim(cfg, lm)
    vectors = select_vectors(traits, vectors_key(cfg.model), cfg.layers, n_layers, cfg.inference, dim=dim, **tracking)
    key = content_hash("analyze-v1", name, asdict(cfg.analysis), asdict(cfg.inference),
                       [(tv.trait, tv.layer, tv.ref.run_id, tv.ref.method, tv.ref.position) for tv in vectors],
                       source.fingerprint() if source else None, model_key(lm) if lm is not None else vectors_key(cfg.model),
                       asdict(cfg.variant_b) if name == "model_diff" else None, cfg.seed)
    tags = {"traitlab.stage": "analyze", "analysis": name, **model_tags(cfg.model),
            "traits": ",".join(sorted({tv.trait for tv in vectors}))[:5000],
            "layers": ",".join(map(str, sorted({tv.layer for tv in vectors}))), "component": cfg.inference.component}
    if name == "model_diff":
        tags.update(variant_a=identity_of(cfg.variant_a).key, variant_b=identity_of(cfg.variant_b).key,
                    variant_a_name=cfg.variant_a.name, variant_b_name=cfg.variant_b.name)
    if cfg.analysis.source_run:
        tags["source_run"] = cfg.analysis.source_run
    run_name = cfg.tracking.run_name or f"analyze-{name}"
    with stage_run(cfg, job_key=key, run_name=run_name, tags=tags, parent_run_id=parent_run_id) as run:
        if run.skipped:
            return AnalyzeResult(run.run_id, True, name)
        ctx = Context(cfg, run, vectors, lm, source)
        RUNNERS[name](ctx)
        headline = ctx.values.get("headline")
        if headline is not None and math.isfinite(float(headline)):
            run.log_metric(f"{name}_headline", float(headline))
        log.info("%s: %d vectors (%s)", name, len(vectors), ", ".join(tv.label for tv in vectors))
        return AnalyzeResult(run.run_id, False, name, ctx.values)
