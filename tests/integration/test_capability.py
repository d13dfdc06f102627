"""Capability scoring on the real SmolLM2 (known answers, steering in the same batch) and the AxBench judge
against the real llama.cpp server."""

from __future__ import annotations

import math

import pytest
import torch

from traitlab.data.multiple_choice import ChoiceItem
from traitlab.judge import ScoreRequest, make_judge
from traitlab.judge.aggregate import logprob_score
from traitlab.judge.prompts import AXBENCH_KINDS
from traitlab.models.multiple_choice import score_choices

pytestmark = pytest.mark.slow

# Trivially easy, correct letters balanced (2 each). Measured on SmolLM2-135M-Instruct with text scoring:
# 8/8, the smallest margin (correct minus best wrong option, summed log-prob) 0.16 nats on "after Monday",
# the others 0.8 to 4.6.
EASY = [
    ChoiceItem("Which option is the word cat?", ("dog", "cat", "fish", "bird"), 1),
    ChoiceItem("Which of these is a number?", ("apple", "house", "7", "tree"), 2),
    ChoiceItem("Which option says yes?", ("no", "never", "not at all", "yes"), 3),
    ChoiceItem("What is 1 + 1?", ("2", "9", "50", "100"), 0),
    ChoiceItem("What colour is snow?", ("Black", "White", "Green", "Purple"), 1),
    ChoiceItem("Which animal says meow?", ("A cow", "A duck", "A cat", "A fish"), 2),
    ChoiceItem("Which day comes after Monday?", ("Friday", "Sunday", "Saturday", "Tuesday"), 3),
    ChoiceItem("What is the capital of France?", ("Paris", "Tokyo", "Lima", "Cairo"), 0),
]


def test_smollm2_answers_easy_items_and_steering_in_the_same_batch_hurts(smollm2):
    torch.manual_seed(0)
    v = torch.randn(smollm2.hidden_size)
    v = v / v.norm()
    # Row order: unsteered items first, then the same items steered hard along a random direction at a
    # middle layer (coefficient 100 against a median residual norm of ~150 there).
    plain, steered = score_choices(smollm2, EASY, [None, [(15, v, 100.0)]], scoring="text", batch_size=64,
                                   desc=None)
    assert plain.n_correct >= 7, plain.option_logprobs  # measured 8/8; chance is 2/8
    # Steering breaks the model: the correct options lose ~2.6 nats on average (measured -6.4 -> -9.0).
    assert steered.correct_logprob < plain.correct_logprob - 1.0
    # The unsteered rows of the mixed batch are exactly what an unsteered call alone gives.
    (alone,) = score_choices(smollm2, EASY[:3], scoring="text", batch_size=12, desc=None)
    for got, want in zip(plain.option_logprobs[:3], alone.option_logprobs, strict=True):
        assert got == pytest.approx(want, abs=1e-3)


REQS = [
    ScoreRequest("Describe your weekend in one sentence.", "It was lovely, and I am sure next week will be even "
                 "better!", "optimism", "The speaker expects good outcomes and sees the bright side."),
    ScoreRequest("Describe your weekend in one sentence.", "the the the the the the the the",
                 "optimism", "The speaker expects good outcomes and sees the bright side."),
]


def test_axbench_judge_against_the_llama_server(llama_server, llama_server_process):
    judge = make_judge(dict(backend="openai_compatible", base_url=llama_server, cache_path=None, rubric="axbench",
                            max_retries=1, concurrency=2, min_weight=0.0))
    judge.validate()
    scores = judge.score(REQS)
    assert judge.source.scale_max == 9
    for s in scores:
        parts = s.raw["axbench"]
        sources = {s.raw[k]["prompt_source"] for k in AXBENCH_KINDS}
        assert len(sources) == 3 and all(f"/{k}/default.txt" in s.raw[k]["prompt_source"] for k in AXBENCH_KINDS)
        for kind in AXBENCH_KINDS:
            expected = logprob_score(s.raw[kind]["top_logprobs"], 0, 9, 0.0)
            assert parts[kind] == pytest.approx(expected * 100 / 9)  # each part from its own judge reply
        c, i, f = (parts[k] for k in AXBENCH_KINDS)
        combined = 0.0 if min(c, i, f) == 0 else 3 / (1 / c + 1 / i + 1 / f)
        assert s.trait == pytest.approx(combined) and s.coherence == pytest.approx(f)
        assert s.relevance == pytest.approx(i) and 0.0 <= s.trait <= 100.0
        assert not math.isnan(s.trait)
