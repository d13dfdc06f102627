"""mode=baseline and mode=ablation on the real SmolLM2 with a word-counting scorer standing in for the judge
(the modes' plumbing is under test here, not a judge): what is generated, judged and logged per layer."""

from __future__ import annotations

from statistics import mean

import pytest
from mlflow.tracking import MlflowClient

from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.config.steer import JudgeConfig, PropensityConfig, SteerConfig, SteeringConfig
from traitlab.core.components import get_decoder_layers
from traitlab.data import load_trait, resolve_trait_dir
from traitlab.judge import JudgeScore
from traitlab.models.chat import format_prompt
from traitlab.models.generation import generate_texts
from traitlab.pipelines import steer
from traitlab.pipelines.extract import run_extract
from traitlab.tracking.registry import fetch_vector, find_vectors

pytestmark = pytest.mark.slow
EXP = "steer-modes"
QUESTIONS = load_trait(resolve_trait_dir("starter/optimism")).steering.questions[:2]
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
    # batch_size=1: no padding, so every position of every forward pass is a real token the ablation edits
    return SteerConfig(trait=TraitConfig(name="starter/optimism"), method=MethodConfig(name="mean_diff"),
                       layers="10", mode=mode, judge=JudgeConfig(backend="hf_local"),
                       steering=SteeringConfig(n_questions=2, max_new_tokens=10, batch_size=1, objective="judge",
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

    # Record the residual stream right after layer 10 (the input of layer 11) in every forward pass of the
    # ablation run: the generations must run with the vector projected out there.
    ref = find_vectors("starter/optimism", "smollm2_135m", experiment=EXP, method="mean_diff", layer=10)[0]
    unit = fetch_vector(ref, experiment=EXP).double()
    unit = unit / unit.norm()
    seen: list[float] = []

    def record(_module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        seen.append(float((h.double() @ unit).abs().max()))

    after_10 = get_decoder_layers(smollm2.model)[11]
    handle = after_10.register_forward_pre_hook(record, with_kwargs=True)
    try:
        abl = steer.run_steer(cfg("ablation"), lm=smollm2, judge=scorer)
    finally:
        handle.remove()
    assert len(seen) >= 10  # prefill + decoding steps of the ablated generations
    ablated_max = max(seen)
    seen.clear()
    handle = after_10.register_forward_pre_hook(record, with_kwargs=True)
    try:  # the same prompts without ablation carry a large projection on the vector
        generate_texts(smollm2, [format_prompt(smollm2.tokenizer, q, None, smollm2.use_chat_template)
                                 for q in QUESTIONS], max_new_tokens=10, batch_size=1, desc=None)
    finally:
        handle.remove()
    assert max(seen) > 1.0 and ablated_max < 1e-4 * max(seen), (ablated_max, max(seen))
    unsteered = [r["response"] for r in base.rows if r["condition"] == "unsteered"]
    ablated_texts = [r["response"] for r in abl.rows if r["condition"] == "ablated"]
    assert ablated_texts != unsteered  # removing the direction changes what the model says
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
