"""What a multirun's parent run shows, built from its children (see extract_summary for extraction sweeps)."""

from __future__ import annotations

import logging
from collections import defaultdict

from traitlab.tracking.extract_summary import summarize_extraction
from traitlab.tracking.store import RetryingClient

log = logging.getLogger(__name__)


def summarize_sweep(client: RetryingClient, experiment_id: str, parent_run_id: str) -> None:
    """Log on the parent the comparison of its children (and of earlier runs this sweep reused)."""
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  max_results=1000)
    reused = client.search_runs([experiment_id], filter_string=f"tags.`traitlab.sweep.{parent_run_id}` = '1'",
                                max_results=1000)
    children = children + reused
    client.set_tag(parent_run_id, "traitlab.children", str(len(children)))
    summarize_extraction(client, parent_run_id, children)
    _generate_sweep_table(client, parent_run_id, [c for c in children if c.data.tags.get("traitlab.stage") == "generate"])


def _generate_sweep_table(client: RetryingClient, parent_run_id: str, children: list) -> None:
    """tables/generate_sweep.json: every child's steering (vectors, coefficient, mode) beside each monitored
    trait's shift, interval and n, so a coefficient sweep reads as a dose-response table."""
    import json
    import tempfile
    from pathlib import Path

    rows: dict[str, list] = defaultdict(list)
    for child in sorted(children, key=lambda c: c.info.start_time):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                table = json.loads(Path(client.download_artifacts(child.info.run_id, "tables/shift.json", tmp))
                                   .read_text())
            except Exception:  # noqa: BLE001 - a child that failed before logging has no table
                continue
        params = child.data.params
        for values in table["data"]:
            row = dict(zip(table["columns"], values, strict=True))
            for key, value in (("run_id", child.info.run_id), ("vectors", params.get("vectors")),
                               ("coefficient", params.get("coefficient")), ("mode", params.get("mode")),
                               *((k, row.get(k)) for k in ("trait", "layer", "unsteered", "steered", "shift", "low",
                                                           "high", "n"))):
                rows[key].append(value)
    if rows:
        client.log_table(parent_run_id, data=dict(rows), artifact_file="tables/generate_sweep.json")
