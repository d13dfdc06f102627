"""The data of a run's single-page index (viz.token_index): every prompt with its scores, one colour scale per
trait x layer shared by all prompts, each vector's provenance, and the top tokens and spans across prompts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from traitlab.core.analysis import top_spans

SCALE_QUANTILE = 0.98  # colour scale = this quantile of |score|: one outlier token cannot wash out the rest
SPAN_TOKENS = 4  # tokens per span in the top-span tables
TOP_K = 8


def label_key(trait: str, layer: str | int) -> str:
    return f"{trait} L{layer}"


def _labels(records: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    seen = {(t, ly) for r in records for t, d in r["traits"].items() for ly in d["layers"]}
    return sorted(seen, key=lambda tl: (tl[0], int(tl[1]) if tl[1].lstrip("-").isdigit() else 0, tl[1]))


def shared_scale(seqs: Sequence[torch.Tensor]) -> tuple[float, int]:
    """(scale, n): the SCALE_QUANTILE of |score| over every finite response score of every prompt, and n."""
    vals = torch.cat([s[torch.isfinite(s)] for s in seqs]) if seqs else torch.zeros(0)
    if vals.numel() == 0:
        return 0.0, 0
    return float(torch.quantile(vals.abs().double(), SCALE_QUANTILE)), int(vals.numel())


def _full(record: dict[str, Any], trait: str, layer: str) -> list[float | None]:
    """One score per token (a response-only list gets None for the prompt tokens)."""
    scores = record["traits"][trait]["layers"][layer]["scores"]
    return [None] * (len(record["tokens"]) - len(scores)) + list(scores)


def _response(record: dict[str, Any], trait: str, layer: str) -> torch.Tensor:
    """The response tokens' scores, NaN where a token has none."""
    full = _full(record, trait, layer)[record["n_prompt_tokens"]:]
    return torch.tensor([math.nan if x is None else float(x) for x in full], dtype=torch.float64)


def _hits(records: Sequence[dict[str, Any]], owners: list[int], seqs: list[torch.Tensor], window: int,
          largest: bool) -> list[dict[str, Any]]:
    """Top (or bottom) spans of `window` response tokens; token indices are positions in the whole record."""
    out = []
    for sp in top_spans([s.nan_to_num(0.0) for s in seqs], window, TOP_K, largest=largest):
        p = owners[sp.seq]
        start = records[p]["n_prompt_tokens"] + sp.start
        stop = records[p]["n_prompt_tokens"] + sp.stop
        out.append({"prompt": p, "start": start, "stop": stop, "text": "".join(records[p]["tokens"][start:stop]),
                    "mean": sp.mean})
    return out


def index_data(records: Sequence[dict[str, Any]], *, title: str) -> dict[str, Any]:
    """What viz.token_index.render_run_index draws for these records (see its module doc)."""
    labels = []
    for trait, layer in _labels(records):
        owners = [i for i, r in enumerate(records) if layer in r["traits"].get(trait, {}).get("layers", {})]
        seqs = [_response(records[i], trait, layer) for i in owners]
        scale, n = shared_scale(seqs)
        entry = records[owners[0]]["traits"][trait]["layers"][layer]
        labels.append({
            "key": label_key(trait, layer), "trait": trait, "layer": layer, "scale": scale, "n_tokens": n,
            "vector": entry.get("vector"), "baseline": entry.get("baseline"),
            "top_tokens": _hits(records, owners, seqs, 1, True), "bottom_tokens": _hits(records, owners, seqs, 1, False),
            "top_spans": _hits(records, owners, seqs, SPAN_TOKENS, True),
            "bottom_spans": _hits(records, owners, seqs, SPAN_TOKENS, False),
        })
    prompts = []
    for r in records:
        scores, means = {}, {}
        for trait, d in r["traits"].items():
            for layer in d["layers"]:
                key = label_key(trait, layer)
                scores[key] = _full(r, trait, layer)
                resp = _response(r, trait, layer)
                resp = resp[torch.isfinite(resp)]
                means[key] = float(resp.mean()) if resp.numel() else None
        prompts.append({"id": r["prompt_id"], "prompt": r["prompt"], "response": r.get("response", ""),
                        "tokens": r["tokens"], "n_prompt_tokens": r["n_prompt_tokens"], "scores": scores,
                        "means": means})
    first = records[0] if records else {}
    return {"title": title, "model": first.get("model", ""), "score_mode": first.get("score_mode", ""),
            "centered": bool(first.get("centered", False)), "labels": labels, "prompts": prompts}


def page_scales(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{trait: {layer: shared scale}} of an index_data, for the per-prompt pages (the same colours)."""
    out: dict[str, dict[str, float]] = {}
    for lab in data["labels"]:
        out.setdefault(lab["trait"], {})[lab["layer"]] = lab["scale"] if math.isfinite(lab["scale"]) else 0.0
    return out
