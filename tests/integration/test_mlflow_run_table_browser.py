"""The run table a researcher lands on, rendered by a REAL `mlflow server` in headless Chromium.

The URL `make ui` prints must open MLflow 3.17 on the classic run table (not its GenAI overview) with
traitlab's columns, and the cells must hold each run's `best/...` numbers and verdict. The run table is
part of the UI's own document (no iframe), so `chromium --dump-dom` shows it; ag-grid only renders the
columns in view, hence the wide window.
"""

from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient

from browser import dump_dom, grid_rows, mlflow_server, require_chromium
from traitlab.tracking.dashboard import VIEW_ID, run_table_url

pytestmark = pytest.mark.slow

WIDE = ("--window-size=2600,1200",)


def _metric_cell(text: str) -> float:
    return float(text.replace(",", ""))


def _title(dom: str) -> str:
    m = re.search(r"<h2[^>]*>(.*?)</h2>", dom, re.S)
    return re.sub(r"<[^>]+>", "", m.group(1)).strip() if m else ""


def test_make_ui_url_lands_on_the_run_table_with_best_metrics_and_verdicts(extract_sweep, tmp_path):
    chromium = require_chromium()
    client = MlflowClient(extract_sweep.uri)
    runs = {r: client.get_run(r) for r in (extract_sweep.parent_run_id, *extract_sweep.child_run_ids)}
    with mlflow_server(extract_sweep.uri, tmp_path) as base:
        # ranked view: every run flat, sorted on best/cv_effect_size
        ranked = dump_dom(run_table_url(base, extract_sweep.experiment_id, f"{VIEW_ID}-ranked"), budget_ms=30000,
                          binary=chromium, extra_flags=WIDE)
        # default view: by time, the sweep's children folded under the parent that names the winner
        folded = dump_dom(run_table_url(base, extract_sweep.experiment_id), budget_ms=30000, binary=chromium,
                          extra_flags=WIDE)
    for dom in (ranked, folded):
        assert _title(dom) == "Runs", _title(dom)  # the classic run table, not the GenAI overview
        assert "Detect Issues" not in dom
    rows = grid_rows(ranked)
    assert set(runs) <= set(rows)  # other tests sharing the sweep's store may add runs of their own
    for run_id, run in runs.items():
        cells, m = rows[run_id], run.data.metrics
        for name in ("best/layer", "best/cv_effect_size", "best/val_accuracy", "best/ood_accuracy"):
            assert _metric_cell(cells[f"metrics.`{name}`"]) == pytest.approx(m[name], abs=1e-4), (run_id, name)
        assert cells["tags.`method`"] == run.data.tags["method"]
        note_head = run.data.tags["mlflow.note.content"].splitlines()[0]
        assert cells["attributes.`Description`"].rstrip(".…") in note_head  # the cell shows the verdict's start
    # ranked on the cross-validated effect size, highest first
    order = [r for r in rows if r in runs]
    scores = [runs[r].data.metrics["best/cv_effect_size"] for r in order]
    assert scores == sorted(scores, reverse=True)
    # folded: the sweep shows as its parent's row alone (children folded under it), with the winner's numbers and
    # name; runs of other tests sharing the store (an inference run) may sit beside it
    top = grid_rows(folded)
    assert extract_sweep.parent_run_id in top and not set(extract_sweep.child_run_ids) & set(top)
    parent = top[extract_sweep.parent_run_id]
    assert parent["attributes.`Description`"].startswith(f"winner {runs[extract_sweep.parent_run_id].data.tags['method']} L")
