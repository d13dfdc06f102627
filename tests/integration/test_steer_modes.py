"""mode=baseline and mode=ablation on the real SmolLM2 with a word-counting scorer standing in for the judge
(the modes' plumbing is under test here, not a judge): what is generated, judged and logged per layer."""

from __future__ import annotations

from statistics import mean

import pytest
from mlflow.tracking import MlflowClient

from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.config.steer import JudgeConfig, PropensityConfig, SteerConfig, SteeringConfig
from traitlab.judge import JudgeScore
from traitlab.pipelines import steer
from traitlab.pipelines.extract import run_extract

pytestmark = pytest.mark.slow
EXP = "steer-modes"
HOPEFUL = ("great", "exciting", "opportunit", "happy", "thrill", "wonderful", "bright", "growth")


class WordScorer:
    """Trait = 25 points per hopeful word (max 100); coherence = 100 minus 10 per repeated word."""

    def __init__(self):
        self.calls = []

    def score(self, requests):
        self.calls.append(len(requests))
        out = []
        for r in requests:
            words = r.response.lower().split()
            trait = min(100.0, 25.0 * sum(any(w.startswith(h) for h in HOPEFUL) for w in words))
            coherence = max(0.0, 100.0 - 10.0 * (len(words) - len(set(words))))
            out.append(JudgeScore(trait=trait, coherence=coherence))
        return out


def cfg(mode: str) -> SteerConfig:
    return SteerConfig(trait=TraitConfig(name="starter/optimism"), method=MethodConfig(name="mean_diff"),
                       layers="10", mode=mode, judge=JudgeConfig(backend="hf_local"),
                       steering=SteeringConfig(n_questions=2, max_new_tokens=10, objective="judge",
                                               propensity=PropensityConfig(max_pairs=0)),
                       tracking=TrackingConfig(experiment=EXP))


def test_baseline_and_ablation_modes(smollm2, mlflow_store):
    run_extract(ExtractConfig(trait=TraitConfig(name="starter/optimism"), method=MethodConfig(name="mean_diff"),
                              layers="10", tracking=TrackingConfig(experiment=EXP)), lm=smollm2)
    client = MlflowClient(mlflow_store)
    scorer = WordScorer()
    base = steer.run_steer(cfg("baseline"), lm=smollm2, judge=scorer)
    assert [r["condition"] for r in base.rows] == ["unsteered"] * 2 + ["prompted"] * 2
    trait = mean([r["trait_score"] for r in base.rows[:2]])
    assert base.baseline_mean("unsteered", "trait") == pytest.approx(trait)
    logged = client.get_metric_history(base.run_id, "unsteered/trait")
    assert [(m.step, m.value) for m in logged] == [(0, pytest.approx(trait, rel=1e-3))]
    assert client.get_run(base.run_id).data.tags["traitlab.steer_mode"] == "baseline"
    assert scorer.calls == [2, 2]  # unsteered and prompted, each scored together after generation

    abl = steer.run_steer(cfg("ablation"), lm=smollm2, judge=scorer)
    conds = [r["condition"] for r in abl.rows]
    assert conds.count("ablated") == 2 and conds.count("ablated_prompted") == 2
    assert all(r["layer"] == 10 for r in abl.rows if r["condition"].startswith("ablated"))
    m = abl.ablation[10]
    ablated = mean([r["trait_score"] for r in abl.rows if r["condition"] == "ablated"])
    assert m["ablated_trait"] == pytest.approx(ablated)
    assert m["ablation_delta"] == pytest.approx(ablated - abl.baseline_mean("unsteered", "trait"))
    hist = {k: [(h.step, h.value) for h in client.get_metric_history(abl.run_id, f"layer/{k}")]
            for k in ("ablation_delta", "ablated_prompted_trait")}
    assert hist["ablation_delta"] == [(10, pytest.approx(m["ablation_delta"]))]
    assert hist["ablated_prompted_trait"] == [(10, pytest.approx(m["ablated_prompted_trait"]))]
    # the baseline rows of both runs are the same cached generations
    assert [r["response"] for r in abl.rows[:4]] == [r["response"] for r in base.rows]
