"""The layer DSL every launcher's ``layers=`` takes.

Terms, combinable with commas (the result is sorted and de-duplicated)::

    all              every layer
    12, -1           one layer (negative counts from the end)
    5-10             inclusive range (endpoints may be negative: -5--1)
    30%-60%          fraction of depth, inclusive; percent p maps to round(p/100 * n_layers), clamped to the
                     last layer, so a range is never empty (0%-100% is every layer)
    best, best+5, best-2   relative to the best layer found by validation
    best-2:best+2    a window around the best layer, inclusive, clipped to the model's layers

Python ints and lists (including Hydra ListConfig) are accepted as well.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from traitlab.errors import TraitlabError

_INT = r"[+-]?\d+"
_NUM = r"\d+(?:\.\d*)?|\.\d+"
_RANGE_RE = re.compile(rf"^({_INT})-({_INT})$")
_PCT_RANGE_RE = re.compile(rf"^({_NUM})%-({_NUM})%$")
_PCT_RE = re.compile(rf"^({_NUM})%$")
_BEST_RE = re.compile(r"^best(?:([+-])(\d+))?$")
_BEST_WINDOW_RE = re.compile(r"^best(?:([+-])(\d+))?:best(?:([+-])(\d+))?$")
_EXPECTED = "expected all, N, -N, A-B, P%-Q%, best, best+K, best-K, best-K:best+K or a comma list of these"


class LayerSpecError(TraitlabError, ValueError):
    """A layer spec that does not parse or names a layer the model does not have."""


def _fail(spec: object, reason: str, n_layers: int) -> LayerSpecError:
    return LayerSpecError(
        f"layers {spec!r}: {reason}; valid layers are 0..{n_layers - 1} (n_layers {n_layers})"
    )


def _pct_layer(pct: float, n_layers: int) -> int:
    # Half-up rounding (not Python's banker's rounding) so 50% of 30 layers is deterministic: 15.
    return min(int(math.floor(pct / 100.0 * n_layers + 0.5)), n_layers - 1)


def _offset(sign: str | None, k: str | None) -> int:
    return 0 if sign is None else int(k) * (1 if sign == "+" else -1)


def _term(term: str, spec: object, n_layers: int, best: int | None) -> list[int]:
    def index(i: int) -> int:
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise _fail(spec, f"layer {i} is out of range", n_layers)
        return j

    if term == "all":
        return list(range(n_layers))
    if re.fullmatch(_INT, term):
        return [index(int(term))]
    if m := _RANGE_RE.match(term):
        lo, hi = index(int(m.group(1))), index(int(m.group(2)))
        if lo > hi:
            raise _fail(spec, f"range {term!r} runs backwards ({lo} > {hi})", n_layers)
        return list(range(lo, hi + 1))
    if m := _PCT_RANGE_RE.match(term) or _PCT_RE.match(term):
        pcts = [float(g) for g in m.groups()]
        if any(p > 100 for p in pcts):
            raise _fail(spec, f"percent in {term!r} is above 100%", n_layers)
        lo, hi = _pct_layer(pcts[0], n_layers), _pct_layer(pcts[-1], n_layers)
        if pcts[0] > pcts[-1]:
            raise _fail(spec, f"range {term!r} runs backwards", n_layers)
        return list(range(lo, hi + 1))
    if m := _BEST_WINDOW_RE.match(term):
        if best is None:
            raise _fail(spec, "'best' needs a best layer, and none is known (run validation/steering first or give "
                              "explicit layers)", n_layers)
        lo, hi = (best + _offset(m.group(1), m.group(2)), best + _offset(m.group(3), m.group(4)))
        if lo > hi:
            raise _fail(spec, f"window {term!r} runs backwards ({lo} > {hi})", n_layers)
        return list(range(max(0, lo), min(n_layers - 1, hi) + 1))
    if m := _BEST_RE.match(term):
        if best is None:
            raise _fail(
                spec,
                "'best' needs a best layer, and none is known (run validation/steering first or give "
                "explicit layers)",
                n_layers,
            )
        layer = best + _offset(m.group(1), m.group(2))
        if not 0 <= layer < n_layers:
            raise _fail(spec, f"{term!r} is layer {layer} (best = {best}), out of range", n_layers)
        return [layer]
    raise _fail(spec, f"cannot parse {term!r}; {_EXPECTED}", n_layers)


def parse_layers(spec: str | int | Iterable[int | str], n_layers: int, best: int | None = None) -> list[int]:
    """Resolve a layer spec against a model with ``n_layers`` decoder layers; sorted, unique, non-empty."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise LayerSpecError(f"layers {spec!r}: n_layers must be a positive int, got {n_layers!r}")
    if isinstance(spec, bool):
        raise _fail(spec, f"{_EXPECTED}, not a bool", n_layers)
    if isinstance(spec, int):
        terms: list[str] = [str(spec)]
    elif isinstance(spec, str):
        terms = spec.split(",")
    elif isinstance(spec, Iterable):
        terms = []
        for item in spec:
            if isinstance(item, bool) or not isinstance(item, int | str):
                raise _fail(spec, f"list item {item!r} is not an int or a string", n_layers)
            terms.extend(str(item).split(","))
    else:
        raise _fail(spec, _EXPECTED, n_layers)
    terms = [re.sub(r"\s+", "", t).lower() for t in terms]
    if not terms or any(t == "" for t in terms):
        raise _fail(spec, f"empty term; {_EXPECTED}", n_layers)
    layers: set[int] = set()
    for t in terms:
        layers.update(_term(t, spec, n_layers, best))
    return sorted(layers)
