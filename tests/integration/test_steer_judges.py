"""The steer pipeline with a REAL OpenAI-compatible judge (llama.cpp serving SmolLM2) and a real MLflow
store: search, extending a finished study, and re-scoring stored responses without the steered model."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.config.steer import JudgeConfig, PropensityConfig, SteerConfig, SteeringConfig, StudyConfig
from traitlab.pipelines import steer
from traitlab.pipelines.extract import run_extract

pytestmark = pytest.mark.slow
EXP = "steer-judge"


def judged(steps: int) -> SteeringConfig:
    """The judge is what this test exercises: it is the objective, and every trial counts (SmolLM2 grades its
    own answers' coherence ~30, which a real threshold would stop at after the baselines)."""
    return SteeringConfig(objective="judge", threshold=0.0, propensity=PropensityConfig(max_pairs=0), n_questions=2,
                          steps=steps, max_new_tokens=12, study=StudyConfig(heartbeat_interval=1, grace_period=3))


def steer_cfg(base_url: str, cache: str, **kw) -> SteerConfig:
    cfg = SteerConfig(
        trait=TraitConfig(name="starter/optimism"), method=MethodConfig(name="mean_diff"), layers="10",
        judge=JudgeConfig(backend="openai_compatible", base_url=base_url, cache_path=cache, min_weight=0.1,
                          concurrency=2, max_retries=1, backoff_s=0.2),
        steering=judged(steps=2),
        tracking=TrackingConfig(experiment=EXP))
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_search_extend_and_rescore_with_server_judge(llama_server, smollm2, mlflow_store, monkeypatch, tmp_path):
    cache = str(tmp_path / "judge_cache.sqlite")  # the later runs re-use the judge's answers, as designed
    ex = run_extract(ExtractConfig(trait=TraitConfig(name="starter/optimism"), method=MethodConfig(name="mean_diff"),
                                   layers="10", tracking=TrackingConfig(experiment=EXP)), lm=smollm2)
    res = steer.run_steer(steer_cfg(llama_server, cache), lm=smollm2)
    client = MlflowClient(mlflow_store)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["traitlab.stage"], tags["judge"], tags["traitlab.vector_run_id"]) == ("steer", "openai_compatible",
                                                                                    ex.run_id)
    trials = res.per_layer[10].trials
    assert len(trials) == 2 and all(t["deltas"]["trait"]["n"] == 2 and 0 <= t["deltas"]["trait"]["treated"] <= 100
                                    for t in trials)
    # the judged rows: 2 unsteered + 2 prompted + 2 trials x 2 questions, each with the judge's numbers
    assert [r["condition"] for r in res.rows].count("steered") == 4 and len(res.rows) == 8
    assert all(r["trait_score"] is not None for r in res.rows)
    base = client.get_metric_history(res.run_id, "unsteered/trait")
    assert [m.step for m in base] == [0] and base[0].value == pytest.approx(res.baseline_mean("unsteered", "trait"),
                                                                           rel=1e-3)

    # more steps continue the same Optuna study: one new trial per layer, the first two are reused
    more = steer.run_steer(steer_cfg(llama_server, cache, steering=judged(steps=3)), lm=smollm2)
    assert more.run_id != res.run_id
    assert [t["number"] for t in more.per_layer[10].trials] == [0, 1, 2]
    assert more.per_layer[10].trials[:2] == trials
    assert more.per_layer[10].study == res.per_layer[10].study

    # re-scoring reads the responses table back from MLflow and needs no steered model
    def no_model(*a, **k):
        raise AssertionError("mode=rescore must not load the steered model")

    monkeypatch.setattr(steer, "load_model", no_model)
    again = steer.run_steer(steer_cfg(llama_server, cache, mode="rescore", rescore_from=res.run_id))
    assert client.get_run(again.run_id).data.tags["traitlab.rescored_from"] == res.run_id
    before = [(r["condition"], r["question"], r["response"]) for r in res.rows]
    assert [(r["condition"], r["question"], r["response"]) for r in again.rows] == before
    # same judge, same prompts: every row gets the same score back (temperature-0 logprobs)
    assert [r["trait_score"] for r in again.rows] == pytest.approx([r["trait_score"] for r in res.rows], abs=1e-6)
    assert again.per_layer[10].trials[0]["coefficient"] == pytest.approx(trials[0]["coefficient"])
