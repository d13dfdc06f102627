"""The real embedded SmolLM2: loading from the cache, chat generation, steering and ablation."""

from __future__ import annotations

import pytest
import torch

from traitlab.core.hooks import AblationHook, CaptureHook, SteeringHook
from traitlab.models.chat import format_prompt
from traitlab.models.generation import generate_texts
from traitlab.models.loading import embedded_model_dir, load_model

pytestmark = pytest.mark.slow


def _prompt(lm, text):
    return format_prompt(lm.tokenizer, text, None, lm.use_chat_template)


def test_loads_from_safetensors_cache(smollm2):
    cache = embedded_model_dir()
    assert any(cache.glob("*.safetensors")) and (cache / "SOURCE").is_file()
    assert smollm2.n_layers == 30 and smollm2.hidden_size == 576
    assert smollm2.tokenizer.padding_side == "left"
    assert smollm2.use_chat_template
    # reuse: the in-process cache hands back the same object (one load per process)
    assert load_model("smollm2_135m") is smollm2


def test_generates_coherent_chat_answer(smollm2):
    out = generate_texts(smollm2, [_prompt(smollm2, "What is the capital of France?")], max_new_tokens=16, desc=None)
    assert "Paris" in out[0].text


def test_batched_generation_matches_single(smollm2):
    prompts = [_prompt(smollm2, q) for q in ("What is the capital of France?", "Name a primary colour, briefly.")]
    batched = generate_texts(smollm2, prompts, max_new_tokens=12, batch_size=2, desc=None)
    single = [generate_texts(smollm2, [p], max_new_tokens=12, batch_size=1, desc=None)[0] for p in prompts]
    assert [b.text for b in batched] == [s.text for s in single]


def test_large_steering_coefficient_changes_output(smollm2):
    prompt = [_prompt(smollm2, "What is the capital of France?")]
    plain = generate_texts(smollm2, prompt, max_new_tokens=16, desc=None)[0].text
    v = torch.randn(576, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    with SteeringHook(smollm2.model, 12, v, coefficient=80.0):
        steered = generate_texts(smollm2, prompt, max_new_tokens=16, desc=None)[0].text
    assert steered != plain
    after = generate_texts(smollm2, prompt, max_new_tokens=16, desc=None)[0].text
    assert after == plain  # the hook is gone


def test_ablation_leaves_direction_projection_near_zero(smollm2):
    tok = smollm2.tokenizer
    ids = tok(_prompt(smollm2, "Tell me about the ocean."), return_tensors="pt")
    with CaptureHook(smollm2.model, 10, pool="mean") as cap:
        smollm2.model(**ids)
    direction = cap.get()[0]  # the layer's own mean activation: a direction with a large projection
    unit = direction / direction.norm()
    with AblationHook(smollm2.model, 10, direction), CaptureHook(smollm2.model, 10, pool="none") as cap2:
        smollm2.model(**ids)
    with CaptureHook(smollm2.model, 10, pool="none") as cap3:
        smollm2.model(**ids)
    before = (cap3.get()[0] @ unit).abs().max().item()
    after = (cap2.get()[0] @ unit).abs().max().item()
    assert before > 1.0
    assert after < 1e-3
