"""Split a tokenised text into clauses, with token offsets, so scores can be read per clause.

A clause here is a heuristic unit, not a parse: the stretch of text between clause punctuation
(``. ! ? ; : ,`` followed by whitespace or the end, and line breaks) and before a conjunction that
usually opens a clause (``and``, ``but``, ``because``, ...). Lists split too ("bread and butter" gives
"bread" and "and butter"); a minimum clause length at ranking time keeps such fragments out.

Token pieces are joined into the text they decode to; each token belongs to the clause its first
character falls in, so a piece like ``".\\n"`` stays with the clause it ends and ``" and"`` opens the
next one. Pure Python: plain strings in, ``(start, stop)`` token offsets out.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence

# Punctuation that ends a clause only before whitespace or the end ("3.5", "1,000" and "e.g." stay whole
# inside a clause), with the line breaks right after it, and runs of line breaks.
_CLAUSE_END = re.compile(r"[.!?;:,]+(?=\s|$)\n*|\n+")
# Conjunctions that open a clause; the cut falls on the space before them, where a " and" token starts.
# "so" and "yet" are left out: as adverbs ("so happy", "not yet") they would cut far more often than not.
CONJUNCTIONS = ("and", "but", "or", "because", "although", "though", "while", "whereas", "unless", "however")
_CLAUSE_START = re.compile(r"\s(?=(?:" + "|".join(CONJUNCTIONS) + r")\b)", re.IGNORECASE)
_WORD = re.compile(r"\w")


def clause_cuts(text: str) -> list[int]:
    """Character offsets where a new clause starts (sorted, without 0 and len(text))."""
    cuts = {m.end() for m in _CLAUSE_END.finditer(text)} | {m.start() for m in _CLAUSE_START.finditer(text)}
    return sorted(c for c in cuts if 0 < c < len(text))


def clause_spans(tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Token offsets ``[start, stop)`` of the clauses of the text ``"".join(tokens)``, in order.

    Every token belongs to one span except those of a span without any word character (a lone line
    break or punctuation), which is dropped.
    """
    starts, pos = [], 0
    for tok in tokens:
        starts.append(pos)
        pos += len(tok)
    text = "".join(tokens)
    cuts = clause_cuts(text)
    spans: list[tuple[int, int]] = []
    begin = 0
    for i in range(1, len(tokens) + 1):
        if i == len(tokens) or bisect_right(cuts, starts[i]) != bisect_right(cuts, starts[begin]):
            if _WORD.search("".join(tokens[begin:i])):
                spans.append((begin, i))
            begin = i
    return spans
