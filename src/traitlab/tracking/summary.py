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
    for (trait, component, position, metric), values in groups.items():
        from traitlab.tracking.artifacts import slug

        fig = layer_method_heatmap(values, metric)
        fig.suptitle(f"{trait} · {component} · {position}", fontsize=8)
        name = f"figures/{slug(trait)}/{component}/{slug(position)}/{metric}_layer_x_method.png"
        client.log_figure(parent_run_id, fig, name)
        import matplotlib.pyplot as plt

        plt.close(fig)
