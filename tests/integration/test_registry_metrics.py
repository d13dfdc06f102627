"""find_vectors reads stage 1's `layer/<metric>` series from a real MLflow store (and runs logged before them)."""

from __future__ import annotations

import math

from traitlab.tracking.registry import find_vectors
from traitlab.tracking.store import ensure_store

TAGS = {"traitlab.stage": "extract", "trait": "cat/t", "model": "m@rev:main", "component": "residual",
        "position": "response[:]", "layers": "10,12"}


def _run(client, exp_id, method: str, metrics: dict[str, dict[int, float]]) -> str:
    run = client.create_run(exp_id, tags={**TAGS, "method": method})
    for name, per in metrics.items():
        for step, value in per.items():
            client.log_metric(run.info.run_id, name, value, step=step)
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


def test_find_vectors_reads_layer_metrics_and_leaves_undefined_ones_out(mlflow_store):
    client, exp_id = ensure_store(mlflow_store, "reg")
    _run(client, exp_id, "mean_diff", {"layer/val_effect_size": {10: 1.25, 12: math.nan},
                                       "layer/cv_effect_size": {10: 2.5, 12: 3.0},
                                       "layer/baseline": {10: -0.5, 12: 0.75}})
    _run(client, exp_id, "probe", {"val_effect_size": {10: 0.5, 12: 0.25}})  # logged before the rename
    refs = {(r.method, r.layer): r.metrics for r in find_vectors("cat/t", "m@rev:main", experiment="reg", uri=mlflow_store)}
    assert refs[("mean_diff", 10)] == {"val_effect_size": 1.25, "cv_effect_size": 2.5, "baseline": -0.5}
    assert refs[("mean_diff", 12)] == {"cv_effect_size": 3.0, "baseline": 0.75}  # NaN: absent, never ranked
    assert refs[("probe", 12)] == {"val_effect_size": 0.25}
