"""`batch_size=auto`: one measurement per job on a real forward of the longest row, plain ints pass through."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from traitlab.config.infer import InferenceConfig
from traitlab.config.schema import GenerationConfig
from traitlab.errors import ConfigError
from traitlab.models.batching import check_batch_size, resolve_batch_size
from traitlab.pipelines.common import with_measured_batch_sizes


class CharTokenizer:
    """One token per character (ids 3..127): lengths are known exactly without a vocabulary file."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [3 + ord(c) % 120 for c in text]}


def _lm(model):
    return SimpleNamespace(model=model, tokenizer=CharTokenizer(), device=torch.device("cpu"))


def _recorded_batches(model):
    """(shapes seen by the model's forward, hook handle)."""
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(tuple(kw["input_ids"].shape)),
                                             with_kwargs=True)
    return seen, handle


def test_auto_measures_on_the_longest_row_grown_by_the_generated_tokens(tiny_llama):
    seen, handle = _recorded_batches(tiny_llama)
    try:
        size = resolve_batch_size("auto", _lm(tiny_llama), ["abc", "a" * 20, "hello"], key="x.batch_size",
                                  new_tokens=7)
    finally:
        handle.remove()
    # plenty of memory for a 4-layer toy: the size reaches the cap, the number of texts, by doubling 1, 2, 3
    assert size == 3
    assert seen == [(1, 27), (2, 27), (3, 27)]  # 20 characters + 7 tokens to generate, every probe


def test_auto_grows_up_to_an_explicit_row_cap(tiny_llama):
    seen, handle = _recorded_batches(tiny_llama)
    try:
        size = resolve_batch_size("auto", _lm(tiny_llama), ["abcd"], key="x", max_size=5)
    finally:
        handle.remove()
    assert size == 5 and [b for b, _ in seen] == [1, 2, 4, 5]


def test_an_int_passes_through_without_running_the_model(tiny_llama):
    seen, handle = _recorded_batches(tiny_llama)
    try:
        assert resolve_batch_size(12, _lm(tiny_llama), ["abc"], key="x") == 12
    finally:
        handle.remove()
    assert seen == []


@pytest.mark.parametrize("bad", [0, -3, "big", True, 2.5, None])
def test_bad_batch_sizes_name_the_key(bad):
    with pytest.raises(ConfigError, match="inference.batch_size"):
        check_batch_size(bad, "inference.batch_size")


def test_measured_section_replaces_every_auto_with_an_int(tiny_llama):
    inf = InferenceConfig(batch_size="auto", generation=GenerationConfig(max_new_tokens=5, batch_size="auto"))
    out = with_measured_batch_sizes(inf, _lm(tiny_llama), ["ab", "abcdef"], prefix="inference")
    assert (out.batch_size, out.generation.batch_size) == (2, 2)
    assert inf.batch_size == "auto"  # the config given is not changed in place
    same = InferenceConfig()
    assert with_measured_batch_sizes(same, _lm(tiny_llama), ["ab"], prefix="inference") is same


def test_steering_section_sizes_rows_not_prompts(tiny_llama):
    @dataclass
    class Steering:  # the fields with_measured_batch_sizes reads from SteeringConfig
        batch_size: object = "auto"
        max_new_tokens: int = 4

    out = with_measured_batch_sizes(Steering(), _lm(tiny_llama), ["ab", "abc"], prefix="steering", max_rows=6)
    assert out.batch_size == 6  # question x candidate rows, more than the prompts


def test_traits_searched_together_size_their_shared_generate(tiny_llama):
    """Several traits in one search share each round's generate call: `auto` is sized for all their rows
    (questions x candidates x steered layers, summed over the traits), not for the first trait's."""
    from traitlab.config.steer import SteerConfig, SteeringConfig
    from traitlab.pipelines.steer import _measured_steering

    lm = SimpleNamespace(**vars(_lm(tiny_llama)), use_chat_template=False)
    cfg = SteerConfig(steering=SteeringConfig(batch_size="auto", trials_per_step=3, max_new_tokens=4))
    a = SimpleNamespace(questions=["ab", "abc"], prompted_system="be x")  # 2 questions, 2 layers: 2 x 3 x 2
    b = SimpleNamespace(questions=["abcd"], prompted_system=None)          # 1 question, 1 layer: 1 x 3 x 1
    assert _measured_steering(cfg, lm, [(a, 2), (b, 1)]).steering.batch_size == 12 + 3
    assert _measured_steering(cfg, lm, [(a, 2)]).steering.batch_size == 12
    fixed = SteerConfig(steering=SteeringConfig(batch_size=5))
    assert _measured_steering(fixed, lm, [(a, 2), (b, 1)]) is fixed
