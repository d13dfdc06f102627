"""Can every example of a trait have the tokens a position asks for? Checked before any model loads.

`system` needs a (non-empty) system prompt on every example; `thinking` a given response holding a thinking
block (generated responses are greedy answers without one); `turn[i]:` conversations of more than i turns
(`messages` lines). The token spans themselves come from the chat template later (models/segments.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from traitlab.core.positions import THINKING_TAGS, PositionSpec, parse_position
from traitlab.data.traits import Example, TraitDataset
from traitlab.errors import DataError

_SETS = ("positive", "negative", "ood_positive", "ood_negative")


def _has_thinking(text: str | None) -> bool:
    return bool(text) and any(open_tag in text for open_tag, _ in THINKING_TAGS)


def _problem(spec: PositionSpec, e: Example, use_provided: bool) -> str | None:
    name = spec.text or str(spec)
    if spec.turn is not None:
        if not -e.n_turns <= spec.turn < e.n_turns:
            return (f"position {name!r} needs turn {spec.turn}, but this example has {e.n_turns} turn(s); write "
                    'multi-turn examples as {"messages": [...]} lines')
        turn = spec.turn % e.n_turns
        if spec.frame == "thinking":
            reply = e.history[turn][1] if turn < len(e.history) else (e.response if use_provided else None)
            if not _has_thinking(reply):
                return f"position {name!r} needs a thinking block ({THINKING_TAGS[0][0]}...) in turn {spec.turn}'s reply"
        return None
    if spec.frame == "system" and not e.system_prompt:
        return f"position {name!r} needs a non-empty system_prompt on every example; this one has none"
    if spec.frame == "thinking" and not (use_provided and _has_thinking(e.response)):
        why = "responses are generated (extraction.use_provided_responses=false)" if not use_provided else \
            f"its response has no thinking block ({THINKING_TAGS[0][0]}...{THINKING_TAGS[0][1]})"
        return f"position {name!r} needs a given response with a thinking block on every example; {why}"
    return None


def check_position_frames(position: str | PositionSpec, trait: TraitDataset, use_provided_responses: bool) -> None:
    """Raise DataError at the first example (file:line) that cannot have the position's frame."""
    spec = parse_position(position)
    examples: Iterable[Example] = (e for name in _SETS for e in getattr(trait, name))
    for e in examples:
        why = _problem(spec, e, use_provided_responses)
        if why is not None:
            file, _, line = e.source.rpartition(":")
            raise DataError(trait.path / file if file else trait.path, why,
                            line=int(line) if line.isdigit() else None)
