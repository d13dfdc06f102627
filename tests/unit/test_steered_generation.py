"""Shared-prefill steered generation on the tiny random Llama: the same greedy responses as one plain generate per
batch with PerSampleSteering, however the rows are batched or split, and the layers below a row's steered layer
really run once per prompt."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from traitlab.config.schema import GenerationConfig
from traitlab.core.components import get_module
from traitlab.core.hooks import PerSampleSteering
from traitlab.models.generation import generate_texts
from traitlab.models.steered_generation import generate_steered_shared, row_batches

PROMPTS = ["hello there, how are you?", "what is up", "a much longer prompt about nothing at all!"]


def _unit(seed: int) -> torch.Tensor:
    v = torch.randn(32, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _settings():
    # The tiny model's hidden states have norm ~0.12: coefficients of that order keep the prompt relevant (a
    # much larger delta would make every prompt's response the same, and hide a prompt cache steered wrongly).
    v1, v2 = _unit(1), _unit(2)
    # branch layers 1, 2, none, 1 (two layers), 0, 3: every level of the shared trunk is used
    return [[(1, v1, 0.1)], [(2, v2, 0.075)], None, [(1, v1, 0.025), (3, v2, 0.05)], [(0, v2, 0.05)],
            [(3, v1, -0.075)]]


def _unshared(lm, settings, gen):
    """The reference: rows = setting x prompt in plain generate batches, PerSampleSteering on every row."""
    n = len(PROMPTS)
    texts = [t for _ in settings for t in PROMPTS]
    configs = [(layer, v, c, si * n + q) for si, s in enumerate(settings) if s for layer, v, c in s
               for q in range(n)]
    hook = PerSampleSteering(lm.model, configs, batch_size=len(texts))

    @contextmanager
    def per_row(rows):
        with hook, hook.rows(rows):
            yield

    gens = generate_texts(lm, texts, max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size, hooks=per_row,
                          desc=None)
    return [[g.text for g in gens[si * n:(si + 1) * n]] for si in range(len(settings))]


@pytest.mark.parametrize("batch_size", [64, 7, 2])
def test_shared_prefill_gives_the_unshared_greedy_responses(tiny_lm, batch_size):
    settings = _settings()
    gen = GenerationConfig(max_new_tokens=8, batch_size=batch_size)
    shared = generate_steered_shared(tiny_lm, PROMPTS, settings, gen=gen)
    reference = _unshared(tiny_lm, settings, GenerationConfig(max_new_tokens=8, batch_size=64))
    assert shared == reference
    # every setting changed what the unsteered setting (index 2) says, and the prompt still matters
    assert all(shared[si] != shared[2] for si in range(len(settings)) if si != 2)
    assert all(len(set(responses)) > 1 for responses in shared)


def test_layers_below_the_steered_layer_run_once_per_prompt(tiny_lm):
    settings = [[(2, _unit(3), 0.03 * (i + 1))] for i in range(4)]  # K = 4, all branching at layer 2
    width = max(len(tiny_lm.tokenizer(p)["input_ids"]) for p in PROMPTS)
    seen: dict[int, list[tuple[int, int]]] = {0: [], 2: []}
    handles = [get_module(tiny_lm.model, layer).register_forward_hook(
        lambda m, a, o, layer=layer: seen[layer].append(tuple(o[0].shape[:2] if isinstance(o, tuple) else o.shape[:2])))
        for layer in seen]
    try:
        out = generate_steered_shared(tiny_lm, PROMPTS, settings, gen=GenerationConfig(max_new_tokens=3, batch_size=64))
    finally:
        for h in handles:
            h.remove()
    rows = len(settings) * len(PROMPTS)
    prefill = {layer: [s for s in shapes if s[1] > 1] for layer, shapes in seen.items()}
    # below the branch: the 3 prompts once; from the branch up: every row; the last prompt column goes with decoding
    assert prefill[0] == [(len(PROMPTS), width - 1)]
    assert prefill[2] == [(rows, width - 1)]
    assert all(s == (rows, 1) for s in seen[0] if s[1] == 1)
    assert out == _unshared(tiny_lm, settings, GenerationConfig(max_new_tokens=3, batch_size=64))


def test_out_of_memory_halving_keeps_each_rows_steering(tiny_lm):
    settings = _settings()[:3]  # 9 rows in one batch, split once into 4 + 5
    limit = 5

    def oom_above_limit(module, args, output):  # a batch wider than `limit` rows does not fit
        h = output[0] if isinstance(output, tuple) else output
        if h.shape[0] > limit:
            raise torch.OutOfMemoryError(f"{h.shape[0]} rows > {limit}")

    handle = get_module(tiny_lm.model, 1).register_forward_hook(oom_above_limit)
    try:
        shared = generate_steered_shared(tiny_lm, PROMPTS, settings,
                                         gen=GenerationConfig(max_new_tokens=6, batch_size=64))
    finally:
        handle.remove()
    assert shared == _unshared(tiny_lm, settings, GenerationConfig(max_new_tokens=6, batch_size=64))
    assert shared[0] != shared[2] and shared[1] != shared[2]


def test_row_batches_keep_a_prompts_settings_together():
    from traitlab.models.encoding import Encoded

    enc = [Encoded(list(range(n)), n) for n in (3, 9, 5)]
    # 2 settings x 3 prompts; batch of 4 rows = 2 prompts, longest first (prompt 1, then 2, then 0)
    assert row_batches(enc, 2, 4) == [[1, 4, 2, 5], [0, 3]]
    assert row_batches(enc, 3, 2) == [[1, 4], [7], [2, 5], [8], [0, 3], [6]]
    with pytest.raises(ValueError, match="batch_size"):
        row_batches(enc, 2, 0)
