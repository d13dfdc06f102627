"""Left padding must not move a row's positions: every padded forward passes position_ids.

GPT-2 adds an absolute position embedding to each token, so a row that is left-padded in a batch but
numbered from the pad slots would see other embeddings than the same row run alone.
"""

from __future__ import annotations

import pytest
import torch

from traitlab.models.capture import TextPair, capture_pooled
from traitlab.models.encoding import Encoded, encode, pad_id_of
from traitlab.models.loading import LoadedModel, ModelSpec

TEXTS = [("why is the sky blue?", " because of light."), ("hi", " hello there, friend."),
         ("tell me a joke, please.", " no."), ("ok?", " yes")]


@pytest.fixture
def gpt2_lm(tiny_gpt2, char_tokenizer) -> LoadedModel:
    return LoadedModel(tiny_gpt2, char_tokenizer, ModelSpec(name="tiny-gpt2", id="tiny-gpt2"), False)


def _encoded(tok) -> list[Encoded]:
    return [encode(tok, p, r) for p, r in TEXTS]


def test_capture_pooled_is_the_same_padded_and_unpadded(gpt2_lm) -> None:
    pairs = [TextPair(p, r) for p, r in TEXTS]
    alone = capture_pooled(gpt2_lm, pairs, position="all[:]", layers=[0, 2], batch_size=1, desc=None)
    padded = capture_pooled(gpt2_lm, pairs, position="all[:]", layers=[0, 2], batch_size=4, desc=None)
    lengths = {e.seq_len for e in _encoded(gpt2_lm.tokenizer)}
    assert len(lengths) == len(TEXTS)  # every row but the longest is padded in the batch
    assert torch.allclose(alone, padded, atol=1e-5), float((alone - padded).abs().max())


def test_inference_passes_are_the_same_padded_and_unpadded(gpt2_lm) -> None:
    from traitlab.monitor.scoring import capture_encoded, project_encoded

    tok = gpt2_lm.tokenizer
    enc = _encoded(tok)
    v = {1: torch.randn(1, 32, generator=torch.Generator().manual_seed(1))}
    kw = dict(pad_id=pad_id_of(tok), device="cpu")
    alone = project_encoded(gpt2_lm.model, enc, v, batch_size=1, **kw)
    padded = project_encoded(gpt2_lm.model, enc, v, batch_size=4, **kw)
    for a, b in zip(alone, padded, strict=True):
        assert torch.allclose(a.scores[1], b.scores[1], atol=1e-4), float((a.scores[1] - b.scores[1]).abs().max())

    got: dict[int, dict[int, dict[int, torch.Tensor]]] = {1: {}, 4: {}}
    for bs in (1, 4):
        capture_encoded(gpt2_lm.model, enc, [2], lambda i, acts, bs=bs: got[bs].__setitem__(i, acts),
                        batch_size=bs, **kw)
    for i in range(len(enc)):
        assert torch.allclose(got[1][i][2], got[4][i][2], atol=1e-5)
