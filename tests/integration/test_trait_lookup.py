"""A trait whose extraction.yaml sets its position and method: every stage that looks its vectors up (steer,
infer / monitoring, generate / chat, export / serve, the notebook object) finds the vectors extracted at
that setting without being told, and the command line still wins when it names one.

Real SmolLM2, real MLflow store. The trait (a small paired one) lives in a temporary datasets root so that
its name resolves like a trait under datasets/traits. Two settings are extracted: the trait's own
(`response[:2]`, from its file) and `response[:]` (named on the command line); a steering result on the
`response[:]` vector makes it the registry's overall best, so a lookup that ignored the trait's setting
would pick it.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from pair_trait import write_pair_trait

from traitlab.config.export import ExportConfig
from traitlab.config.generate import GenerateConfig
from traitlab.config.infer import InferenceConfig
from traitlab.config.schema import ExtractConfig, PositionConfig, TrackingConfig, TraitConfig
from traitlab.config.serve import ServeConfig
from traitlab.config.steer import SteerConfig
from traitlab.models.identity import model_tags
from traitlab.models.loading import ModelSpec
from traitlab.pipelines.extract import run_extract
from traitlab.steering_vector import SteeringVector
from traitlab.tracking.registry import best_vector, find_vectors

pytestmark = pytest.mark.slow
EXP = "trait-lookup"
TRAIT = "mine/cheer"
OWN, OTHER = "response[:2]", "response[:]"


@pytest.fixture(scope="module")
def store(tmp_path_factory, smollm2):
    tmp = tmp_path_factory.mktemp("lookup")
    write_pair_trait(tmp / "datasets" / "traits" / "mine" / "cheer",
                     f"position: '{OWN}'\nmethod: mean_diff\nlayers: '3,5'\nval_split: 0.34\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAITLAB_DATASETS", str(tmp / "datasets"))
        uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("TRAITLAB_OUTPUTS", str(tmp / "outputs"))
        tracking = TrackingConfig(experiment=EXP)
        own = run_extract(ExtractConfig(trait=TraitConfig(name=TRAIT), tracking=tracking), lm=smollm2,
                          command_line=set())
        other = run_extract(ExtractConfig(trait=TraitConfig(name=TRAIT), position=PositionConfig(spec=OTHER),
                                          tracking=tracking), lm=smollm2, command_line={"position.spec"})
        client = MlflowClient(uri)
        assert client.get_run(own.run_id).data.tags["position"] == OWN
        assert client.get_run(other.run_id).data.tags["position"] == OTHER
        # a (recorded) steering result on the command-line vector: the registry's overall best is now it
        steer = client.create_run(client.get_experiment_by_name(EXP).experiment_id, tags={
            "traitlab.stage": "steer", "trait": TRAIT, **model_tags(ModelSpec()), "method": "mean_diff",
            "component": "residual", "position": OTHER, "traitlab.vector_runs": f"3:{other.run_id}"})
        for key, value in (("layer/objective_delta", 30.0), ("layer/objective_delta_lo", 20.0),
                           ("layer/objective_delta_hi", 40.0), ("layer/coherence", 90.0),
                           ("layer/coefficient", 4.0)):
            client.log_metric(steer.info.run_id, key, value, step=3)
        client.set_terminated(steer.info.run_id)
        assert best_vector(TRAIT, "smollm2_135m", experiment=EXP).position == OTHER
        yield {"own": own.run_id, "other": other.run_id}


def test_notebook_object_uses_the_trait_setting(store):
    v = SteeringVector.from_registry(TRAIT, "smollm2_135m", layers="3,5", experiment=EXP)
    assert (v.position, v.method, v.source_run) == (OWN, "mean_diff", store["own"])
    named = SteeringVector.from_registry(TRAIT, "smollm2_135m", layers="best", position=OTHER, experiment=EXP)
    assert (named.position, named.layers, named.best_coefficients) == (OTHER, [3], {3: 4.0})


def test_generate_and_chat_lookup_uses_the_trait_setting(store):
    from traitlab.pipelines.common import steering_setup

    cfg = GenerateConfig(vectors=TRAIT, layers="best", tracking=TrackingConfig(experiment=EXP))
    (v,) = steering_setup(cfg).vectors
    assert (v.position, v.source_run) == (OWN, store["own"])
    (v,) = steering_setup(GenerateConfig(vectors=TRAIT, position=OTHER, tracking=cfg.tracking)).vectors
    assert v.position == OTHER


def test_export_and_serve_lookup_uses_the_trait_setting(store):
    from traitlab.pipelines.common import source_vector

    v, _ = source_vector(ExportConfig(trait=TraitConfig(name=TRAIT), tracking=TrackingConfig(experiment=EXP)))
    assert (v.position, v.source_run) == (OWN, store["own"])
    v, _ = source_vector(ServeConfig(trait=TraitConfig(name=TRAIT), position=PositionConfig(spec=OTHER),
                                     tracking=TrackingConfig(experiment=EXP)))
    assert v.position == OTHER


def test_infer_monitoring_lookup_uses_the_trait_setting(store):
    from traitlab.monitor.vectors import select_vectors

    (tv,) = select_vectors([TRAIT], "smollm2_135m", "best", 30, InferenceConfig(), experiment=EXP, uri=None)
    assert (tv.ref.position, tv.ref.run_id) == (OWN, store["own"])
    (tv,) = select_vectors([TRAIT], "smollm2_135m", "best", 30, InferenceConfig(position=OTHER), experiment=EXP,
                           uri=None)
    assert tv.ref.position == OTHER


def test_steer_takes_the_trait_setting_unless_the_command_line_names_one(store, monkeypatch):
    """run_steer looks vectors up with the trait's position and method instead of its config defaults
    (probe, response[:]), which have no vectors here; a position named on the command line is kept."""
    from traitlab.pipelines import steer

    seen = []

    def stop(cfg):  # what run_steer validates and looks vectors up with; nothing else runs
        seen.append(cfg)
        raise KeyboardInterrupt

    monkeypatch.setattr(steer, "validate_inputs", stop)
    base = SteerConfig(trait=TraitConfig(name=TRAIT), tracking=TrackingConfig(experiment=EXP))
    for command_line in (set(), None):  # launcher with nothing named; Python caller with the defaults
        with pytest.raises(KeyboardInterrupt):
            steer.run_steer(base, command_line=command_line)
    with pytest.raises(KeyboardInterrupt):
        steer.run_steer(base, command_line={"position"})  # position=response_all typed: kept
    assert [(c.position.spec, c.method.name) for c in seen] == [(OWN, "mean_diff"), (OWN, "mean_diff"),
                                                                (OTHER, "mean_diff")]
    found = {(r.run_id, r.layer) for c in seen[:1] for r in find_vectors(
        TRAIT, "smollm2_135m", method=c.method.name, component=c.component.name, position=c.position.spec,
        experiment=EXP)}
    assert found == {(store["own"], 3), (store["own"], 5)}
    assert not find_vectors(TRAIT, "smollm2_135m", method=base.method.name, position=base.position.spec,
                            experiment=EXP)  # what steer looked for before: nothing
