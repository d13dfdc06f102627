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


def _oom_above(rows: int, monkeypatch) -> list[int]:
    """Make a batch of more than `rows` rows run out of memory (simulated); returns the batch sizes tried."""
    real, sizes = prop._mean_logprobs, []

    def small_memory(batch, logits, ids):
        sizes.append(len(batch))
        if len(batch) > rows:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return real(batch, logits, ids)

    monkeypatch.setattr(prop, "_mean_logprobs", small_memory)
    return sizes


def test_rows_stay_aligned_when_a_batch_halves_on_oom(tiny_lm, monkeypatch):
    rows = _rows()
    g = torch.Generator().manual_seed(2)
    v = torch.randn(32, generator=g)
    settings = [[(2, v, float(c))] for c in (3.0, -2.0, 0.0, 5.0, 1.0)]
    whole = prop.response_logprobs(tiny_lm, rows, settings, batch_size=8)
    sizes = _oom_above(3, monkeypatch)
    split = prop.response_logprobs(tiny_lm, rows, settings, batch_size=8)
    assert sizes == [5, 2, 3]  # split once, rows kept in order
    assert split == pytest.approx(whole, abs=1e-5)


def test_empty_response_is_nan(tiny_lm):
    got = prop.response_logprobs(tiny_lm, [Encoded([5, 6, 7], 3), Encoded([5, 6, 7], 2)], [None, None])
    assert got[0] != got[0] and got[1] == pytest.approx(_expected(tiny_lm.model, Encoded([5, 6, 7], 2)), abs=1e-5)


def _rows_seen(model, layers):
    """{layer: rows that entered it} over the forwards run inside the returned counter's block."""
    seen = {layer: 0 for layer in layers}
    handles = []

    def count(layer):
        def pre(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            seen[layer] += h.shape[0]
        return pre

    for layer in layers:
        handles.append(model.model.layers[layer].register_forward_pre_hook(count(layer), with_kwargs=True))
    return seen, handles


def test_layers_below_the_steered_one_run_once_per_distinct_row(tiny_lm):
    """K settings over the same rows: layers 0..1 see each distinct row once, layers 2..3 every row, and
    every row still gets what its own unpadded, steered forward gives."""
    base = _rows()[:3]
    g = torch.Generator().manual_seed(3)
    v = torch.randn(32, generator=g)
    coefs = [4.0, -3.0, 1.5, 0.0]  # the last is unsteered: it still needs the upper layers
    rows = [e for _ in coefs for e in base]
    settings = [[(2, v, c)] for c in coefs for _ in base]
    seen, handles = _rows_seen(tiny_lm.model, [0, 1, 2, 3])
    try:
        shared = prop.response_logprobs(tiny_lm, rows, settings, batch_size=12)
    finally:
        for h in handles:
            h.remove()
    assert seen == {0: 3, 1: 3, 2: 12, 3: 12}
    want = [_expected(tiny_lm.model, e, (2, v, c) if c else None) for c in coefs for e in base]
    assert shared == pytest.approx(want, abs=1e-5)
    seen, handles = _rows_seen(tiny_lm.model, [0, 3])
    try:
        unshared = prop.response_logprobs(tiny_lm, rows, settings, batch_size=12, share_trunk=False)
    finally:
        for h in handles:
            h.remove()
    assert seen == {0: 12, 3: 12}
    assert unshared == pytest.approx(want, abs=1e-5)


def test_a_batch_split_on_oom_keeps_the_shared_trunk_aligned(tiny_lm, monkeypatch):
    base = _rows()[:2]
    v = torch.randn(32, generator=torch.Generator().manual_seed(4))
    coefs = [2.0, -1.0, 3.0]
    rows = [e for _ in coefs for e in base]
    settings = [[(1, v, c)] for c in coefs for _ in base]
    sizes = _oom_above(4, monkeypatch)
    got = prop.response_logprobs(tiny_lm, rows, settings, batch_size=6)
    assert sizes == [6, 3, 3]
    want = [_expected(tiny_lm.model, e, (1, v, c)) for c in coefs for e in base]
    assert got == pytest.approx(want, abs=1e-5)
