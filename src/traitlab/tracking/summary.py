"""What a multirun's parent run shows, built from its children (see extract_summary for extraction sweeps)."""

from __future__ import annotations

import logging

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
