"""Several traits' trials in one batch, on the tiny random Llama: settings answered on their own question sets in
ONE generate call (and their held-out pairs in one set of forward batches) give exactly what each group gives in
its own call, and the one call really holds every group's rows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from traitlab.config.schema import GenerationConfig
from traitlab.models import steered_generation as sg
from traitlab.models.propensity import ResponsePair, propensity, propensity_groups
from traitlab.steering.measures import Measurer, steered_together

QUESTIONS_A = ["hello there, how are you?", "what is up"]
QUESTIONS_B = ["a much longer prompt about nothing at all!", "what is up", "tell me a story"]


def _unit(seed: int) -> torch.Tensor:
    v = torch.randn(32, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


SETTINGS_A = [[(1, _unit(1), 0.1)], [(2, _unit(2), 0.075)]]
SETTINGS_B = [[(1, _unit(3), -0.1)], None, [(3, _unit(4), 0.05)]]


def test_settings_on_their_own_prompts_give_what_separate_calls_give(tiny_lm):
    gen = GenerationConfig(max_new_tokens=8, batch_size=5)
    alone_a = sg.generate_steered_shared(tiny_lm, QUESTIONS_A, SETTINGS_A, gen=gen)
    alone_b = sg.generate_steered_shared(tiny_lm, QUESTIONS_B, SETTINGS_B, gen=gen)
    prompts = ["hello there, how are you?", "what is up", "a much longer prompt about nothing at all!",
               "tell me a story"]
    together = sg.generate_steered_shared(tiny_lm, prompts, SETTINGS_A + SETTINGS_B, gen=gen,
                                          prompts_of=[[0, 1]] * 2 + [[2, 1, 3]] * 3)
    assert together == alone_a + alone_b
    # the steering did something (else equality would hold trivially): trait B's unsteered answers differ
    assert together[2] != together[3] and together[4] != together[3]


def test_row_batches_generate_only_the_wanted_rows():
    enc = [sg.Encoded([1] * n, n) for n in (3, 5, 4)]
    # 2 settings x 3 prompts; setting 0 on prompts 0, 1; setting 1 on prompt 2 only
    batches = sg.row_batches(enc, 2, 3, wanted={0, 1, 5})
    assert sorted(r for b in batches for r in b) == [0, 1, 5]
    assert all(len(b) <= 3 for b in batches)


def _pairs(n: int, offset: int) -> list[ResponsePair]:
    words = ["good day", "bad day", "sunny", "rain again", "yes", "no way", "fine", "awful"]
    return [ResponsePair(f"prompt {i + offset}", words[(2 * i) % 8], words[(2 * i + 1) % 8]) for i in range(n)]


def test_propensity_groups_equal_each_group_alone(tiny_lm):
    pa, pb = _pairs(2, 0), _pairs(3, 5)
    together = propensity_groups(tiny_lm, [(pa, SETTINGS_A), (pb, SETTINGS_B)], batch_size=4)
    alone = [propensity(tiny_lm, pa, SETTINGS_A, batch_size=4), propensity(tiny_lm, pb, SETTINGS_B, batch_size=4)]
    for t, a in zip(together, alone, strict=True):
        assert t.shape == a.shape
        torch.testing.assert_close(t, a, atol=1e-5, rtol=0)
    assert not torch.allclose(together[1][0], together[1][1])  # steered vs unsteered margins differ


TRAIT_A = SimpleNamespace(name="a", definition="a", steering=None)
TRAIT_B = SimpleNamespace(name="b", definition="b", steering=None)


class LengthJudge:
    def score(self, requests):
        from traitlab.judge import JudgeScore

        return [JudgeScore(trait=float(len(r.response)), coherence=50.0 + len(r.question)) for r in requests]


def test_steered_together_uses_one_generate_call_and_matches_alone(tiny_lm, generate_calls):
    gen = GenerationConfig(max_new_tokens=6, batch_size=64)
    ma = Measurer(tiny_lm, TRAIT_A, QUESTIONS_A, LengthJudge(), None, _pairs(2, 0), gen, propensity_batch=8)
    mb = Measurer(tiny_lm, TRAIT_B, QUESTIONS_B, LengthJudge(), None, _pairs(3, 5), gen, propensity_batch=8)
    alone = [ma.steered(SETTINGS_A), mb.steered(SETTINGS_B)]
    generate_calls.clear()
    together = steered_together([(ma, SETTINGS_A), (mb, SETTINGS_B)])
    assert generate_calls == [len(SETTINGS_A) * 2 + len(SETTINGS_B) * 3]  # one batch with every trait's rows
    for t, a in zip(together, alone, strict=True):
        assert [s.responses for s in t] == [s.responses for s in a]
        assert [s.coherence for s in t] == [s.coherence for s in a]
        for st, sa in zip(t, a, strict=True):
            assert st.margins == pytest.approx(sa.margins, abs=1e-5)
