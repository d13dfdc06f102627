"""capture_pooled on the tiny random Llama against each example run ALONE (no padding) with raw torch hooks:
left-padded batches must give every row the same pooled activations, whichever position is asked, and tokens
after a row's span are never run."""

from __future__ import annotations

import pytest
import torch

from traitlab.core.components import get_module
from traitlab.core.positions import Segments, resolve_span
from traitlab.models.capture import TextPair, capture_pooled, encode_pairs

PAIRS = [TextPair("hi, who are you?", " i am a small model."), TextPair("why", " because it is so, and that is all!"),
         TextPair("a question that goes on for a while?", " yes"), TextPair("ok?", " fine, thanks")]
LAYERS = [0, 2, 3]


@torch.no_grad()
def _alone(lm, position: str) -> torch.Tensor:
    """[N, len(LAYERS), D]: each example forwarded by itself, block outputs recorded by raw hooks, pooled by hand."""
    out = torch.empty(len(PAIRS), len(LAYERS), lm.hidden_size)
    for i, e in enumerate(encode_pairs(lm, PAIRS)):
        lo, hi = resolve_span(position, Segments(prompt_len=e.prompt_len, seq_len=e.seq_len))
        seen: dict[int, torch.Tensor] = {}
        handles = [get_module(lm.model, layer).register_forward_hook(
            lambda m, a, o, layer=layer, seen=seen: seen.__setitem__(layer, o[0] if isinstance(o, tuple) else o))
            for layer in LAYERS]
        try:
            lm.model(input_ids=torch.tensor([e.ids]))
        finally:
            for h in handles:
                h.remove()
        for j, layer in enumerate(LAYERS):
            out[i, j] = seen[layer][0, lo:hi].mean(0)
    return out


@pytest.mark.parametrize("position", ["response[:]", "prompt[-1]", "response[:3]", "response[-4:-1]", "all[:]"])
def test_left_padded_batches_pool_what_each_example_gives_alone(tiny_lm, position):
    got = capture_pooled(tiny_lm, PAIRS, position=position, layers=LAYERS, batch_size=3, desc=None)
    torch.testing.assert_close(got, _alone(tiny_lm, position), atol=1e-5, rtol=1e-4)


def test_tokens_after_the_span_are_never_run(tiny_lm):
    widths = []
    handle = get_module(tiny_lm.model, 0).register_forward_hook(lambda m, a, o: widths.append(o.shape[1]))
    try:
        capture_pooled(tiny_lm, PAIRS, position="prompt[-1]", layers=[1], batch_size=8, desc=None)
    finally:
        handle.remove()
    prompt_lengths = [e.prompt_len for e in encode_pairs(tiny_lm, PAIRS)]
    assert widths == [max(prompt_lengths)]  # one batch, as wide as the longest prompt: no response column
