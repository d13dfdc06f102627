"""Turn a judge's next-token distribution into one score: the probability-weighted mean integer.

Why logprobs and not the sampled answer: a sampled "70" throws away that the judge put 40% on "30";
the expectation over the top-k integer tokens is smoother and needs one token of output. When little
probability lands on integers at all (the judge wanted to write prose or refuse), the mean would be
computed from noise, so below `min_weight` we return None ("not scorable") instead of a number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

# ASCII digits only: int() would also accept "٣", "1_0" and "+5", which no judge means as a score.
_INTEGER = re.compile(r"-?[0-9]+")


def parse_integer_token(token: str) -> int | None:
    """The integer a token spells after stripping whitespace, or None ("8" -> 8, " 42" -> 42, "8." -> None)."""
    text = token.strip()
    return int(text) if _INTEGER.fullmatch(text) else None


def integer_weights(top_logprobs: Mapping[str, float], lo: int = 0, hi: int = 100) -> dict[int, float]:
    """Probability per valid integer in [lo, hi]; tokens spelling the same integer ("7", " 7") add up."""
    weights: dict[int, float] = {}
    for token, logprob in top_logprobs.items():
        value = parse_integer_token(token)
        if value is None or not lo <= value <= hi:
            continue
        if logprob is None or math.isnan(logprob):
            continue
        p = math.exp(min(float(logprob), 0.0))  # a logprob can come back as 1e-7 from float rounding
        weights[value] = weights.get(value, 0.0) + p
    return dict(sorted(weights.items()))


def logprob_score(
    top_logprobs: Mapping[str, float], lo: int = 0, hi: int = 100, min_weight: float = 0.25
) -> float | None:
    """Probability-weighted mean of the integer tokens in [lo, hi], or None if they hold < min_weight."""
    if lo > hi:
        raise ValueError(f"logprob_score: lo={lo} must be <= hi={hi}")
    if not 0.0 <= min_weight <= 1.0:
        raise ValueError(f"logprob_score: min_weight={min_weight} must be in [0, 1]")
    weights = integer_weights(top_logprobs, lo, hi)
    # fsum over sorted items: the same distribution gives bit-identical scores whatever the token order
    # (a cached reply comes back with its keys in another order than the live one).
    items = sorted(weights.items())
    total = math.fsum(p for _, p in items)
    if total <= 0.0 or total < min_weight:
        return None
    return math.fsum(value * p for value, p in items) / total
