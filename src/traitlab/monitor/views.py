"""Views of scored records as run artifacts: per prompt JSON + HTML token page + PNGs, the index page, the
summary tables and mean-score metrics, and the massive-dims table; logged to one MLflow run."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from traitlab.core.massive import detect_massive_dims, record_max_abs, record_peak_positions, summarize
from traitlab.errors import ConfigError
from traitlab.io import atomic_write_json, atomic_write_text, read_json
from traitlab.monitor.calibration import calibration_label, max_ratios
from traitlab.monitor.records import mean_scores, summary_rows, view_record
from traitlab.monitor.run_index import index_data, page_scales
from traitlab.tracking.artifacts import (
    FIGURES,
    INDEX_PAGE,
    MASSIVE_ARTIFACT,
    PROJECTIONS,
    TABLES,
    VIEWS,
    slug,
    view_page,
)
from traitlab.tracking.names import layer_metric
from traitlab.tracking.runs import JobRun


def unique_slugs(ids: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for pid in ids:
        s = slug(pid)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.append(s if n == 0 else f"{s}_{n + 1}")
    return out


def _series(record: dict[str, Any], response_only: bool) -> tuple[list[str], dict[str, list[float | None]]]:
    start = record["n_prompt_tokens"] if response_only else 0
    series = {
        f"{t} L{ly}": e["scores"][start:]
        for t, d in record["traits"].items()
        for ly, e in d["layers"].items()
    }
    return record["tokens"][start:], series


def write_views(out: Path, records: Sequence[dict[str, Any]], *, title: str, max_figures: int) -> list[str]:
    """Per prompt: JSON, HTML page, trajectory and heatmap PNGs; plus the index, one page holding every prompt
    (MLflow's sandboxed viewer cannot follow links between artifacts). Returns the per-prompt page paths."""
    from traitlab.viz.figures import trait_token_heatmap, trajectory_figure
    from traitlab.viz.token_index import render_run_index
    from traitlab.viz.token_view import render_token_html

    index = index_data(records, title=title)
    scales = page_scales(index)
    pages = []
    for i, (rec, s) in enumerate(zip(records, unique_slugs([r["prompt_id"] for r in records]), strict=True)):
        atomic_write_json(out / PROJECTIONS / f"{s}.json", rec)
        page = view_page(s)
        atomic_write_text(out / page, render_token_html(view_record(rec), scales))
        pages.append(page)
        if i < max_figures and rec["traits"]:
            response_only = len(rec["tokens"]) > rec["n_prompt_tokens"]
            tokens, series = _series(rec, response_only)
            part = "response tokens" if response_only else "tokens"
            fig = trajectory_figure(tokens, series, f"{rec['prompt_id']}: {rec['score_mode']} score ({part})")
            (out / FIGURES / "trajectories").mkdir(parents=True, exist_ok=True)
            fig.savefig(out / FIGURES / "trajectories" / f"{s}.png", dpi=110)
            fig = trait_token_heatmap(tokens, series)
            fig.suptitle(f"{rec['prompt_id']} ({rec['score_mode']})", fontsize=8)
            (out / FIGURES / "heatmaps").mkdir(parents=True, exist_ok=True)
            fig.savefig(out / FIGURES / "heatmaps" / f"{s}.png", dpi=110)
    atomic_write_text(out / INDEX_PAGE, render_run_index(index))
    return pages


def log_views(
    run: JobRun,
    records: list[dict[str, Any]],
    *,
    title: str,
    max_figures: int,
    calibration: dict[str, Any] | None,
    ratio: float,
) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        pages = write_views(Path(tmp), records, title=title, max_figures=max_figures)
        run.log_artifacts(tmp)
    for (trait, layer), value in sorted(mean_scores(records).items()):
        if math.isfinite(value):
            run.log_metric(f"mean_score/{trait}", value, step=layer)
    run.log_table(summary_rows(records), f"{TABLES}/summary.json")
    run.log_table(
        {
            "prompt_id": [r["prompt_id"] for r in records],
            "prompt": [r["prompt"] for r in records],
            "response": [r["response"] for r in records],
        },
        f"{TABLES}/responses.json",
    )
    if calibration is not None:
        log_calibration(run, calibration, ratio)
    return pages[0] if pages else None


def calibration_rows(calibration: dict[str, Any], ratio: float) -> list[dict[str, Any]]:
    """One row per massive (layer, dim): max |h|, its ratio to the median dim, where its peak token sat in
    its text (when recorded) and which calibration found it."""
    label = calibration_label(calibration)
    rows = summarize(record_max_abs(calibration), ratio, record_peak_positions(calibration))
    return [{**r, "max_abs": round(r["max_abs"], 3), "ratio_to_median": round(r["ratio_to_median"], 2),
             "calibration": label} for r in rows]


def log_calibration(run: JobRun, calibration: dict[str, Any], ratio: float) -> dict[int, list[int]]:
    """The record (massive/calibration.json), its massive dims as tables/massive_dims.json, ``layer/massive_dims``
    and ``layer/max_ratio`` (the largest dim's max |h| over the median dim's; step = layer), the tokens it rests
    on and a ``massive_calibration`` tag (passive | neutral:<set>)."""
    run.log_text(json.dumps(calibration, separators=(",", ":")), MASSIVE_ARTIFACT)
    dims = detect_massive_dims(record_max_abs(calibration), ratio)
    rows = calibration_rows(calibration, ratio)
    if rows:
        run.log_table({k: [r.get(k) for r in rows] for k in rows[0]}, f"{TABLES}/massive_dims.json")
    for layer, d in dims.items():
        run.log_metric(layer_metric("massive_dims"), len(d), step=layer)
    for layer, r in max_ratios(calibration).items():
        if bool(torch.isfinite(r).any()):
            run.log_metric(layer_metric("max_ratio"), round(float(r.nan_to_num(0.0).max()), 2), step=layer)
    # records written before the top-level count existed keep it per layer
    n_tokens = calibration.get("n_tokens", max((e.get("n_tokens", 0) for e in calibration["layers"].values()),
                                               default=0))
    run.log_metric("n_calibration_tokens", int(n_tokens))
    run.set_tag("massive_calibration", calibration_label(calibration))
    return dims


def first_page_of(run: JobRun) -> str | None:
    files = run.client.list_artifacts(run.run_id, f"{VIEWS}/prompts")
    pages = sorted(f.path for f in files if f.path.endswith(".html"))
    return pages[0] if pages else None


def artifact_uri(run: JobRun) -> str:
    return run.client.get_run(run.run_id).info.artifact_uri


def read_run_records(client: Any, run_id: str, *, key: str) -> list[dict[str, Any]]:
    """The per-prompt records (projections/*.json) a scored run logged; ``key`` names the config key in errors."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, PROJECTIONS, tmp)
        except Exception as e:  # noqa: BLE001 - MLflow raises several types for a missing run/path
            raise ConfigError(
                key,
                f"cannot read {PROJECTIONS}/ of run {run_id!r}: "
                f"{str(e).splitlines()[0]}; expected an inference run id",
            ) from None
        records = [read_json(p) for p in sorted(Path(local).glob("*.json"))]
    if not records:
        raise ConfigError(key, f"run {run_id!r} has no {PROJECTIONS}/*.json (not an inference run?)")
    return records


def log_delta_views(
    run: JobRun,
    deltas: Sequence[tuple[dict[str, Any], Any, Any]],
    *,
    variant_a: str,
    variant_b: str,
    score_mode: str,
    max_figures: int,
) -> None:
    """model_diff/<prompt>.json (+ PNG for the first ``max_figures``): per-token deltas of every trait x layer.

    ``deltas`` holds (record of variant a, TraitVector, per-response-token delta tensor) triples.
    """
    from traitlab.viz.figures import trajectory_figure

    per_prompt: dict[str, dict[str, Any]] = {}
    for r, tv, dl in deltas:
        entry = per_prompt.setdefault(
            r["prompt_id"],
            {
                "prompt_id": r["prompt_id"],
                "variant_a": variant_a,
                "variant_b": variant_b,
                "score_mode": score_mode,
                "tokens": r["tokens"][r["n_prompt_tokens"] :],
                "deltas": {},
            },
        )
        entry["deltas"][tv.label] = [None if math.isnan(x) else x for x in dl.tolist()]
    with tempfile.TemporaryDirectory() as tmp:
        for n, (pid, entry) in enumerate(per_prompt.items()):
            atomic_write_json(Path(tmp) / "model_diff" / f"{slug(pid)}.json", entry)
            if n < max_figures and entry["tokens"]:
                fig = trajectory_figure(
                    entry["tokens"], entry["deltas"], f"{pid}: per-token delta ({variant_b} − {variant_a})"
                )
                fig.axes[0].set_ylabel("score delta", fontsize=8)
                fig.savefig(Path(tmp) / "model_diff" / f"{slug(pid)}.png", dpi=110)
        run.log_artifacts(tmp)


def read_scored_records(client: Any, run_ids: Any, wanted: set[str], *, key: str) -> list[dict[str, Any]]:
    """Records of one or several scored runs, keeping the trait x layer series in ``wanted`` ("trait Llayer").

    Each record keeps its run's ``source`` (prompt set) tag; when two runs scored sets of the same name, the
    tag gets the run id's first 8 characters so spans and tables still say where they came from.
    """
    ids = [run_ids] if isinstance(run_ids, str) else [str(r) for r in run_ids]
    per_run = [read_run_records(client, rid, key=key) for rid in ids]
    names = [{r.get("source") for r in recs} for recs in per_run]
    for rid, recs, own in zip(ids, per_run, names, strict=True):
        clash = any(own & other for other in names if other is not own)
        for r in recs:
            r["source_run"] = rid
            if clash:
                r["source"] = f"{r.get('source')}@{rid[:8]}"
    records = [r for recs in per_run for r in recs]
    have = sorted({f"{t} L{ly}" for r in records for t, d in r["traits"].items() for ly in d["layers"]})
    if not wanted & set(have):
        raise ConfigError("layers", f"run(s) {ids} scored {have}; traits/layers select {sorted(wanted)}")
    for r in records:
        r["traits"] = {
            t: {"layers": {ly: e for ly, e in d["layers"].items() if f"{t} L{ly}" in wanted}}
            for t, d in r["traits"].items()
        }
        r["traits"] = {t: d for t, d in r["traits"].items() if d["layers"]}
    return records
