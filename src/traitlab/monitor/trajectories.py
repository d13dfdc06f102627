"""Dynamics of per-token score trajectories of scored records (velocity, acceleration; math in core.analysis)
and the per-token differences between two model variants scored on the same tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from traitlab.core.analysis import dynamics, paired_cohens_d, token_deltas
from traitlab.monitor.records import response_scores, span_rows


@dataclass
class Dynamics:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per record x trait x layer
    velocity_by_label: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # mean |velocity| per record
    # per record: {"trait Llayer": series} aligned with its response tokens (None where undefined)
    velocity: list[dict[str, list[float | None]]] = field(default_factory=list)
    acceleration: list[dict[str, list[float | None]]] = field(default_factory=list)


def trajectory_dynamics(records: Sequence[dict[str, Any]]) -> Dynamics:
    """Velocity and acceleration of every response trajectory of >= 3 tokens (NaN scores read as 0)."""
    out = Dynamics()
    for rec in records:
        vel_series, acc_series = {}, {}
        tokens = rec["tokens"][rec["n_prompt_tokens"] :]
        for trait, d in rec["traits"].items():
            for ly in d["layers"]:
                s = response_scores(rec, trait, ly).nan_to_num(0.0)
                if s.numel() < 3:
                    continue
                dyn = dynamics(s)
                peak = int(dyn["peak_velocity_index"])
                out.rows.append({"prompt_id": rec["prompt_id"], "trait": trait, "layer": int(ly),
                                 "mean_abs_velocity": dyn["mean_abs_velocity"],
                                 "mean_abs_acceleration": dyn["mean_abs_acceleration"],
                                 "peak_velocity_token": tokens[peak + 1] if peak + 1 < len(tokens) else "",
                                 "peak_velocity_index": peak + 1, "net_change": dyn["net_change"]})
                out.velocity_by_label.setdefault((trait, int(ly)), []).append(dyn["mean_abs_velocity"])
                vel_series[f"{trait} L{ly}"] = [None] + dyn["velocity"].tolist()
                acc_series[f"{trait} L{ly}"] = [None, None] + dyn["acceleration"].tolist()
        out.velocity.append(vel_series)
        out.acceleration.append(acc_series)
    return out


@dataclass
class VariantDiff:
    rows: list[dict[str, Any]]  # per trait x layer: Cohen's d, mean delta, both means, tokens
    spans: list[dict[str, Any]]  # top windows by mean delta
    deltas: list[tuple[dict[str, Any], Any, Tensor]]  # (record of variant a, TraitVector, per-token delta)
    d_by_trait: dict[str, dict[int, float]]


def variant_diff(rec_a: Sequence[dict[str, Any]], rec_b: Sequence[dict[str, Any]], vectors: Sequence[Any],
                 window: int, top_n: int) -> VariantDiff:
    """Variant b against variant a on the same tokens, per monitored vector (a TraitVector: trait, layer)."""
    out = VariantDiff([], [], [], {})
    for tv in vectors:
        a_seqs = [response_scores(r, tv.trait, tv.layer) for r in rec_a]
        b_seqs = [response_scores(r, tv.trait, tv.layer) for r in rec_b]
        a_all, b_all = torch.cat(a_seqs), torch.cat(b_seqs)
        keep = ~(torch.isnan(a_all) | torch.isnan(b_all))
        d = paired_cohens_d(a_all[keep], b_all[keep])
        deltas = [token_deltas(a, b) for a, b in zip(a_seqs, b_seqs, strict=True)]
        out.d_by_trait.setdefault(tv.trait, {})[tv.layer] = d
        out.rows.append({"trait": tv.trait, "layer": tv.layer, "cohens_d": d,
                         "mean_delta": float(torch.cat(deltas).nanmean()), "mean_a": float(a_all.nanmean()),
                         "mean_b": float(b_all.nanmean()), "n_tokens": int(keep.sum())})
        out.spans.extend(span_rows(rec_a, deltas, {"trait": tv.trait, "layer": tv.layer}, window, top_n,
                                   largest=True))
        out.deltas.extend((r, tv, dl) for r, dl in zip(rec_a, deltas, strict=True))
    return out
