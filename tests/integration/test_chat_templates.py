"""Chat formatting on real tokenizers: SmolLM2's template, and templates with a thinking block."""

from __future__ import annotations

import pytest

from traitlab.models.chat import format_prompt

pytestmark = pytest.mark.slow

SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM"


def test_empty_system_prompt_is_kept_not_replaced_by_the_default(smollm2_tokenizer) -> None:
    """data docs: an empty system_prompt differs from none; SmolLM2 inserts its default only for none."""
    none = format_prompt(smollm2_tokenizer, "Hi", None)
    empty = format_prompt(smollm2_tokenizer, "Hi", "")
    assert SMOLLM2_DEFAULT_SYSTEM in none
    assert SMOLLM2_DEFAULT_SYSTEM not in empty
    assert empty == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# ---- position frames from the template's real token spans ---------------------------------------------------

THINKING_TEMPLATE = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")


@pytest.fixture(scope="module")
def thinking_tokenizer():
    """SmolLM2's vocabulary with <think>/</think> as added tokens and a Qwen3-style template, built offline."""
    from transformers import AutoTokenizer

    from traitlab.models.loading import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    tok.chat_template = THINKING_TEMPLATE
    return tok


def _text(tok, ids, span) -> str:
    return tok.decode(ids[span[0]:span[1]])


def test_system_frame_is_the_system_prompt(smollm2_tokenizer) -> None:
    from traitlab.core.positions import resolve_span
    from traitlab.models.chat import format_conversation
    from traitlab.models.encoding import encode
    from traitlab.models.segments import encode_with_segments

    tok = smollm2_tokenizer
    layout = format_conversation(tok, "How is the weather?", "Be cheerful always.")
    enc, seg = encode_with_segments(tok, layout, "Sunny and warm!")
    assert enc.ids == encode(tok, layout.text, "Sunny and warm!").ids  # the same tokens capture runs on
    assert _text(tok, enc.ids, resolve_span("system", seg)) == "Be cheerful always."
    assert _text(tok, enc.ids, resolve_span("system[-1]", seg)) == "."
    assert _text(tok, enc.ids, resolve_span("response", seg)) == "Sunny and warm!"


def test_turn_frames_of_a_multi_turn_conversation(smollm2_tokenizer) -> None:
    from traitlab.core.positions import resolve_span
    from traitlab.models.chat import format_conversation
    from traitlab.models.segments import encode_with_segments

    tok = smollm2_tokenizer
    layout = format_conversation(tok, "And 3+3?", "Answer briefly.", history=[("What is 2+2?", "It is 4.")])
    enc, seg = encode_with_segments(tok, layout, "It is 6.")
    assert len(seg.turns) == 2
    assert _text(tok, enc.ids, resolve_span("turn[0]:response", seg)) == "It is 4."
    assert _text(tok, enc.ids, resolve_span("turn[-1]:response", seg)) == "It is 6."
    first_prompt = _text(tok, enc.ids, resolve_span("turn[0]:prompt", seg))
    assert "What is 2+2?" in first_prompt and first_prompt.endswith("<|im_start|>assistant\n")
    assert "Answer briefly." not in first_prompt  # the system prompt is not part of a turn
    last_prompt = _text(tok, enc.ids, resolve_span("turn[1]:prompt", seg))
    assert "And 3+3?" in last_prompt and "It is 4." not in last_prompt
    assert resolve_span("turn[1]:prompt[-1]", seg) == resolve_span("prompt[-1]", seg)
    assert _text(tok, enc.ids, resolve_span("system", seg)) == "Answer briefly."


def test_thinking_frame_on_a_thinking_template(thinking_tokenizer) -> None:
    from types import SimpleNamespace

    from traitlab.core.positions import resolve_span
    from traitlab.data import Example
    from traitlab.models.segments import encode_with_segments
    from traitlab.pipelines.common import prompt_layouts

    tok = thinking_tokenizer
    response = "<think>The user wants cheer. I will be upbeat.</think>\n\nWhat a lovely day!"
    lm = SimpleNamespace(tokenizer=tok, use_chat_template=True)
    (layout,) = prompt_layouts(lm, [Example("How is today?")], [response])
    assert "<think>" not in layout.text  # thinking mode: the template leaves the block to the response
    enc, seg = encode_with_segments(tok, layout, response)
    assert _text(tok, enc.ids, resolve_span("thinking", seg)) == "The user wants cheer. I will be upbeat."
    assert resolve_span("turn[-1]:thinking", seg) == resolve_span("thinking", seg)
    (plain,) = prompt_layouts(lm, [Example("How is today?")], ["What a lovely day!"])
    assert plain.text.endswith("<think>\n\n</think>\n\n")  # no thinking in the response: the block is closed


def _find(seq: list[int], sub: list[int]) -> int:
    return next(i for i in range(len(seq) - len(sub) + 1) if seq[i:i + len(sub)] == sub)


def test_capture_pools_the_system_prompt_tokens(smollm2) -> None:
    """Pooled over `system` equals the mean of the system prompt's tokens in a plain forward (found by
    searching its own tokenisation in the sequence, independently of the offset mapping)."""
    import torch

    from traitlab.data import Example
    from traitlab.models.capture import TextPair, capture_pooled
    from traitlab.models.encoding import encode
    from traitlab.pipelines.common import prompt_layouts

    tok = smollm2.tokenizer
    examples = [Example("How is the weather?", "Be cheerful always."), Example("Any news?", "You are gloomy.")]
    responses = ["Sunny!", "Nothing good."]
    layouts = prompt_layouts(smollm2, examples, responses)
    pairs = [TextPair(lay.text, r, lay) for lay, r in zip(layouts, responses, strict=True)]
    pooled = capture_pooled(smollm2, pairs, position="system", layers=[4], batch_size=2, desc=None)
    for i, (e, p) in enumerate(zip(examples, pairs, strict=True)):
        ids = encode(tok, p.prompt_text, p.response).ids
        sys_ids = tok(e.system_prompt, add_special_tokens=False)["input_ids"]
        lo = _find(ids, sys_ids)
        with torch.inference_mode():
            hs = smollm2.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[5][0]
        assert torch.allclose(pooled[i, 0], hs[lo:lo + len(sys_ids)].mean(0), atol=1e-3, rtol=1e-4)


def test_extract_rejects_a_frame_the_data_lacks_before_loading(tmp_path, monkeypatch) -> None:
    import json

    from traitlab.config.schema import ExtractConfig, PositionConfig, TraitConfig
    from traitlab.errors import DataError
    from traitlab.pipelines import extract

    d = tmp_path / "t"
    d.mkdir()
    for name in ("positive", "negative"):
        (d / f"{name}.jsonl").write_text(json.dumps({"prompt": "Hi", "response": "Hello"}) + "\n")

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(extract, "load_model", no_model)
    with pytest.raises(DataError, match=r"positive\.jsonl:1: position 'system' needs a non-empty system_prompt"):
        extract.run_extract(ExtractConfig(trait=TraitConfig(path=str(d)), position=PositionConfig(spec="system")))
