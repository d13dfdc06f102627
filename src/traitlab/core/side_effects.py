"""What steering costs besides its target: the trade-off frontier over trials and cross-trait entanglement.

`pareto_front` picks the trials no other trial beats on both axes (e.g. trait delta and capability), the
line a researcher reads a steering study's trade-off from. `EntanglementMatrix` holds, for each steered
trait's vector (rows), the shift it causes in every trait's measure (columns), each with its 95% interval:
the diagonal is the intended effect, the off-diagonal cells are side effects. Plain data in and out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from traitlab.core.proportions import Interval


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points no other point matches or beats on both x and y (both maximised), by x.

    A point equal to another on both axes keeps only the first; NaN points are never on the front.
    """
    if len(xs) != len(ys):
        raise ValueError(f"pareto_front: {len(xs)} x values but {len(ys)} y values")
    finite = [i for i in range(len(xs)) if math.isfinite(xs[i]) and math.isfinite(ys[i])]
    # Highest x first (ties: highest y first, then the earlier index); a point joins the front when its y
    # beats every y seen so far.
    order = sorted(finite, key=lambda i: (-xs[i], -ys[i], i))
    front, best_y = [], -math.inf
    for i in order:
        if ys[i] > best_y:
            front.append(i)
            best_y = ys[i]
    return sorted(front, key=lambda i: (xs[i], i))


@dataclass
class EntanglementMatrix:
    """rows: the trait whose vector was steered; columns: the trait whose measure shifted.

    `delta[i, j]` is the shift (steered minus unsteered) of trait j's measure under trait i's vector,
    `low`/`high` its 95% interval, `n` the items it rests on; NaN / 0 where not measured.
    """

    traits: list[str]
    delta: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: np.ndarray
    measure: str = "shift"

    @classmethod
    def from_shifts(cls, shifts: Mapping[tuple[str, str], Interval], traits: Sequence[str] | None = None,
                    measure: str = "shift") -> EntanglementMatrix:
        """Build from {(steered trait, measured trait): Interval}; `traits` fixes the order (default: sorted)."""
        named = sorted({t for pair in shifts for t in pair})
        order = list(traits) if traits is not None else named
        unknown = [t for t in named if t not in order]
        if unknown:
            raise ValueError(f"shifts name trait(s) {unknown} that are not in traits={order}")
        if len(set(order)) != len(order):
            raise ValueError(f"traits has duplicates: {order}")
        k = len(order)
        delta, low, high = (np.full((k, k), np.nan) for _ in range(3))
        n = np.zeros((k, k), dtype=int)
        index = {t: i for i, t in enumerate(order)}
        for (steered, measured), est in shifts.items():
            i, j = index[steered], index[measured]
            delta[i, j], low[i, j], high[i, j], n[i, j] = est.mean, est.low, est.high, est.n
        return cls(order, delta, low, high, n, measure)

    def excludes_zero(self) -> np.ndarray:
        """Cells whose interval lies wholly on one side of 0 (False where not measured)."""
        with np.errstate(invalid="ignore"):
            return (self.low > 0) | (self.high < 0)

    def relative(self) -> np.ndarray:
        """Each row divided by its diagonal: side effect per unit of intended effect.

        NaN for a row whose intended effect is not distinguishable from 0 (its interval includes 0): a
        ratio to noise would read as a huge entanglement.
        """
        out = np.full_like(self.delta, np.nan)
        diag = np.diag(self.delta)
        sure = np.diag(self.excludes_zero())
        for i in range(len(self.traits)):
            if sure[i] and diag[i] != 0:
                out[i] = self.delta[i] / diag[i]
        return out

    def rows(self) -> list[dict[str, object]]:
        """Long-form table: one row per measured cell (steered, measured, delta, low, high, n, excludes_zero)."""
        sig = self.excludes_zero()
        rel = self.relative()
        out = []
        for i, steered in enumerate(self.traits):
            for j, measured in enumerate(self.traits):
                if self.n[i, j] == 0 and not np.isfinite(self.delta[i, j]):
                    continue
                out.append({"steered": steered, "measured": measured, self.measure: _num(self.delta[i, j]),
                            "low": _num(self.low[i, j]), "high": _num(self.high[i, j]), "n": int(self.n[i, j]),
                            "excludes_zero": bool(sig[i, j]), "relative_to_target": _num(rel[i, j])})
        return out


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
