"""Response log-probs and propensity on the tiny Llama: padded, steered per row and split on OOM, each row must
give what a plain unpadded forward of that row alone gives (computed here with torch, not with the module)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from traitlab.models import propensity as prop
from traitlab.models.encoding import Encoded
from traitlab.models.loading import LoadedModel, ModelSpec


@pytest.fixture
def tiny_lm(tiny_llama):
    return LoadedModel(tiny_llama, SimpleNamespace(pad_token_id=0, eos_token_id=2), ModelSpec(), False)


def _rows() -> list[Encoded]:
    g = torch.Generator().manual_seed(5)
    shapes = [(9, 4), (5, 2), (12, 7), (6, 5), (7, 1)]  # (length, prompt length): different paddings
    return [Encoded(torch.randint(3, 128, (n,), generator=g).tolist(), p) for n, p in shapes]


def _expected(model, e: Encoded, steer: tuple[int, torch.Tensor, float] | None = None) -> float:
    """Mean log-prob of the response tokens, one unpadded row, steering by a plain torch forward hook."""
    handle = None
    if steer is not None:
        layer, v, c = steer

        def add(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            h = h + c * v
            return (h, *output[1:]) if isinstance(output, tuple) else h

        handle = model.model.layers[layer].register_forward_hook(add)
    try:
        with torch.no_grad():
            logits = model(torch.tensor([e.ids])).logits[0].float()
    finally:
        if handle is not None:
            handle.remove()
    logp = torch.log_softmax(logits, -1)
    resp = range(e.prompt_len, e.seq_len)
    return float(torch.stack([logp[t - 1, e.ids[t]] for t in resp]).mean())


def test_padded_batch_matches_each_row_alone(tiny_lm):
    rows = _rows()
    got = prop.response_logprobs(tiny_lm, rows, [None] * len(rows), batch_size=8)
    want = [_expected(tiny_lm.model, e) for e in rows]
    assert got == pytest.approx(want, abs=1e-5)
    # the values are real log-probs of a 128-token vocabulary: about -log(128) for a random model
    assert all(-8 < x < -2 for x in got)


def test_every_row_gets_its_own_steering(tiny_lm):
    rows = _rows()
    g = torch.Generator().manual_seed(11)
    v1, v3 = torch.randn(32, generator=g), torch.randn(32, generator=g)
    settings = [[(1, v1, 2.0)], None, [(3, v3, -4.0)], [(1, v1, 0.5)], [(3, v3, 3.0)]]
    got = prop.response_logprobs(tiny_lm, rows, settings, batch_size=8)
    want = [_expected(tiny_lm.model, e, s[0] if s else None) for e, s in zip(rows, settings, strict=True)]
    assert got == pytest.approx(want, abs=1e-5)
    unsteered = [_expected(tiny_lm.model, e) for e in rows]
    assert abs(got[0] - unsteered[0]) > 1e-3  # steering did change the rows it was given to


def test_rows_stay_aligned_when_a_batch_halves_on_oom(tiny_lm, monkeypatch):
    rows = _rows()
    g = torch.Generator().manual_seed(2)
    v = torch.randn(32, generator=g)
    settings = [[(2, v, float(c))] for c in (3.0, -2.0, 0.0, 5.0, 1.0)]
    whole = prop.response_logprobs(tiny_lm, rows, settings, batch_size=8)
    real = prop._mean_logprobs
    sizes = []

    def small_memory(lm, batch):
        sizes.append(len(batch))
        if len(batch) > 3:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return real(lm, batch)

    monkeypatch.setattr(prop, "_mean_logprobs", small_memory)
    split = prop.response_logprobs(tiny_lm, rows, settings, batch_size=8)
    assert sizes == [5, 2, 3]  # split once, rows kept in order
    assert split == pytest.approx(whole, abs=1e-5)


def test_empty_response_is_nan(tiny_lm):
    got = prop.response_logprobs(tiny_lm, [Encoded([5, 6, 7], 3), Encoded([5, 6, 7], 2)], [None, None])
    assert got[0] != got[0] and got[1] == pytest.approx(_expected(tiny_lm.model, Encoded([5, 6, 7], 2)), abs=1e-5)
