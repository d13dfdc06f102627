"""What a multirun's parent run shows: the layer x method heatmaps built from its children's metrics."""

from __future__ import annotations

import logging
from collections import defaultdict

from traitlab.tracking.names import layer_metric
from traitlab.tracking.store import RetryingClient

log = logging.getLogger(__name__)

# Per-layer extraction metrics (logged as `layer/<name>`, step = layer) shown as layer x method heatmaps.
HEATMAP_METRICS = ("val_accuracy", "val_effect_size", "ood_effect_size", "cv_accuracy", "cv_effect_size")


def summarize_sweep(client: RetryingClient, experiment_id: str, parent_run_id: str) -> None:
    """Log, on the parent run, one layer x method heatmap per (trait, component, position) and metric."""
    from traitlab.viz.figures import layer_method_heatmap

    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  max_results=1000)
    reused = client.search_runs([experiment_id], filter_string=f"tags.`traitlab.sweep.{parent_run_id}` = '1'",
                                max_results=1000)
    children = children + reused
    groups: dict[tuple[str, str, str, str], dict[tuple[str, int], float]] = defaultdict(dict)
    for child in children:
        tags = child.data.tags
        if tags.get("traitlab.stage") != "extract":
            continue
        for metric in HEATMAP_METRICS:
            for m in client.get_metric_history(child.info.run_id, layer_metric(metric)):
                key = (tags.get("trait", "?"), tags.get("component", "?"), tags.get("position", "?"), metric)
                groups[key][(tags.get("method", "?"), int(m.step))] = float(m.value)
    client.set_tag(parent_run_id, "traitlab.children", str(len(children)))
    _generate_sweep_table(client, parent_run_id, [c for c in children if c.data.tags.get("traitlab.stage") == "generate"])
    for (trait, component, position, metric), values in groups.items():
        from traitlab.tracking.artifacts import slug

        fig = layer_method_heatmap(values, metric)
        fig.suptitle(f"{trait} · {component} · {position}", fontsize=8)
        name = f"figures/{slug(trait)}/{component}/{slug(position)}/{metric}_layer_x_method.png"
        client.log_figure(parent_run_id, fig, name)
        import matplotlib.pyplot as plt

        plt.close(fig)


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
