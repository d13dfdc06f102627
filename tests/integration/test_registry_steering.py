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


def test_fallback_ranks_cross_validated_effect_size_first(mlflow_store):
    """Without a trusted steering result, the cross-validated effect size decides, not a best-of-layers pick on
    the small OOD or val split: here val and OOD peak at layer 3 (a lucky split), cv at layer 14."""
    client, exp_id = ensure_store(mlflow_store, "reg")
    per_layer = {3: {"val_effect_size": 4.0, "ood_effect_size": 3.5, "cv_effect_size": 0.8},
                 14: {"val_effect_size": 2.0, "ood_effect_size": 1.5, "cv_effect_size": 2.6},
                 20: {"val_effect_size": 1.0, "ood_effect_size": 1.0}}   # no cv logged here: not ranked on cv
    _run(client, exp_id, 1000, {"traitlab.stage": "extract", "layers": "3,14,20"},
         {lyr: {f"layer/{k}": v for k, v in m.items()} for lyr, m in per_layer.items()})
    ref = best_vector(TRAIT, MODEL, experiment="reg")
    assert (ref.layer, ref.source, ref.score) == (14, "cv_effect_size", 2.6)
    assert ref.reason.startswith("cv_effect_size 2.6 at layer 14")


def test_last_resort_is_a_stated_rule_not_the_first_vector(mlflow_store):
    """No effect size at any layer (e.g. an extraction without a val split): the middle one of the extracted
    layers of the newest run, said so in the reason; never layer 0 just because it is listed first."""
    client, exp_id = ensure_store(mlflow_store, "reg")
    _run(client, exp_id, 1000, {"traitlab.stage": "extract", "layers": "0,4,8,12,16,20,24"},
         {lyr: {"layer/baseline": 0.0} for lyr in (0, 4, 8, 12, 16, 20, 24)})
    ref = best_vector(TRAIT, MODEL, experiment="reg")
    assert (ref.layer, ref.source) == (12, "middle_layer")
    assert "no effect size logged at any layer" in ref.reason and "middle of layers 0-24" in ref.reason
