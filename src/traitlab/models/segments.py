"""Token spans of a formatted example: system prompt, turns, thinking block (the `Segments` of core/positions).

The prompt and the response are tokenised exactly as `encode` does (separately, ids concatenated); the
tokenizer's character offsets then map each part's characters (from `PromptLayout`, which the chat template
itself placed) to the tokens that cover them. A token that straddles a boundary counts as part of the
content it overlaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from traitlab.core.positions import THINKING_TAGS, PositionError, Segments, Turn
from traitlab.models.chat import PromptLayout
from traitlab.models.encoding import Encoded, add_special_tokens_for

Offsets = Sequence[tuple[int, int]]


def thinking_chars(text: str) -> tuple[int, int] | None:
    """Character span of the text inside the first thinking block (`<think>...</think>`), if there is one."""
    for open_tag, close_tag in THINKING_TAGS:
        at = text.find(open_tag)
        if at >= 0:
            lo = at + len(open_tag)
            end = text.find(close_tag, lo)
            return lo, (end if end >= 0 else len(text))
    return None


def _tokens(tokenizer: Any, text: str, add_special: bool) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise PositionError("positions system, thinking and turn[i] need a fast tokenizer (character offsets); "
                            f"{type(tokenizer).__name__} has none")
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _token_span(offsets: Offsets, lo: int, hi: int, shift: int = 0) -> tuple[int, int]:
    """Tokens overlapping characters [lo, hi); an empty character span gives an empty token span where it sits."""
    real = [(i, s, e) for i, (s, e) in enumerate(offsets) if e > s]
    start = next((i for i, s, e in real if e > lo), len(offsets))
    stop = next((i for i, s, e in real if s >= hi), len(offsets))
    if hi <= lo:
        stop = start
    return shift + start, shift + max(start, stop)


def encode_with_segments(tokenizer: Any, layout: PromptLayout, response: str | None = None,
                         max_length: int | None = None) -> tuple[Encoded, Segments]:
    """`encode`'s ids for a formatted prompt and response, and the spans of every frame the example has."""
    prompt_ids, prompt_offsets = _tokens(tokenizer, layout.text, add_special_tokens_for(tokenizer, layout.text))
    response_ids, response_offsets = _tokens(tokenizer, response, False) if response else ([], [])
    ids = prompt_ids + response_ids
    if max_length is not None:
        ids = ids[:max_length]
    n_prompt, seq_len = min(len(prompt_ids), len(ids)), len(ids)

    def clip(span: tuple[int, int]) -> tuple[int, int]:
        return min(span[0], seq_len), min(span[1], seq_len)

    system = thinking = None
    turns: list[Turn] = []
    if layout.located:
        if layout.system is not None:
            system = clip(_token_span(prompt_offsets, *layout.system))
        for k, t in enumerate(layout.turns):
            start = 0 if k == 0 and t.start == 0 else _token_span(prompt_offsets, t.start, t.start)[0]
            if t.stop is None:  # the last exchange: its reply is the response
                turns.append(Turn(*clip((start, seq_len)), response_start=n_prompt, thinking=None))
                continue
            reply = _token_span(prompt_offsets, t.response_start, t.stop)
            inner = thinking_chars(layout.text[t.response_start:t.stop])
            turn_thinking = (clip(_token_span(prompt_offsets, t.response_start + inner[0], t.response_start + inner[1]))
                             if inner else None)
            turns.append(Turn(*clip((start, reply[1])), response_start=min(reply[0], seq_len), thinking=turn_thinking))
    inner = thinking_chars(response) if response else None
    if inner is not None:
        thinking = clip(_token_span(response_offsets, *inner, shift=len(prompt_ids)))
        if turns:
            last = turns[-1]
            turns[-1] = Turn(last.start, last.stop, last.response_start, thinking)
    return Encoded(ids=ids, prompt_len=n_prompt), Segments(n_prompt, seq_len, system, thinking, tuple(turns))
