"""The per-prompt record of a scored text: tokens, every score mode of every trait x layer, token norms.

Records are what the views embed (viz.token_view's schema), what projections/<prompt>.json holds and what
the analyses read back; these functions build, slim and summarise them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from traitlab.core.analysis import score_modes, top_spans

if TYPE_CHECKING:
    from traitlab.data.texts import TextItem
    from traitlab.monitor.scoring import Scored
    from traitlab.monitor.vectors import TraitVector


def _floats(t: Tensor) -> list[float | None]:
    """JSON-ready values; a token without a score (never fed to the model) is None, not NaN."""
    return [float(x) if math.isfinite(x) else None for x in t.tolist()]


def build_record(
    item: TextItem,
    tokens: list[str],
    scored: Scored,
    vectors: Sequence[TraitVector],
    columns: dict[int, int],
    *,
    model: str,
    source: str,
    score_mode: str,
    centered: bool,
    clean_massive: bool,
) -> dict[str, Any]:
    """The per-prompt JSON: tokens, every score mode of every trait x layer, token norms per layer."""
    n_tok, n_prompt = len(scored.token_ids), scored.n_prompt_tokens
    response_mask = torch.arange(n_tok) >= n_prompt
    traits: dict[str, Any] = {}
    for i, tv in enumerate(vectors):
        raw = scored.scores[tv.layer][:, columns[i]]
        base = tv.baseline if centered and math.isfinite(tv.baseline) else 0.0
        norms = scored.norms[tv.layer]
        modes = score_modes(raw, norms, mean_over=response_mask & torch.isfinite(norms), baseline=base)
        entry = {
            "scores": _floats(modes[score_mode]),
            "mode": score_mode,
            **{m: _floats(v) for m, v in modes.items()},
            "baseline": tv.baseline if math.isfinite(tv.baseline) else None,
            "centered": centered,
            "vector": tv.describe(),
        }
        traits.setdefault(tv.trait, {"layers": {}})["layers"][str(tv.layer)] = entry
    return {
        "prompt_id": item.id,
        "prompt": item.prompt,
        "system_prompt": item.system_prompt,
        "response": item.response or "",
        "tokens": tokens,
        "token_ids": list(scored.token_ids),
        "n_prompt_tokens": n_prompt,
        "model": model,
        "source": source,
        "score_mode": score_mode,
        "centered": centered,
        "clean_massive": clean_massive,
        "norms": {str(layer): _floats(n) for layer, n in sorted(scored.norms.items())},
        "traits": traits,
    }


def view_record(record: dict[str, Any]) -> dict[str, Any]:
    """What the HTML page embeds: the record without ids, norms and the non-selected score modes (each layer
    keeps its vector's provenance and baseline for the page's header)."""
    slim = {k: record[k] for k in ("prompt_id", "prompt", "response", "tokens", "n_prompt_tokens", "model")}
    slim["traits"] = {
        t: {"layers": {ly: {"scores": e["scores"], "mode": e["mode"],
                            **{k: e[k] for k in ("vector", "baseline") if k in e}} for ly, e in d["layers"].items()}}
        for t, d in record["traits"].items()
    }
    return slim


def response_scores(record: dict[str, Any], trait: str, layer: int | str, mode: str = "scores") -> Tensor:
    """The response part of one trait x layer trajectory of a record (selected mode unless ``mode`` given)."""
    entry = record["traits"][trait]["layers"][str(layer)]
    return torch.tensor([math.nan if x is None else x for x in entry[mode]], dtype=torch.float64)[
        record["n_prompt_tokens"] :
    ]


def summary_rows(records: Sequence[dict[str, Any]]) -> dict[str, list]:
    cols: dict[str, list] = {
        k: [] for k in ("prompt_id", "trait", "layer", "mode", "mean", "max", "min", "n_tokens")
    }
    for rec in records:
        for trait, d in rec["traits"].items():
            for layer, e in d["layers"].items():
                r = response_scores(rec, trait, layer)
                r = r[~torch.isnan(r)]
                vals = (float(r.mean()), float(r.max()), float(r.min())) if r.numel() else (None, None, None)
                for k, v in zip(
                    ("prompt_id", "trait", "layer", "mode", "mean", "max", "min", "n_tokens"),
                    (rec["prompt_id"], trait, int(layer), e["mode"], *vals, int(r.numel())),
                    strict=True,
                ):
                    cols[k].append(v)
    return cols


def mean_scores(records: Sequence[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """Mean response score per (trait, layer) over every response token of every prompt."""
    acc: dict[tuple[str, int], list[Tensor]] = {}
    for rec in records:
        for trait, d in rec["traits"].items():
            for layer in d["layers"]:
                acc.setdefault((trait, int(layer)), []).append(response_scores(rec, trait, layer))
    out = {}
    for key, parts in acc.items():
        allv = torch.cat(parts)
        allv = allv[~torch.isnan(allv)]
        out[key] = float(allv.mean()) if allv.numel() else float("nan")
    return out


def series_by_label(records: Sequence[dict[str, Any]]) -> dict[str, list[Tensor]]:
    """{"trait Llayer": [response scores of each record]} over labels every record has."""
    labels: dict[str, tuple[str, str]] = {}
    for r in records:
        for t, d in r["traits"].items():
            for ly in d["layers"]:
                labels.setdefault(f"{t} L{ly}", (t, ly))
    return {
        lab: [response_scores(r, t, ly) for r in records]
        for lab, (t, ly) in labels.items()
        if all(t in r["traits"] and ly in r["traits"][t]["layers"] for r in records)
    }


def span_row(records: Sequence[dict[str, Any]], sp: Any, label: dict[str, Any], rank: int, largest: bool,
             unit: str) -> dict[str, Any]:
    """The table row of one ranked span (a core.analysis.Span into ``records[sp.seq]``'s response tokens)."""
    rec = records[sp.seq]
    start = rec["n_prompt_tokens"]
    return {**label, "unit": unit, "direction": "top" if largest else "bottom", "rank": rank,
            "source": rec.get("source"), "prompt_id": rec["prompt_id"], "start": sp.start, "stop": sp.stop,
            "mean": sp.mean, "text": "".join(rec["tokens"][start + sp.start : start + sp.stop])}


def span_rows(
    records: Sequence[dict[str, Any]],
    seqs: list[Tensor],
    label: dict[str, Any],
    window: int,
    k: int,
    largest: bool,
) -> list[dict[str, Any]]:
    """Rows of the k top (or bottom) windows of ``seqs`` (response scores or deltas, one per record)."""
    spans = top_spans([s.nan_to_num(0.0) for s in seqs], window, k, largest=largest)
    return [span_row(records, sp, label, rank, largest, "window") for rank, sp in enumerate(spans)]


def response_means(records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """{"trait Llayer": [mean response-token score of each record]} (NaN for a record with no scored token)."""
    out = {}
    for lab, seqs in series_by_label(records).items():
        vals = []
        for s in seqs:
            s = s[~torch.isnan(s)]
            vals.append(float(s.mean()) if s.numel() else math.nan)
        out[lab] = vals
    return out



def split_label(label: str) -> tuple[str, int]:
    """"starter/optimism L12" -> ("starter/optimism", 12): the labels series_by_label uses."""
    trait, layer = label.rsplit(" L", 1)
    return trait, int(layer)
