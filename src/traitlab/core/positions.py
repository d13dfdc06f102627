"""The position DSL: which tokens of an example a vector is extracted from, steered at or scored on.

This module is the single source of truth for the grammar::

    SPEC   := [ "turn[" INT "]:" ] FRAME [ "[" SLICE "]" ]
    FRAME  := prompt | response | all | system | thinking
    SLICE  := INT | [INT] ":" [INT]          (Python semantics, negative indices allowed, no step)

A bare frame (``response``) means the whole frame (``response[:]``). ``prompt[-1]`` is one token (the last
prompt token, i.e. the assistant header), ``response[:5]`` the first five response tokens, ``all[:]`` every
token. ``turn[i]:`` first picks turn *i* of a multi-turn conversation (Python indexing, so ``turn[-1]`` is
the last), then the frame is taken inside that turn.

``system`` is the text of the example's system prompt, ``thinking`` the text inside the response's thinking
block (``<think>...</think>``, see ``THINKING_TAGS``). Their token spans come from the chat template's real
rendering (models/segments.py); an example without such a part fails before any model loads
(data/frames.py).

Spans are half-open ``[start, stop)``. :func:`resolve_span` works in unpadded coordinates of one example;
:func:`resolve_batch` shifts them into a padded batch so capture hooks can pool in-hook.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from traitlab.errors import TraitlabError

FRAMES = ("prompt", "response", "all", "system", "thinking")
THINKING_TAGS = (("<think>", "</think>"),)  # (open, close) of a reasoning block inside a response
TURN_FRAMES = ("prompt", "response", "all", "thinking")
GRAMMAR = (
    "expected FRAME[slice] with FRAME in prompt|response|all|system|thinking, optionally prefixed by "
    "turn[i]: (e.g. prompt[-1], response[:5], all[:])"
)

_SPEC_RE = re.compile(
    r"^(?:turn\[\s*(?P<turn>[^\]]*?)\s*\]:)?(?P<frame>[A-Za-z_]\w*)(?:\[(?P<slice>[^\]]*)\])?$"
)
_INT_RE = re.compile(r"^[+-]?\d+$")


class PositionError(TraitlabError, ValueError):
    """A position spec that does not parse, or that selects no tokens on a given example."""


def _grammar_error(text: str, reason: str) -> PositionError:
    return PositionError(f"position {text!r}: {reason}; {GRAMMAR}")


@dataclass(frozen=True)
class PositionSpec:
    """A parsed position: ``frame[start:stop]``, optionally inside turn ``turn``.

    ``single`` marks an index (``prompt[-1]``) rather than a slice; it resolves to exactly one token or fails.
    ``text`` is the string as the user wrote it (for messages); ``str(spec)`` is the canonical form, so
    ``response`` and ``response[:]`` give the same cache keys and tags.
    """

    frame: str
    start: int | None = None
    stop: int | None = None
    turn: int | None = None
    single: bool = False
    text: str = field(default="", compare=False)

    def __str__(self) -> str:
        prefix = f"turn[{self.turn}]:" if self.turn is not None else ""
        if self.single:
            body = f"[{self.start}]"
        else:
            lo = "" if self.start is None else str(self.start)
            hi = "" if self.stop is None else str(self.stop)
            body = f"[{lo}:{hi}]"
        return f"{prefix}{self.frame}{body}"


def _parse_int(text: str, part: str, what: str) -> int:
    if not _INT_RE.match(part):
        raise _grammar_error(text, f"{what} {part!r} is not an integer")
    return int(part)


def parse_position(spec: str | PositionSpec) -> PositionSpec:
    """Parse a DSL string; a PositionSpec passes through unchanged. Raises PositionError with the grammar."""
    if isinstance(spec, PositionSpec):
        return spec
    if not isinstance(spec, str):
        raise PositionError(f"position {spec!r}: expected a string; {GRAMMAR}")
    text = spec
    compact = re.sub(r"\s+", "", spec)
    if not compact:
        raise _grammar_error(text, "empty position")
    m = _SPEC_RE.match(compact)
    if m is None:
        raise _grammar_error(text, "cannot parse")
    turn = None
    if m.group("turn") is not None:
        turn = _parse_int(text, m.group("turn"), "turn index")
    frame = m.group("frame")
    if frame not in FRAMES:
        raise _grammar_error(text, f"unknown frame {frame!r}")
    if turn is not None and frame not in TURN_FRAMES:
        raise _grammar_error(
            text, f"frame {frame!r} is not available inside a turn (use {'|'.join(TURN_FRAMES)})"
        )
    body = m.group("slice")
    if body is None or body == ":":
        return PositionSpec(frame, None, None, turn, False, text)
    parts = body.split(":")
    if len(parts) == 1:
        index = _parse_int(text, parts[0], "index")
        return PositionSpec(frame, index, None, turn, True, text)
    if len(parts) > 2:
        raise _grammar_error(text, f"slice [{body}] has a step, which is not supported")
    start = None if parts[0] == "" else _parse_int(text, parts[0], "slice start")
    stop = None if parts[1] == "" else _parse_int(text, parts[1], "slice stop")
    return PositionSpec(frame, start, stop, turn, False, text)


Span = tuple[int, int]


@dataclass(frozen=True)
class Turn:
    """One user->assistant exchange, in unpadded token coordinates of the whole sequence.

    ``[start, response_start)`` is the turn's prompt part (user message and template up to the assistant
    header), ``[response_start, stop)`` its response. ``response_start=None`` marks a turn whose split is
    unknown: only ``all`` (and ``thinking`` when given) can be selected in it. ``thinking`` is the span of a
    reasoning block inside the response, if any.
    """

    start: int
    stop: int
    response_start: int | None = None
    thinking: Span | None = None


@dataclass(frozen=True)
class Segments:
    """Boundaries of one example in UNPADDED token coordinates (index 0 = first real token).

    The prompt is ``[0, prompt_len)`` and the response ``[prompt_len, seq_len)``; ``system`` and ``thinking``
    are optional ``(start, stop)`` spans; ``turns`` lists :class:`Turn` objects (a plain ``(start, stop)`` or
    ``(start, response_start, stop)`` tuple is converted). Construction validates every span so a bad
    tokenisation fails here, not as a silent wrong slice in a hook.
    """

    prompt_len: int
    seq_len: int
    system: Span | None = None
    thinking: Span | None = None
    turns: tuple[Turn, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.prompt_len <= self.seq_len:
            raise PositionError(
                f"segments: need 0 <= prompt_len <= seq_len, got prompt_len {self.prompt_len}, seq_len {self.seq_len}"
            )
        object.__setattr__(self, "turns", tuple(_as_turn(t) for t in self.turns))
        for name, span in (("system", self.system), ("thinking", self.thinking)):
            if span is not None:
                self._check(name, span)
        for i, t in enumerate(self.turns):
            self._check(f"turns[{i}]", (t.start, t.stop))
            if t.response_start is not None and not t.start <= t.response_start <= t.stop:
                raise PositionError(
                    f"segments: turns[{i}] response_start {t.response_start} is outside [{t.start}, {t.stop}]"
                )
            if t.thinking is not None:
                self._check(f"turns[{i}].thinking", t.thinking)

    def _check(self, name: str, span: Span) -> None:
        lo, hi = span
        if not 0 <= lo <= hi <= self.seq_len:
            raise PositionError(
                f"segments: {name} span ({lo}, {hi}) is not within [0, seq_len={self.seq_len}]"
            )


def _as_turn(t: Turn | Sequence[int]) -> Turn:
    if isinstance(t, Turn):
        return t
    if len(t) == 2:
        return Turn(start=int(t[0]), stop=int(t[1]))
    if len(t) == 3:
        return Turn(start=int(t[0]), response_start=int(t[1]), stop=int(t[2]))
    raise PositionError(f"segments: a turn must be (start, stop) or (start, response_start, stop), got {t!r}")


def _frame_span(p: PositionSpec, seg: Segments) -> tuple[Span, str]:
    """The frame's [lo, hi) before slicing, plus a description of the lengths for error messages."""
    lengths = f"prompt_len {seg.prompt_len}, seq_len {seg.seq_len}"
    if p.turn is None:
        if p.frame == "prompt":
            return (0, seg.prompt_len), lengths
        if p.frame == "response":
            return (seg.prompt_len, seg.seq_len), lengths
        if p.frame == "all":
            return (0, seg.seq_len), lengths
        span = seg.system if p.frame == "system" else seg.thinking
        if span is None:
            raise PositionError(
                f"position {p.text or str(p)!r}: this example has no {p.frame} segment ({lengths})"
            )
        return span, lengths
    n = len(seg.turns)
    if not -n <= p.turn < n:
        raise PositionError(
            f"position {p.text or str(p)!r}: turn {p.turn} does not exist; the example has {n} turn(s)"
        )
    t = seg.turns[p.turn]
    lengths = f"turn {p.turn} spans [{t.start}, {t.stop})"
    if p.frame == "all":
        return (t.start, t.stop), lengths
    if p.frame == "thinking":
        if t.thinking is None:
            raise PositionError(
                f"position {p.text or str(p)!r}: turn {p.turn} has no thinking segment ({lengths})"
            )
        return t.thinking, lengths
    if t.response_start is None:
        raise PositionError(
            f"position {p.text or str(p)!r}: turn {p.turn} has no prompt/response boundary ({lengths}); "
            "only all and thinking can be selected in it"
        )
    lengths += f", response starts at {t.response_start}"
    return ((t.start, t.response_start) if p.frame == "prompt" else (t.response_start, t.stop)), lengths


def resolve_span(spec: str | PositionSpec, segments: Segments) -> Span:
    """Absolute half-open [start, stop) of the selected tokens in unpadded coordinates; never empty."""
    p = parse_position(spec)
    (lo, hi), lengths = _frame_span(p, segments)
    frame_len = hi - lo
    name = p.text or str(p)
    if p.single:
        i = p.start + frame_len if p.start < 0 else p.start
        if not 0 <= i < frame_len:
            raise PositionError(
                f"position {name!r}: index {p.start} is out of range for a {p.frame} of {frame_len} token(s) "
                f"({lengths})"
            )
        return lo + i, lo + i + 1
    r = range(frame_len)[slice(p.start, p.stop)]
    if len(r) == 0:
        raise PositionError(
            f"position {name!r}: selects no tokens; the {p.frame} frame is [{lo}, {hi}) "
            f"({frame_len} token(s); {lengths})"
        )
    return lo + r.start, lo + r.stop


def resolve_batch(
    spec: str | PositionSpec,
    segments: Sequence[Segments],
    padded_len: int,
    padding_side: str = "left",
) -> torch.LongTensor:
    """Per-row [start, stop) in the PADDED batch, shape [B, 2], for pooling inside capture hooks.

    With left padding row b's real tokens start at ``padded_len - seq_len``, so every span shifts by that much.
    """
    if padding_side not in ("left", "right"):
        raise PositionError(f"padding_side {padding_side!r}: expected 'left' or 'right'")
    p = parse_position(spec)
    out = torch.empty((len(segments), 2), dtype=torch.long)
    for b, seg in enumerate(segments):
        if seg.seq_len > padded_len:
            raise PositionError(
                f"position {p.text or str(p)!r}: row {b} has seq_len {seg.seq_len} > padded_len {padded_len}"
            )
        try:
            lo, hi = resolve_span(p, seg)
        except PositionError as e:
            raise PositionError(f"row {b}: {e}") from None
        shift = padded_len - seg.seq_len if padding_side == "left" else 0
        out[b, 0] = lo + shift
        out[b, 1] = hi + shift
    return out
