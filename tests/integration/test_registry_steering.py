"""best_vector's rule on a real MLflow store, with runs logged the way the extract and steer stages log them:
steering results rank only within one comparison (objective, judge, threshold) and must exclude zero."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from traitlab.models.identity import registry_key
from traitlab.tracking.registry import best_vector, steering_results
from traitlab.tracking.store import ensure_store

TRAIT, MODEL = "starter/optimism", "smollm2_135m"
KIND = {"trait": TRAIT, "model": registry_key(MODEL), "method": "mean_diff", "component": "residual", "position": "response[:]"}


def _run(client, exp_id, start: int, tags: dict, per_layer: dict[int, dict[str, float]]) -> str:
    run = client.create_run(exp_id, start_time=start, tags={**KIND, **tags})
    for layer, metrics in per_layer.items():
        for k, v in metrics.items():
            client.log_metric(run.info.run_id, k, v, step=layer)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _steer(client, exp_id, start, vector_run, comparison, threshold, layer, delta, low, high) -> str:
    return _run(client, exp_id, start, {"traitlab.stage": "steer", "traitlab.objective": "propensity",
                                        "traitlab.comparison": comparison, "traitlab.threshold": str(threshold),
                                        "traitlab.vector_runs": f"{layer}:{vector_run}"},
                {layer: {"layer/objective_delta": delta, "layer/objective_delta_lo": low,
                         "layer/objective_delta_hi": high}})


@pytest.fixture
def registry(mlflow_store):
    client, exp_id = ensure_store(mlflow_store, "reg")
    effect = {10: 1.0, 12: 2.0, 14: 3.0}
    vec = _run(client, exp_id, 1000, {"traitlab.stage": "extract", "layers": "10,12,14"},
               {lyr: {"val_effect_size": v, "ood_effect_size": v, "layer/val_effect_size": v,
                      "layer/ood_effect_size": v} for lyr, v in effect.items()})
    return MlflowClient(mlflow_store), exp_id, vec


def test_results_rank_only_within_one_comparison(registry):
    client, exp_id, vec = registry
    # an older search with threshold 0 (anything counts as coherent) reports a large delta at layer 12 ...
    _steer(client, exp_id, 2000, vec, "loose", 0, 12, 5.0, 4.0, 6.0)
    # ... the newest, with the real threshold, a smaller one at layer 10: raw deltas are not comparable
    _steer(client, exp_id, 3000, vec, "strict", 90, 10, 0.5, 0.2, 0.8)
    ref = best_vector(TRAIT, MODEL, experiment="reg")
    assert (ref.layer, ref.source, ref.score) == (10, "steering_delta", 0.5)
    assert "threshold 90" in ref.reason
    # a named comparison picks within that one
    assert best_vector(TRAIT, MODEL, experiment="reg", comparison="loose").layer == 12
    assert {r["comparison"] for r in steering_results(TRAIT, MODEL, experiment="reg")} == {"loose", "strict"}


def test_a_result_whose_interval_includes_zero_is_not_trusted(registry):
    client, exp_id, vec = registry
    _steer(client, exp_id, 2000, vec, "c", 90, 10, 0.3, -0.1, 0.7)
    ref = best_vector(TRAIT, MODEL, experiment="reg")
    assert (ref.layer, ref.source) == (14, "ood_effect_size")   # falls back, and says why
    assert "1 steering result(s) for these vectors, none with a 95% interval above zero" in ref.reason
