"""The coefficient search with real Optuna studies in sqlite, and batched steering on the real SmolLM2.

A deterministic scorer stands in for the judge: the trait score grows with the coefficient and coherence
falls off a cliff past a known c*. The search must land on the largest coherent coefficient (within 15%
of c*) and never select an infeasible trial. Then: rows of several candidates generated in ONE batch
with PerSampleSteering give exactly the responses each candidate gives alone.
"""

from __future__ import annotations

import pytest
import torch

from traitlab.config.schema import GenerationConfig
from traitlab.models.chat import format_prompt
from traitlab.models.steering import generate_steered
from traitlab.steering.coef_search import (
    COEF,
    START_ATTR,
    Outcome,
    SearchStudy,
    best_trial,
    finished_trials,
    is_feasible,
    make_sampler,
    open_storage,
    open_study,
    run_search,
)

THRESHOLD = 77.0


def cliff_scorer(c_star: float):
    def evaluate(candidates):
        return [Outcome(value=10.0 + 20.0 * c.coefficient, coherence=92.0 if c.coefficient <= c_star else 35.0)
                for c in candidates]

    return evaluate


def search(tmp_path, sampler: str, c_star: float, steps: int, per_step: int, layers=(8, 12)):
    storage = open_storage(tmp_path / "studies.db")
    studies = []
    for layer in layers:
        study = open_study(storage, f"{sampler}-L{layer}", make_sampler(sampler, seed=42 + layer, tpe_startup_trials=4),
                           {START_ATTR: 0.3}, enqueue={COEF: 0.3} if sampler == "tpe" else None)
        studies.append(SearchStudy(f"L{layer}", layer, study, target=steps * per_step, low=0.05, high=3.0))
    calls = []

    def evaluate(candidates):
        calls.append(len(candidates))
        return cliff_scorer(c_star)(candidates)

    run_search(studies, evaluate, per_step=per_step, threshold=THRESHOLD)
    return studies, calls


@pytest.mark.parametrize("c_star", [0.7, 2.2])
@pytest.mark.parametrize(("sampler", "steps", "per_step"), [("adaptive", 8, 1), ("tpe", 10, 3)])
def test_search_finds_the_largest_coherent_coefficient(tmp_path, sampler, steps, per_step, c_star):
    studies, calls = search(tmp_path, sampler, c_star, steps, per_step)
    # every round asked all layers' candidates at once: one evaluate call per round
    assert calls == [per_step * len(studies)] * steps
    for s in studies:
        trials = finished_trials(s.study)
        assert len(trials) == steps * per_step
        assert any(not is_feasible(t) for t in trials), "the search never probed past the cliff"
        best = best_trial(s.study)
        chosen = best.params[COEF]
        assert chosen <= c_star                                  # the constraint is respected...
        assert chosen >= 0.85 * c_star                           # ...and the cliff edge found (within 15%)
        coherent = [t.params[COEF] for t in trials if is_feasible(t)]
        assert chosen == max(coherent)                           # the best is the largest coherent one tried
        assert best.value == pytest.approx(10.0 + 20.0 * chosen)


def test_search_never_selects_infeasible_even_when_it_scores_higher(tmp_path):
    # everything past c* has a HIGHER objective; an unconstrained argmax would pick one of those
    studies, _ = search(tmp_path, "adaptive", 0.5, steps=6, per_step=2, layers=(10,))
    trials = finished_trials(studies[0].study)
    top = max(trials, key=lambda t: t.value)
    assert not is_feasible(top)
    assert best_trial(studies[0].study).params[COEF] <= 0.5


@pytest.mark.slow
def test_batched_and_sequential_generation_give_identical_responses(smollm2):
    lm = smollm2
    questions = ["What should I know before adopting a dog?", "How does the stock market work?"]
    texts = [format_prompt(lm.tokenizer, q, None, lm.use_chat_template) for q in questions]
    g = torch.Generator().manual_seed(0)
    v10 = torch.randn(576, generator=g)
    v12 = torch.randn(576, generator=g)
    v10, v12 = v10 / v10.norm(), v12 / v12.norm()
    settings = [[(10, v10, 90.0)], [(12, v12, 60.0)], None, [(10, v10, 20.0), (12, v12, 20.0)]]
    gen = GenerationConfig(max_new_tokens=10, batch_size=64)
    batched = generate_steered(lm, texts, settings, gen=gen)
    sequential = [generate_steered(lm, texts, [s], gen=gen)[0] for s in settings]
    assert batched == sequential
    assert batched[0] != batched[2]  # the strong coefficient really changed the responses
    # split into sub-batches of 3 rows (as after an out-of-memory halving): each row keeps its own steering
    split = generate_steered(lm, texts, settings, gen=GenerationConfig(max_new_tokens=10, batch_size=3))
    assert split == batched
