"""Capability scoring arithmetic on a tiny random Llama: letter and text log-probs against a hand computation
on unpadded single prompts, so padding, position ids, letter spellings, rotation and per-row steering all
have to be right for the numbers to match."""

from __future__ import annotations

import math

import pytest
import torch

from traitlab.core.hooks import SteeringHook
from traitlab.data.multiple_choice import ChoiceItem
from traitlab.errors import ConfigError, ModelError
from traitlab.models.loading import LoadedModel, ModelSpec
from traitlab.models.multiple_choice import (
    ChoiceScores,
    letter_prompt,
    letter_token_ids,
    rotated,
    score_choices,
    text_prompt,
)

PAD, BOS, EOS = 0, 1, 2
TOL = 2e-5  # float32 batched vs single-row forwards agree to ~1e-6 here
SPACED = {" A": 3, " B": 4, " C": 5, " D": 6}  # " A" etc. are single tokens, as in most BPE vocabularies


class CharTokenizer:
    """Greedy: a spaced letter is one token, every other character one token (ids 7..126)."""

    bos_token = "<s>"
    pad_token_id = PAD
    eos_token_id = EOS

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids, i = ([BOS] if add_special_tokens else []), 0
        while i < len(text):
            if text[i:i + 2] in SPACED:
                ids.append(SPACED[text[i:i + 2]])
                i += 2
            else:
                ids.append(7 + ord(text[i]) % 120)
                i += 1
        return {"input_ids": ids}


@pytest.fixture(scope="module")
def sharp_llama():
    """The shared tiny Llama's shape with 10x larger weights: at the default init scale attention is nearly
    uniform and every layer's contribution tiny, so attending to pad tokens would change logits by < 1e-4
    and a test could not see it; here it changes them by far more than the tolerance."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, initializer_range=0.2)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny_lm(sharp_llama):
    return LoadedModel(sharp_llama, CharTokenizer(), ModelSpec(name="tiny"), use_chat_template=False)


ITEMS = [
    ChoiceItem("Is ice cold?", ("yes", "no", "hot", "maybe"), 0, "x"),
    ChoiceItem("A much longer question, so this row is padded differently?", ("one", "two", "three", "four"), 2, "y"),
    ChoiceItem("2+2?", ("3", "4", "5", "22"), 1, "x"),
]


def manual_next_logprobs(model, text: str, hook=None) -> torch.Tensor:
    """log-softmax of the next token after `text`, one unpadded row, no position ids given."""
    ids = torch.tensor([CharTokenizer()(text)["input_ids"]])
    with torch.no_grad():
        if hook is None:
            logits = model(input_ids=ids).logits
        else:
            with hook:
                logits = model(input_ids=ids).logits
    return torch.log_softmax(logits[0, -1].double(), dim=-1)


def manual_letter_logprobs(model, text: str, hook=None) -> list[float]:
    lp = manual_next_logprobs(model, text, hook)
    char = {L: 7 + ord(L) % 120 for L in "ABCD"}
    # Both spellings of each letter: P("A") + P(" A").
    return [math.log(math.exp(lp[char[L]]) + math.exp(lp[SPACED[" " + L]])) for L in "ABCD"]


def test_letter_ids_include_both_spellings(tiny_lm):
    assert letter_token_ids(tiny_lm.tokenizer) == [[7 + ord(L) % 120, SPACED[" " + L]] for L in "ABCD"]


def test_letter_logprobs_match_a_manual_unpadded_computation(tiny_lm, sharp_llama):
    (scores,) = score_choices(tiny_lm, ITEMS, batch_size=3, desc=None)  # one left-padded batch of 3
    for item, got in zip(ITEMS, scores.option_logprobs, strict=True):
        expected = manual_letter_logprobs(sharp_llama, letter_prompt(tiny_lm, item))
        assert got == pytest.approx(expected, abs=TOL)
    assert scores.answers == [0, 2, 1] and scores.n == 3


def test_rotation_averages_each_option_over_its_four_letters(tiny_lm, sharp_llama):
    (scores,) = score_choices(tiny_lm, ITEMS[:2], rotate=True, batch_size=8, desc=None)
    for item, got in zip(ITEMS[:2], scores.option_logprobs, strict=True):
        per_shift = [manual_letter_logprobs(sharp_llama, letter_prompt(tiny_lm, item, shift=s)) for s in range(4)]
        for j, option in enumerate(item.options):
            # Under each shift, find the letter the option was shown under by reading the shown options.
            letters = [rotated(item.options, s).index(option) for s in range(4)]
            assert sorted(letters) == [0, 1, 2, 3]
            assert got[j] == pytest.approx(sum(per_shift[s][letters[s]] for s in range(4)) / 4, abs=TOL)


def test_text_scores_are_summed_reply_logprobs(tiny_lm, sharp_llama):
    (scores,) = score_choices(tiny_lm, ITEMS, scoring="text", batch_size=12, desc=None)
    tok = CharTokenizer()
    for item, got in zip(ITEMS, scores.option_logprobs, strict=True):
        for j in range(4):
            prompt, reply = text_prompt(tiny_lm, item, j)
            p_ids = tok(prompt)["input_ids"]
            ids = torch.tensor([p_ids + tok(reply, add_special_tokens=False)["input_ids"]])
            with torch.no_grad():
                lp = torch.log_softmax(sharp_llama(input_ids=ids).logits[0].double(), dim=-1)
            expected = sum(float(lp[t - 1, ids[0, t]]) for t in range(len(p_ids), ids.shape[1]))
            assert got[j] == pytest.approx(expected, abs=TOL)


def test_each_setting_gets_its_own_steering_in_one_batch(tiny_lm, sharp_llama):
    torch.manual_seed(3)
    v = torch.randn(32)
    settings = [None, [(1, v, 4.0)], [(1, v, -4.0), (2, v, 2.0)]]
    scores = score_choices(tiny_lm, ITEMS, settings, batch_size=4, desc=None)  # rows split over batches
    for item, plain in zip(ITEMS, scores[0].option_logprobs, strict=True):
        assert plain == pytest.approx(manual_letter_logprobs(sharp_llama, letter_prompt(tiny_lm, item)), abs=TOL)
    for q, item in enumerate(ITEMS):
        text = letter_prompt(tiny_lm, item)
        one = manual_letter_logprobs(sharp_llama, text, SteeringHook(sharp_llama, 1, v, 4.0))
        assert scores[1].option_logprobs[q] == pytest.approx(one, abs=TOL)
        from traitlab.core.hooks import MultiLayerSteering

        two = manual_letter_logprobs(sharp_llama, text, MultiLayerSteering(sharp_llama, [(1, v, -4.0), (2, v, 2.0)]))
        assert scores[2].option_logprobs[q] == pytest.approx(two, abs=TOL)
        assert abs(scores[1].option_logprobs[q][0] - scores[0].option_logprobs[q][0]) > 1e-3  # steering acted


def test_choice_scores_accuracy_ties_and_categories():
    s = ChoiceScores([[-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -3.0, -3.0], [-5.0, -4.0, -3.0, -0.5]],
                     answers=[0, 1, 2], categories=["a", "b", "a"])
    assert s.correct == [True, False, False]  # a tie for the top is not a correct answer
    assert s.accuracy == pytest.approx(1 / 3) and s.n_correct == 1
    assert s.predicted() == [0, 0, 3]
    assert s.by_category() == {"a": (1, 2), "b": (0, 1)}
    assert s.correct_logprob == pytest.approx((-1.0 - 1.0 - 3.0) / 3)
    assert math.isnan(ChoiceScores([], []).accuracy)
    acc = s.accuracy_interval()
    assert (acc.mean, acc.n) == (pytest.approx(1 / 3), 3) and 0.0 < acc.low < 1 / 3 < acc.high < 1.0


def test_change_from_pairs_items():
    # Steered gets items 1 and 2 right, unsteered items 0 and 1: +0 overall, one item gained, one lost.
    ref = ChoiceScores([[0.0, -1, -1, -1], [-1, 0.0, -1, -1], [0.0, -1, -1, -1]], answers=[0, 1, 2])
    steered = ChoiceScores([[-1, 0.0, -1, -1], [-1, 0.0, -1, -1], [-1, -1, 0.0, -1]], answers=[0, 1, 2])
    change = steered.change_from(ref)
    assert change.mean == 0.0 and change.n == 3 and change.low < 0 < change.high
    gain = steered.change_from(ChoiceScores([[0.0, -1, -1, -1]] * 3, answers=[0, 1, 2]))  # ref: 1 of 3
    assert gain.mean == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="not on the same items"):
        steered.change_from(ChoiceScores([[0.0, -1, -1, -1]] * 3, answers=[0, 1, 1]))


def test_bad_arguments_fail_before_any_forward(tiny_lm):
    with pytest.raises(ConfigError, match=r"capability\.scoring: 'cloze' is not one of letter, text"):
        score_choices(tiny_lm, ITEMS, scoring="cloze")
    with pytest.raises(ModelError, match="settings is empty"):
        score_choices(tiny_lm, ITEMS, [])
    with pytest.raises(ModelError, match="no items"):
        score_choices(tiny_lm, [])


def test_settings_share_the_layers_below_their_steering(tiny_lm, sharp_llama):
    """Three settings steering at layer 2 over the same 12 text rows: layers 0-1 run each distinct row once
    (12), layers 2-3 every row (36), and the steered scores still match a single-row hand computation."""
    v = torch.randn(32, generator=torch.Generator().manual_seed(5))
    settings = [None, [(2, v, 3.0)], [(2, v, -3.0)]]
    seen = {0: 0, 1: 0, 2: 0, 3: 0}

    def counter(i):
        def pre(module, args, kwargs):
            seen[i] += (args[0] if args else kwargs["hidden_states"]).shape[0]
        return pre

    handles = [sharp_llama.model.layers[i].register_forward_pre_hook(counter(i), with_kwargs=True) for i in seen]
    try:
        scores = score_choices(tiny_lm, ITEMS, settings, scoring="text", batch_size=36, desc=None)
    finally:
        for h in handles:
            h.remove()
    assert seen == {0: 12, 1: 12, 2: 36, 3: 36}
    tok = CharTokenizer()
    for q, item in enumerate(ITEMS):
        prompt, reply = text_prompt(tiny_lm, item, 1)
        p_ids = tok(prompt)["input_ids"]
        ids = torch.tensor([p_ids + tok(reply, add_special_tokens=False)["input_ids"]])
        with torch.no_grad(), SteeringHook(sharp_llama, 2, v, -3.0):
            lp = torch.log_softmax(sharp_llama(input_ids=ids).logits[0].double(), dim=-1)
        expected = sum(float(lp[t - 1, ids[0, t]]) for t in range(len(p_ids), ids.shape[1]))
        assert scores[2].option_logprobs[q][1] == pytest.approx(expected, abs=TOL)
