"""The position DSL: parsing, resolution on hand-made segments (incl. turns), padding and every error path."""

from __future__ import annotations

import pytest
import torch

from traitlab.core.positions import (
    PositionError,
    PositionSpec,
    Segments,
    Turn,
    parse_position,
    resolve_batch,
    resolve_span,
)
from traitlab.errors import TraitlabError

# prompt = tokens 0..3, response = tokens 4..6
SEG = Segments(prompt_len=4, seq_len=7)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("prompt[-1]", PositionSpec("prompt", -1, None, None, True)),
        ("prompt[-3:]", PositionSpec("prompt", -3, None)),
        ("response[:5]", PositionSpec("response", None, 5)),
        ("response[:]", PositionSpec("response", None, None)),
        ("response", PositionSpec("response", None, None)),
        ("all[:]", PositionSpec("all", None, None)),
        ("response[2:10]", PositionSpec("response", 2, 10)),
        ("turn[-1]:response[:5]", PositionSpec("response", None, 5, -1)),
        ("turn[0]:thinking[:]", PositionSpec("thinking", None, None, 0)),
        (" response[ 1 : -1 ] ", PositionSpec("response", 1, -1)),
        ("system", PositionSpec("system")),
    ],
)
def test_parse(spec, expected):
    parsed = parse_position(spec)
    assert parsed == expected
    assert parsed.text == spec


def test_canonical_form_merges_equivalent_spellings():
    assert str(parse_position("response")) == str(parse_position("response[:]")) == "response[:]"
    assert str(parse_position("turn[-1]:prompt[-1]")) == "turn[-1]:prompt[-1]"
    assert str(parse_position("all[2:-3]")) == "all[2:-3]"
    spec = parse_position("response[:5]")
    assert parse_position(spec) is spec


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("respnse[:5]", "unknown frame 'respnse'"),
        ("", "empty position"),
        ("response[:5", "cannot parse"),
        ("response[a:5]", "slice start 'a' is not an integer"),
        ("response[1:x]", "slice stop 'x' is not an integer"),
        ("prompt[one]", "index 'one' is not an integer"),
        ("response[::2]", "has a step"),
        ("turn[x]:response", "turn index 'x' is not an integer"),
        ("turn[0]:system[:]", "frame 'system' is not available inside a turn"),
        ("response[:5][1]", "cannot parse"),
    ],
)
def test_parse_errors_quote_spec_and_grammar(spec, fragment):
    with pytest.raises(PositionError) as info:
        parse_position(spec)
    msg = str(info.value)
    assert fragment in msg
    assert f"position {spec!r}" in msg
    assert "prompt|response|all|system|thinking" in msg and "\n" not in msg
    assert isinstance(info.value, TraitlabError) and isinstance(info.value, ValueError)


def test_parse_error_example_message():
    with pytest.raises(PositionError) as info:
        parse_position("respnse[:5]")
    assert str(info.value) == (
        "position 'respnse[:5]': unknown frame 'respnse'; expected FRAME[slice] with FRAME in "
        "prompt|response|all|system|thinking, optionally prefixed by turn[i]: (e.g. prompt[-1], response[:5], all[:])"
    )


def test_non_string_is_rejected():
    with pytest.raises(PositionError, match="expected a string"):
        parse_position(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "span"),
    [
        ("prompt[-1]", (3, 4)),
        ("prompt[0]", (0, 1)),
        ("prompt[-3:]", (1, 4)),
        ("prompt[:]", (0, 4)),
        ("response", (4, 7)),
        ("response[:]", (4, 7)),
        ("response[:5]", (4, 7)),  # Python semantics: a slice past the end is clipped
        ("response[:2]", (4, 6)),
        ("response[1:]", (5, 7)),
        ("response[-1]", (6, 7)),
        ("response[1:-1]", (5, 6)),
        ("all[:]", (0, 7)),
        ("all[2:10]", (2, 7)),
        ("all[-2:]", (5, 7)),
    ],
)
def test_resolve_span(spec, span):
    assert resolve_span(spec, SEG) == span


def test_resolve_matches_python_slicing_everywhere():
    tokens = list(range(7))
    for start in (None, -9, -3, -1, 0, 1, 3, 8):
        for stop in (None, -9, -2, 0, 2, 5, 9):
            lo = "" if start is None else start
            hi = "" if stop is None else stop
            want = tokens[4:][slice(start, stop)]
            if want:
                a, b = resolve_span(f"response[{lo}:{hi}]", SEG)
                assert tokens[a:b] == want, (start, stop)
            else:
                with pytest.raises(PositionError):
                    resolve_span(f"response[{lo}:{hi}]", SEG)


@pytest.mark.parametrize(
    ("spec", "segments", "fragment"),
    [
        (
            "response[:5]",
            Segments(prompt_len=4, seq_len=4),
            "selects no tokens; the response frame is [4, 4)",
        ),
        ("response[3:]", SEG, "selects no tokens"),
        ("prompt[4]", SEG, "index 4 is out of range for a prompt of 4 token(s)"),
        ("prompt[-5]", SEG, "index -5 is out of range"),
        ("system[:]", SEG, "this example has no system segment"),
        ("thinking[:]", SEG, "this example has no thinking segment"),
        ("turn[0]:response", SEG, "turn 0 does not exist; the example has 0 turn(s)"),
    ],
)
def test_resolve_errors_name_spec_and_lengths(spec, segments, fragment):
    with pytest.raises(PositionError) as info:
        resolve_span(spec, segments)
    msg = str(info.value)
    assert fragment in msg and f"position {spec!r}" in msg
    assert f"seq_len {segments.seq_len}" in msg or "turn(s)" in msg


def test_system_and_thinking_frames():
    seg = Segments(prompt_len=10, seq_len=20, system=(1, 5), thinking=(11, 15))
    assert resolve_span("system", seg) == (1, 5)
    assert resolve_span("system[-1]", seg) == (4, 5)
    assert resolve_span("thinking[:2]", seg) == (11, 13)
    assert resolve_span("thinking[-2:]", seg) == (13, 15)


CONVO = Segments(
    prompt_len=20,
    seq_len=30,
    turns=[
        (0, 4, 8),  # plain tuple: start, response_start, stop
        Turn(start=8, response_start=12, stop=30, thinking=(13, 17)),
    ],
)


@pytest.mark.parametrize(
    ("spec", "span"),
    [
        ("turn[0]:prompt", (0, 4)),
        ("turn[0]:response[:]", (4, 8)),
        ("turn[0]:all[-1]", (7, 8)),
        ("turn[-1]:response[:5]", (12, 17)),
        ("turn[1]:prompt[-1]", (11, 12)),
        ("turn[-1]:thinking[:]", (13, 17)),
        ("turn[-1]:thinking[-1]", (16, 17)),
        ("turn[-2]:response[-2:]", (6, 8)),
    ],
)
def test_turns(spec, span):
    assert resolve_span(spec, CONVO) == span


def test_turn_errors():
    with pytest.raises(PositionError, match="turn 2 does not exist; the example has 2 turn"):
        resolve_span("turn[2]:all", CONVO)
    with pytest.raises(PositionError, match="turn 0 has no thinking segment"):
        resolve_span("turn[0]:thinking", CONVO)
    unsplit = Segments(prompt_len=3, seq_len=9, turns=[(0, 9)])
    assert resolve_span("turn[0]:all[2:4]", unsplit) == (2, 4)
    with pytest.raises(PositionError, match="no prompt/response boundary"):
        resolve_span("turn[0]:response", unsplit)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"prompt_len": 5, "seq_len": 4}, "prompt_len 5, seq_len 4"),
        ({"prompt_len": -1, "seq_len": 4}, "need 0 <= prompt_len"),
        ({"prompt_len": 2, "seq_len": 4, "system": (1, 6)}, "system span (1, 6)"),
        ({"prompt_len": 2, "seq_len": 4, "thinking": (3, 2)}, "thinking span (3, 2)"),
        ({"prompt_len": 2, "seq_len": 4, "turns": [(0, 5)]}, "turns[0] span (0, 5)"),
        ({"prompt_len": 2, "seq_len": 4, "turns": [(0, 3, 2)]}, "response_start 3 is outside [0, 2]"),
        ({"prompt_len": 2, "seq_len": 4, "turns": [(0,)]}, "a turn must be"),
        ({"prompt_len": 2, "seq_len": 4, "turns": [Turn(0, 4, 2, thinking=(1, 9))]}, "turns[0].thinking"),
    ],
)
def test_bad_segments_fail_at_construction(kwargs, fragment):
    with pytest.raises(PositionError) as info:
        Segments(**kwargs)
    assert fragment in str(info.value)


def test_resolve_batch_left_padding():
    segs = [
        Segments(prompt_len=4, seq_len=7),
        Segments(prompt_len=2, seq_len=10),
        Segments(prompt_len=3, seq_len=3),
    ]
    out = resolve_batch("prompt[-1]", segs, padded_len=10)
    assert out.dtype == torch.long and out.shape == (3, 2)
    assert out.tolist() == [[6, 7], [1, 2], [9, 10]]
    out = resolve_batch("all[:]", segs, padded_len=10)
    assert out.tolist() == [[3, 10], [0, 10], [7, 10]]
    out = resolve_batch("response[:]", segs[:2], padded_len=10)
    assert out.tolist() == [[7, 10], [2, 10]]
    out = resolve_batch("response[:2]", segs[:2], padded_len=12)
    assert out.tolist() == [[9, 11], [4, 6]]


def test_left_padding_example():
    # prompt_len 4, seq_len 7 in a batch padded to 10: 3 pad tokens, prompt at [3, 7), response at [7, 10).
    seg = [Segments(prompt_len=4, seq_len=7)]
    assert resolve_batch("prompt[-1]", seg, 10).tolist() == [[6, 7]]
    assert resolve_batch("prompt[:]", seg, 10).tolist() == [[3, 7]]
    assert resolve_batch("response[:]", seg, 10).tolist() == [[7, 10]]
    assert resolve_batch("response[0]", seg, 10).tolist() == [[7, 8]]


def test_resolve_batch_right_padding_is_unshifted():
    segs = [Segments(prompt_len=4, seq_len=7), Segments(prompt_len=2, seq_len=10)]
    out = resolve_batch("response[:]", segs, padded_len=10, padding_side="right")
    assert out.tolist() == [[4, 7], [2, 10]]


def test_resolve_batch_pools_the_right_tokens():
    # Real tokens are their own unpadded index; padding is -1. Gathering with the spans must give the slice.
    segs = [Segments(prompt_len=4, seq_len=7), Segments(prompt_len=2, seq_len=5)]
    padded = 9
    rows = [[-1] * (padded - s.seq_len) + list(range(s.seq_len)) for s in segs]
    spans = resolve_batch("response[-2:]", segs, padded)
    picked = [rows[b][spans[b, 0] : spans[b, 1]] for b in range(2)]
    assert picked == [[5, 6], [3, 4]]


def test_resolve_batch_errors():
    segs = [Segments(prompt_len=4, seq_len=7), Segments(prompt_len=4, seq_len=4)]
    with pytest.raises(PositionError, match=r"^row 1: position 'response\[:5\]': selects no tokens"):
        resolve_batch("response[:5]", segs, padded_len=10)
    with pytest.raises(PositionError, match="row 0 has seq_len 7 > padded_len 6"):
        resolve_batch("all", segs, padded_len=6)
    with pytest.raises(PositionError, match="padding_side 'middle'"):
        resolve_batch("all", segs, padded_len=10, padding_side="middle")
    with pytest.raises(PositionError, match="unknown frame"):
        resolve_batch("bogus", segs, padded_len=10)
    assert resolve_batch("all", [], padded_len=3).shape == (0, 2)
