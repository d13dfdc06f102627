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
