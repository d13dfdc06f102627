"""Shared-prefill steered generation on the real SmolLM2: the same greedy responses as the unshared path (one
plain generate per batch with PerSampleSteering on every row), in one batch and split into sub-batches."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from traitlab.config.schema import GenerationConfig
from traitlab.core.hooks import PerSampleSteering
from traitlab.models.chat import format_prompt
from traitlab.models.generation import generate_texts
from traitlab.models.steered_generation import generate_steered_shared


@pytest.mark.slow
def test_shared_prefill_gives_the_unshared_greedy_responses_on_smollm2(smollm2):
    lm = smollm2
    questions = ["What should I know before adopting a dog?", "How does the stock market work?"]
    texts = [format_prompt(lm.tokenizer, q, None, lm.use_chat_template) for q in questions]
    g = torch.Generator().manual_seed(0)
    v10, v12 = torch.randn(576, generator=g), torch.randn(576, generator=g)
    v10, v12 = v10 / v10.norm(), v12 / v12.norm()
    settings = [[(10, v10, 40.0)], [(12, v12, 30.0)], None, [(10, v10, 15.0), (12, v12, 15.0)]]
    n = len(texts)
    rows = [t for _ in settings for t in texts]
    hook = PerSampleSteering(lm.model, [(layer, v, c, si * n + q) for si, s in enumerate(settings) if s
                                        for layer, v, c in s for q in range(n)], batch_size=len(rows))

    @contextmanager
    def per_row(idx):
        with hook, hook.rows(idx):
            yield

    gens = generate_texts(lm, rows, max_new_tokens=10, batch_size=64, hooks=per_row, desc=None)
    reference = [[x.text for x in gens[si * n:(si + 1) * n]] for si in range(len(settings))]
    shared = generate_steered_shared(lm, texts, settings, gen=GenerationConfig(max_new_tokens=10, batch_size=64))
    assert shared == reference
    assert all(shared[si] != shared[2] for si in (0, 1, 3))  # each steering changed the unsteered responses
    split = generate_steered_shared(lm, texts, settings, gen=GenerationConfig(max_new_tokens=10, batch_size=3))
    assert split == reference
