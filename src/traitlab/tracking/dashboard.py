"""Where the MLflow UI lands and what its run table shows, for every experiment traitlab writes to.

MLflow 3.17's UI opens an experiment in its GenAI layout (traces, sessions) unless the URL carries
`workflowType=machine_learning` or the browser remembers the sidebar's "Model training" toggle; the
experiment tag `mlflow.experimentKind` is not consulted while that toggle exists (it is set anyway, for
builds without it). The run table's columns cannot be preset for a first visit, but a saved view can:
an experiment tag `mlflow.sharedViewState.<id>` holding the columns, their order and widths, opened by
the URL parameter `viewStateShareKey=<id>`. `run_table_url` combines both.

    python -m traitlab.tracking.dashboard [--uri URI] [--base http://127.0.0.1:5000]

prepares every experiment of a store (view, kind, description) and prints its run-table URL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from traitlab.tracking.notes import set_experiment_note

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_KIND = "custom_model_development"
VIEW_ID = "traitlab"
VIEW_PREFIX = "mlflow.sharedViewState."
VIEW_NAME = "traitlab: verdicts"

# The run table's columns, in order, with widths in pixels: who/what, the verdict (its first line carries the
# headline numbers with their intervals and n), the numbers at the best layer, the sample sizes, the data.
# A column no run has is left out by the UI.
VIEW_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("tags", "trait", 130),
    ("tags", "method", 90),
    ("attributes", "Description", 420),
    ("metrics", "best/layer", 80),
    ("metrics", "best/cv_effect_size", 140),
    ("metrics", "best/val_accuracy", 120),
    ("metrics", "best/ood_accuracy", 120),
    ("metrics", "best/ood_effect_size", 140),
    ("metrics", "best/cv_accuracy", 120),
    ("metrics", "best/objective_delta", 130),      # steer runs: the searched delta at the chosen coefficient,
    ("metrics", "best/objective_delta_lo", 120),   # its 95% lower bound,
    ("metrics", "best/capability_delta", 130),     # and the capability change there
    ("metrics", "n_train_pos", 100),
    ("metrics", "n_val_pos", 90),
    ("metrics", "n_ood_pos", 90),
    ("tags", "component", 100),
    ("tags", "model_name", 130),
    ("attributes", "Dataset", 200),
)
# Saved views: {id: (name, sort)}. The first lists runs by time, each sweep's children folded under its parent
# (whose row names the winner); the second ranks every run on the cross-validated effect size, flat.
VIEWS: dict[str, tuple[str, dict[str, Any]]] = {
    VIEW_ID: (VIEW_NAME, {}),
    f"{VIEW_ID}-ranked": ("traitlab: ranked by effect size",
                          {"orderByKey": "metrics.`best/cv_effect_size`", "orderByAsc": False}),
}


def column_key(kind: str, name: str) -> str:
    """The UI's canonical column id: metrics.`best/layer`, tags.`trait`, attributes.`Dataset`."""
    return f"{kind}.`{name}`"


def view_state(view_id: str = VIEW_ID) -> dict[str, Any]:
    keys = [column_key(kind, name) for kind, name, _ in VIEW_COLUMNS]
    return {"selectedColumns": keys, "columnOrder": keys,
            "columnWidths": {column_key(kind, name): width for kind, name, width in VIEW_COLUMNS},
            **VIEWS[view_id][1]}


def _view_tag_value(view_id: str, created_ms: int) -> str:
    return json.dumps({"name": VIEWS[view_id][0], "createdAt": created_ms, "updatedAt": created_ms,
                       "state": json.dumps(view_state(view_id), sort_keys=True)})


def _view_is_current(view_id: str, value: str | None) -> bool:
    try:
        old = json.loads(value or "")
        return old.get("name") == VIEWS[view_id][0] and json.loads(old.get("state", "")) == view_state(view_id)
    except (ValueError, TypeError, AttributeError):
        return False


def experiment_description(name: str) -> str:
    return (f"**{name}**: traitlab runs (extract → steer → use), one row per job.\n\n"
            "- Description column: each run's verdict with its sample sizes; a sweep's parent row names the "
            "winner and holds the best of each child (`best/<child>/<metric>`).\n"
            "- `best/<metric>`: the metric at the run's best layer (`best/layer`), with `_lo`/`_hi` its 95% "
            "interval; `layer/<metric>`: the per-layer series (step = layer, Model metrics tab); `n_*`: "
            "sample sizes.\n"
            f"- Figures and tables are under each run's Artifacts; the Views menu restores these columns "
            f"(\"{VIEW_NAME}\") or ranks every run on `best/cv_effect_size` (\"{VIEWS[VIEW_ID + '-ranked'][0]}\").")


def prepare_experiment(client: Any, experiment_id: str) -> None:
    """Give an experiment the classic-view kind, the run-table view and a description; writes only what is
    missing or out of date, and never replaces a description a person wrote."""
    exp = client.get_experiment(experiment_id)
    tags = exp.tags
    if tags.get(EXPERIMENT_KIND_TAG) != CLASSIC_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_KIND)
    for i, view_id in enumerate(VIEWS):
        if not _view_is_current(view_id, tags.get(VIEW_PREFIX + view_id)):  # the menu lists newest first
            created = int(time.time() * 1000) + len(VIEWS) - i
            client.set_experiment_tag(experiment_id, VIEW_PREFIX + view_id, _view_tag_value(view_id, created))
    set_experiment_note(client, experiment_id, experiment_description(exp.name))


def run_table_url(base_url: str, experiment_id: str, view_id: str = VIEW_ID) -> str:
    """The URL that opens an experiment on the classic run table with one of traitlab's saved views."""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={view_id}")


def prepare_store(uri: str) -> list[tuple[str, str]]:
    """Prepare every active experiment of a store that has runs; [(name, id)] newest first."""
    from traitlab.tracking.store import RetryingClient

    client = RetryingClient(uri)
    exps = [e for e in client.search_experiments(order_by=["creation_time DESC"])
            if e.lifecycle_stage == "active" and (e.name != "Default" or client.search_runs([e.experiment_id],
                                                                                          max_results=1))]
    for e in exps:
        prepare_experiment(client, e.experiment_id)
    return [(e.name, e.experiment_id) for e in exps]


def main(argv: list[str] | None = None) -> int:
    from traitlab.tracking.store import tracking_uri

    parser = argparse.ArgumentParser(prog="python -m traitlab.tracking.dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI, else mlruns/)")
    parser.add_argument("--base", default="http://127.0.0.1:5000", help="where the UI will listen")
    args = parser.parse_args(argv)
    uri = tracking_uri(args.uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        print(f"No MLflow store at {uri} yet (run `make demo` or a launcher first). UI: {args.base}")
        return 0
    experiments = prepare_store(uri)
    print("Open an experiment's run table (classic view, traitlab's columns; the Views menu has the rest):")
    for name, exp_id in experiments:
        print(f"  {name}: {run_table_url(args.base, exp_id)}")
        print(f"  {' ' * len(name)}  ranked: {run_table_url(args.base, exp_id, VIEW_ID + '-ranked')}")
    if not experiments:
        print(f"  (no runs yet) {args.base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
