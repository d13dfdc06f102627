"""Trait correlation of scored records: across responses (one mean score per response and trait x layer,
Pearson r with a 95% Fisher-z interval and n) and across tokens at lags. Rows, metrics and the verdict
an analysis run logs; the statistics are core.analysis'."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from traitlab.core.analysis import lagged_correlation, pearson_interval
from traitlab.monitor.records import response_means, split_label
from traitlab.tracking.names import layer_metric


@dataclass
class ResponseCorrelation:
    names: list[str]  # "trait Llayer" series
    matrix: Tensor  # [N, N] r (NaN where undefined)
    rows: list[dict[str, Any]]  # one per pair a < b: r, low, high, n, excludes_zero, traits and layers
    means: dict[str, list[float]]  # per series: the mean response score of each record (NaN: none scored)

    def strongest(self, k: int) -> list[dict[str, Any]]:
        """The k pairs with the largest |r| (defined ones only): the ones worth a scatter plot."""
        return sorted((r for r in self.rows if math.isfinite(r["r"])), key=lambda r: -abs(r["r"]))[:k]

    def headline(self) -> dict[str, Any]:
        """The first pair of two different traits (else the first pair)."""
        return next((r for r in self.rows if r["trait_a"] != r["trait_b"]), self.rows[0])


def response_correlation(records: Sequence[dict[str, Any]]) -> ResponseCorrelation:
    means = response_means(records)
    names = list(means)
    mat = torch.full((len(names), len(names)), math.nan, dtype=torch.float64)
    rows = []
    for i, a in enumerate(names):
        for j in range(i, len(names)):
            b = names[j]
            est = pearson_interval(means[a], means[b])
            mat[i, j] = mat[j, i] = est.mean
            if i == j:
                continue
            (ta, la), (tb, lb) = split_label(a), split_label(b)
            rows.append({"a": a, "b": b, "trait_a": ta, "layer_a": la, "trait_b": tb, "layer_b": lb,
                         "r": est.mean, "low": est.low, "high": est.high, "n": est.n,
                         "excludes_zero": est.excludes_zero})
    return ResponseCorrelation(names, mat, rows, means)


def rounded(v: Any, digits: int = 4) -> Any:
    """A float rounded for a table (NaN -> None: JSON has no NaN); anything else unchanged."""
    return (round(v, digits) if math.isfinite(v) else None) if isinstance(v, float) else v


def response_score_rows(records: Sequence[dict[str, Any]], corr: ResponseCorrelation) -> list[dict[str, Any]]:
    """One row per response: its set, prompt id and mean score per series (the points the r values rest on)."""
    return [{"source": rec.get("source"), "prompt_id": rec["prompt_id"],
             **{lab: rounded(v[i]) for lab, v in corr.means.items()}} for i, rec in enumerate(records)]


def pair_metrics(corr: ResponseCorrelation) -> list[tuple[dict[str, float], int]]:
    """Per-layer series for pairs of different traits at one layer: ``layer/response_r/<a> vs <b>`` with its
    interval (``_low``, ``_high``) and ``layer/response_n/...``, step = layer."""
    out = []
    for r in corr.rows:
        if r["layer_a"] != r["layer_b"] or r["trait_a"] == r["trait_b"] or not math.isfinite(r["r"]):
            continue
        pair = f"{r['trait_a']} vs {r['trait_b']}"
        metrics = {layer_metric(f"response_r/{pair}"): r["r"], layer_metric(f"response_r_low/{pair}"): r["low"],
                   layer_metric(f"response_r_high/{pair}"): r["high"]}
        metrics = {k: round(v, 4) for k, v in metrics.items() if math.isfinite(v)}
        metrics[layer_metric(f"response_n/{pair}")] = r["n"]
        out.append((metrics, r["layer_a"]))
    return out


def correlation_note(corr: ResponseCorrelation, n_responses: int) -> str:
    lines = [f"Trait correlation across {n_responses} responses (one mean response-token score per response; "
             "Pearson r with a 95% Fisher-z interval).", "", "| a | b | r [95%] | n | |", "|---|---|---|---|---|"]
    for r in corr.rows:
        call = "interval excludes 0" if r["excludes_zero"] else "noise: interval includes 0 or is undefined"
        lines.append(f"| {r['a']} | {r['b']} | {r['r']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | {r['n']} | {call} |")
    return "\n".join(lines) + "\n"


def lagged_rows(series: dict[str, list[Tensor]], names: Sequence[str], max_lag: int
                ) -> tuple[list[dict[str, Any]], dict[str, list[float | None]]]:
    """Token-level correlation of every pair at lags -max_lag..max_lag: table rows and one curve per pair."""
    lags = list(range(-max_lag, max_lag + 1))
    rows, curves = [], {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            by_lag = lagged_correlation(series[a], series[b], max_lag)
            curves[f"{a} → {b}"] = [None if math.isnan(by_lag[g]) else by_lag[g] for g in lags]
            rows.extend({"a": a, "b": b, "lag": g, "r": by_lag[g]} for g in lags)
    return rows, curves
