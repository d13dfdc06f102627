"""Several traits in one steering search on the real SmolLM2 and a real MLflow store: each round's candidates of
both traits are generated in one call, and every trait's trials (coefficients, coherence, propensity deltas) are
those of the same search run for that trait alone (greedy, same seed); each trait gets its own run under a
parent."""

from __future__ import annotations

import os

import pytest
from mlflow.tracking import MlflowClient

from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.config.steer import PropensityConfig, SteerConfig, SteeringConfig, StudyConfig
from traitlab.pipelines.extract import run_extract
from traitlab.pipelines.steer import run_steer, run_steer_traits

pytestmark = pytest.mark.slow
TRAITS = ["starter/optimism", "starter/refusal"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("steer_traits")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
        mp.setenv("TRAITLAB_OUTPUTS", str(root / "outputs"))
        for trait in TRAITS:
            run_extract(ExtractConfig(trait=TraitConfig(name=trait), method=MethodConfig(name="mean_diff"),
                                      layers="10", tracking=TrackingConfig(experiment="multi")), lm=smollm2)
        yield root


def cfg(root, name: str, trait: str | None = None, traits=None) -> SteerConfig:
    s = SteeringConfig(n_questions=2, steps=2, max_new_tokens=8, propensity=PropensityConfig(max_pairs=4),
                       study=StudyConfig(storage_dir=str(root / f"studies-{name}")))
    return SteerConfig(trait=TraitConfig(name=trait or TRAITS[0]), traits=traits,
                       method=MethodConfig(name="mean_diff"), layers="10", steering=s,
                       tracking=TrackingConfig(experiment="multi", run_name=name), force=True)


def _trials(res):
    return [(t["coefficient"], t["coherence"], t["deltas"]["propensity"]["delta"], t["deltas"]["propensity"]["n"])
            for t in res.per_layer[10].trials]


def test_traits_searched_together_equal_each_alone_with_fewer_generate_calls(store, smollm2, generate_calls):
    calls = generate_calls
    together = run_steer_traits(cfg(store, "together", traits=TRAITS), lm=smollm2)
    n_together = len(calls)
    alone = {}
    for trait in TRAITS:
        alone[trait] = run_steer(cfg(store, f"alone-{trait.split('/')[1]}", trait=trait), lm=smollm2)
    n_alone = len(calls) - n_together
    assert n_together == 2 and n_alone == 4  # one call per round for both traits vs one per round per trait
    assert sorted(together) == TRAITS
    for trait in TRAITS:
        t, a = together[trait], alone[trait]
        assert not t.skipped and t.run_id != a.run_id
        rows_t, rows_a = _trials(t), _trials(a)
        assert len(rows_t) == 2
        for (ct, ht, dt, nt), (ca, ha, da, na) in zip(rows_t, rows_a, strict=True):
            assert ct == pytest.approx(ca, rel=1e-6) and nt == na == 4
            assert ht == pytest.approx(ha, abs=1e-3) and dt == pytest.approx(da, abs=1e-4)
        assert [s.responses for s in [t.baselines["unsteered"]]] == [a.baselines["unsteered"].responses]
    # the two traits really were searched (different questions, different deltas)
    assert _trials(together[TRAITS[0]]) != _trials(together[TRAITS[1]])

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    child = client.get_run(together[TRAITS[1]].run_id)
    parent_id = child.data.tags["mlflow.parentRunId"]
    parent = client.get_run(parent_id)
    assert parent.data.tags["traitlab.stage"] == "steer_traits" and parent.data.metrics["n_searched_together"] == 2
    assert child.data.tags["trait"] == TRAITS[1] and "layer/n_coherent" in child.data.metrics
    assert client.get_run(together[TRAITS[0]].run_id).data.tags["mlflow.parentRunId"] == parent_id
