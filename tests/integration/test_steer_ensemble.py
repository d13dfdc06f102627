"""mode=ensemble on the real SmolLM2 and a real MLflow store: CMA-ES searches one weight per layer, every trial is
measured (objective with its interval), the weights are logged, and the logged ensemble vector, applied as the
use stage applies a SteeringVector, reproduces the best trial's propensity."""

from __future__ import annotations

import json
import os

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.config.steer import EnsembleConfig, PropensityConfig, SteerConfig, SteeringConfig
from traitlab.models.propensity import propensity
from traitlab.pipelines.extract import run_extract
from traitlab.pipelines.steer import run_steer
from traitlab.steering.measures import heldout_examples, heldout_pairs
from traitlab.steering_vector import SteeringVector
from traitlab.tracking.registry import fetch_vector, find_vectors

pytestmark = pytest.mark.slow
TRAIT = "starter/optimism"


@pytest.fixture(scope="module")
def ensembled(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("steer_ensemble")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
        mp.setenv("TRAITLAB_OUTPUTS", str(root / "outputs"))
        run_extract(ExtractConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"), layers="8,10",
                                  tracking=TrackingConfig(experiment="ens")), lm=smollm2)
        s = SteeringConfig(n_questions=2, max_new_tokens=8, propensity=PropensityConfig(max_pairs=4),
                           ensemble=EnsembleConfig(trials=5, popsize=4))
        res = run_steer(SteerConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"), layers="8,10",
                                    mode="ensemble", steering=s, tracking=TrackingConfig(experiment="ens")), lm=smollm2)
        yield res, root


def test_ensemble_weights_are_searched_logged_and_the_vector_reproduces_the_best_trial(ensembled, smollm2, tmp_path):
    res, root = ensembled
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(res.run_id)
    m = run.data.metrics
    assert run.data.tags["traitlab.steer_mode"] == "ensemble"
    assert m["n_trials"] == 5 and m["n_members"] == 2
    client.download_artifacts(res.run_id, "ensemble", str(tmp_path))
    weights = json.loads((tmp_path / "ensemble" / "weights.json").read_text())
    trials = weights["trials"]
    assert trials[0]["weights"] == [pytest.approx(0.15)] * 2         # the enqueued start: start_mult / 2 members
    assert len({tuple(t["weights"]) for t in trials}) == 5          # then CMA-ES's own weights, all different
    assert all(t["objective"]["n"] == 4 for t in trials)             # every trial measured on the 4 held-out pairs
    study = optuna.load_study(study_name=weights["study"], storage=f"sqlite:///{_storage(root)}")
    assert all(any(k.startswith("cma:") for k in t.system_attrs) for t in study.trials[1:])  # CMA-ES chose them
    assert m["n_feasible"] >= 1, "no coherent trial: the test cannot check the vector"
    best = weights["best"]
    assert m["best/objective_delta"] == pytest.approx(best["objective"]["delta"])
    assert m["best/objective_delta_lo"] <= m["best/objective_delta"] <= m["best/objective_delta_hi"]
    assert m["best/n_pairs"] == 4
    assert run.data.tags["mlflow.note.content"].startswith("Best ensemble (trial ")
    w = {x["layer"]: x for x in weights["members"]}
    hist = {mm.step: mm.value for mm in client.get_metric_history(res.run_id, "layer/ensemble_weight")}
    assert hist == {8: pytest.approx(w[8]["weight"], abs=1e-4), 10: pytest.approx(w[10]["weight"], abs=1e-4)}

    # the logged vector = sum of weight x base x vector per layer, with the extraction's own vectors
    sv = SteeringVector.load(tmp_path / "ensemble" / "vector.safetensors")
    assert sv.layers == [8, 10] and sv.best_coefficients == {8: 1.0, 10: 1.0} and sv.trait == TRAIT
    refs = {r.layer: r for r in find_vectors(TRAIT, "smollm2_135m", method="mean_diff", experiment="ens")}
    for layer in (8, 10):
        v = fetch_vector(refs[layer], experiment="ens").float()
        torch.testing.assert_close(sv[layer], w[layer]["weight"] * w[layer]["base"] * v, rtol=1e-5, atol=1e-6)

    # applied as a plain multi-layer steering, the vector gives the best trial's propensity delta
    pairs = heldout_pairs(smollm2, heldout_examples(_trait(), 0.1, 42, max_pairs=4), 42)
    margins = propensity(smollm2, pairs, [None, [(layer, sv[layer], 1.0) for layer in sv.layers]],
                         max_response_tokens=32)
    delta = float((margins[1] - margins[0]).mean())
    assert delta == pytest.approx(best["objective"]["delta"], abs=1e-3)
    assert abs(delta) > 1e-3  # the ensemble moved the margins


def _trait():
    from traitlab.data import load_trait, resolve_trait_dir

    return load_trait(resolve_trait_dir(TRAIT))


def _storage(root):
    return next((root / "outputs" / "studies").rglob("optimism.db"))
