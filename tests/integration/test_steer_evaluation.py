"""The steering stage's evaluation on the real SmolLM2 and a real MLflow store: the propensity objective sees the
optimism vector's effect with an interval, deltas compare only questions scored in both conditions, a search that
cannot succeed stops after the baselines, and best_vector trusts a steering result only for the vector it
measured and only when its interval excludes zero."""

from __future__ import annotations

import math
import os

import pytest
from mlflow.tracking import MlflowClient

from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.config.steer import JudgeConfig, PropensityConfig, SteerConfig, SteeringConfig
from traitlab.judge import JudgeScore
from traitlab.models.propensity import propensity
from traitlab.pipelines.extract import run_extract
from traitlab.pipelines.steer import run_steer
from traitlab.tracking.registry import best_vector

pytestmark = pytest.mark.slow
TRAIT = "starter/optimism"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("steer_eval")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
        mp.setenv("TRAITLAB_OUTPUTS", str(root / "outputs"))
        yield root


def extract(smollm2, experiment: str, force: bool = False):
    return run_extract(ExtractConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"), layers="10",
                                     tracking=TrackingConfig(experiment=experiment), force=force), lm=smollm2)


def steer_cfg(experiment: str, **steering) -> SteerConfig:
    s = dict(n_questions=2, steps=2, max_new_tokens=12, propensity=PropensityConfig(max_pairs=6))
    s.update(steering)
    return SteerConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"), layers="10",
                       steering=SteeringConfig(**s), tracking=TrackingConfig(experiment=experiment))


@pytest.fixture(scope="module")
def searched(smollm2, store):
    extract(smollm2, "eval")
    return run_steer(steer_cfg("eval", scorer="sentiment"), lm=smollm2)


def test_propensity_objective_sees_the_effect_with_an_interval(searched, smollm2, store):
    res = searched
    assert res.objective == "propensity" and res.measures == ["propensity", "sentiment"] and res.threshold == 90.0
    layer = res.per_layer[10]
    assert len(layer.trials) == 2 and layer.best is not None
    d = layer.best["deltas"]["propensity"]
    # the mean_diff vector at layer 10 raises the positive response's log-prob margin: an interval above zero
    assert d["n"] == 6 and d["low"] > 0 and d["delta"] == pytest.approx(layer.best["value"])
    assert layer.best["deltas"]["sentiment"]["n"] == 2
    # the unsteered propensity is the held-out pairs' margin without steering, recomputed here directly
    from traitlab.steering.measures import heldout_examples, heldout_pairs

    pairs = heldout_pairs(smollm2, heldout_examples(res_trait(), 0.1, 42, max_pairs=6), 42)
    direct = propensity(smollm2, pairs, [None], max_response_tokens=32)[0].tolist()
    assert res.baselines["unsteered"].margins == pytest.approx(direct, abs=1e-6)
    # steerability: slope over the unsteered point and the coherent trials, per pair
    st = layer.steerability
    assert st.n_pairs == 6 and st.n_points == 1 + sum(t["feasible"] for t in layer.trials) and st.steerability > 0

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(res.run_id)
    metric = {k: [(m.step, m.value) for m in client.get_metric_history(res.run_id, k)]
              for k in ("layer/objective_delta", "layer/objective_delta_lo", "layer/steerability", "layer/n_pairs")}
    assert metric["layer/objective_delta"] == [(10, pytest.approx(d["delta"], rel=1e-3))]
    assert metric["layer/objective_delta_lo"] == [(10, pytest.approx(d["low"], rel=1e-3))]
    assert metric["layer/n_pairs"] == [(10, 6.0)]
    assert {"prompted/propensity_delta", "unsteered/sentiment", "best/objective_delta", "best/layer"} <= \
        set(run.data.metrics)
    tags = run.data.tags
    assert tags["traitlab.objective"] == "propensity" and tags["traitlab.vector_runs"].startswith("10:")
    assert "interval excludes zero" in tags["mlflow.note.content"]
    files = {f.path for f in client.list_artifacts(res.run_id, "figures")}
    assert {"figures/steering_layer_010.png", "figures/propensity_layer_010.png"} <= files


def res_trait():
    from traitlab.data import load_trait, resolve_trait_dir

    return load_trait(resolve_trait_dir(TRAIT))


class LosingJudge:
    """Trait = the answer's length in characters (capped at 100), coherence 95; after the two baseline calls
    (unsteered, prompted) the first question gets no trait score, as a judge's min-weight gate drops a score."""

    def __init__(self, first_question):
        self.first, self.calls = first_question, 0

    def score(self, requests):
        self.calls += 1
        lost = self.calls > 2
        return [JudgeScore(trait=None if lost and r.question == self.first else float(min(100, len(r.response))),
                           coherence=95.0) for r in requests]


def test_deltas_use_only_questions_scored_in_both_and_untrusted_results_fall_back(smollm2, store):
    extract(smollm2, "lost")
    cfg = steer_cfg("lost", objective="judge", steps=1, propensity=PropensityConfig(max_pairs=0))
    cfg.judge = JudgeConfig(backend="hf_local")
    res = run_steer(cfg, lm=smollm2, judge=LosingJudge(res_trait().steering.questions[0]))
    rows = res.rows
    base = {r["question_index"]: r["trait_score"] for r in rows if r["condition"] == "unsteered"}
    steered = {r["question_index"]: r["trait_score"] for r in rows if r["condition"] == "steered"}
    assert steered[0] is None and base[0] is not None
    t = res.per_layer[10].trials[0]
    # only question 1 is in both: the delta is its own difference, not the mean over 1 question minus the mean
    # over 2 (which the old rule reported)
    assert t["value"] == pytest.approx(steered[1] - base[1])
    assert t["deltas"]["trait"]["n"] == 1 and t["deltas"]["trait"]["lost"] == 1 and t["lost_questions"] == 1
    assert any("lost 1 question" in w for w in res.warnings)
    # one question: no interval, so the registry does not trust this steering result and says why
    assert math.isnan(t["deltas"]["trait"]["low"])
    ref = best_vector(TRAIT, "smollm2_135m", experiment="lost")
    assert ref.source == "cv_effect_size" and "none with a 95% interval above zero" in ref.reason


def test_search_that_cannot_succeed_stops_after_the_baselines(smollm2, store):
    # The README's plain in-process judge: SmolLM2 grades coherence ~30/100 even for its own answers, so no trial
    # could pass the 77 threshold; the search must say so instead of running every trial.
    extract(smollm2, "stop")
    cfg = steer_cfg("stop", steps=3, propensity=PropensityConfig(max_pairs=2))
    cfg.judge = JudgeConfig(backend="hf_local", min_weight=0.1)
    res = run_steer(cfg, lm=smollm2)
    assert res.stopped and "steering.threshold=77" in res.stopped and "judge=perplexity" in res.stopped
    assert res.per_layer == {} and [r["condition"] for r in res.rows] == ["unsteered"] * 2 + ["prompted"] * 2
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["traitlab.search_stopped"] == res.stopped
    assert "search stopped" in res.summary_table()


def test_a_steering_result_is_credited_only_to_the_vector_it_measured(searched, smollm2, store):
    ref = best_vector(TRAIT, "smollm2_135m", experiment="eval")
    assert ref.source == "steering_delta" and ref.layer == 10 and ref.reason.startswith("steering: propensity delta")
    assert ref.run_id == searched_vector_run(searched)
    # a re-extraction is a different vector run: the old steering result must not be credited to it
    again = extract(smollm2, "eval", force=True)
    ref = best_vector(TRAIT, "smollm2_135m", experiment="eval")
    assert ref.run_id == again.run_id and ref.source == "cv_effect_size"
    assert "measured on other vector runs" in ref.reason


def searched_vector_run(res) -> str:
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(res.run_id).data.tags["traitlab.vector_runs"].split(":", 1)[1]
