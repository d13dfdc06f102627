"""Top spans of scored records read per clause, and summaries of records that come from several sources.

A record's ``source`` is the prompt set (or responses file) it was scored from, so spans found over several
sets in one analysis say which set each came from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from traitlab.core.analysis import rank_segments
from traitlab.core.clauses import clause_spans
from traitlab.monitor.records import series_by_label, span_row, span_rows, split_label


def response_clauses(record: dict[str, Any]) -> list[tuple[int, int]]:
    """Clause offsets into the record's response tokens."""
    return clause_spans(record["tokens"][record["n_prompt_tokens"] :])


def clause_rows(
    records: Sequence[dict[str, Any]],
    seqs: list[Tensor],
    label: dict[str, Any],
    k: int,
    largest: bool,
    min_tokens: int,
    clauses: Sequence[list[tuple[int, int]]] | None = None,
) -> list[dict[str, Any]]:
    """Rows of the k clauses (of at least ``min_tokens`` scored tokens) with the highest (or lowest) mean score;
    ``seqs`` are the records' response scores, ``clauses`` their clause offsets (default: split now)."""
    clauses = clauses if clauses is not None else [response_clauses(r) for r in records]
    ranked = rank_segments(seqs, clauses, k, largest=largest, min_tokens=min_tokens)
    return [span_row(records, sp, label, rank, largest, "clause") for rank, sp in enumerate(ranked)]


def spans_markdown(rows: Sequence[dict[str, Any]]) -> str:
    md = ["| trait | layer | unit | dir | rank | source | prompt | mean | text |", "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['trait']} | {r['layer']} | {r.get('unit', 'window')} | {r['direction']} | {r['rank']} | "
           f"{r.get('source')} | {r['prompt_id']} | {r['mean']:+.4f} | {r['text']!r} |" for r in rows]
    return "\n".join(md) + "\n"


def source_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per source and trait x layer: mean response score over its scored tokens, with the records and tokens."""
    rows = []
    for lab, seqs in series_by_label(records).items():
        trait, layer = split_label(lab)
        by_source: dict[str, list[Tensor]] = {}
        for rec, s in zip(records, seqs, strict=True):
            by_source.setdefault(str(rec.get("source")), []).append(s[~torch.isnan(s)])
        for source, parts in by_source.items():
            allv = torch.cat(parts) if parts else torch.empty(0)
            rows.append({"source": source, "trait": trait, "layer": int(layer),
                         "mean": float(allv.mean()) if allv.numel() else math.nan,
                         "n_responses": len(parts), "n_tokens": int(allv.numel())})
    return rows


def ranked_spans(records: Sequence[dict[str, Any]], *, unit: str, window: int, top_n: int,
                 min_tokens: int) -> dict[str, list[dict[str, Any]]]:
    """Per "trait Llayer" series: the top_n top and bottom spans (``unit`` window or clause) over all records."""
    clauses = [response_clauses(r) for r in records] if unit == "clause" else None
    out = {}
    for lab, seqs in series_by_label(records).items():
        trait, layer = split_label(lab)
        label = {"trait": trait, "layer": layer}
        rows: list[dict[str, Any]] = []
        for largest in (True, False):
            if clauses is not None:
                rows += clause_rows(records, seqs, label, top_n, largest, min_tokens, clauses)
            else:
                rows += span_rows(records, seqs, label, window, top_n, largest)
        out[lab] = rows
    return out
