"""Trade-off frontier and entanglement matrix: hand-checked data, and the figures draw what the data say."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.patches import Rectangle

from traitlab.core.proportions import Interval
from traitlab.core.side_effects import EntanglementMatrix, pareto_front
from traitlab.viz import figures as F


def test_pareto_front_by_hand():
    #        0    1    2    3    4     5    6
    xs = [0.5, 0.6, 0.4, 0.6, 0.3, math.nan, 0.6]
    ys = [2.0, 1.0, 3.0, 0.5, 3.0, 9.0, 1.0]
    # 3 is beaten by 1 (same x, lower y); 4 by 2 (same y, lower x); 6 duplicates 1; 5 is NaN.
    assert pareto_front(xs, ys) == [2, 0, 1]
    assert pareto_front([], []) == []
    with pytest.raises(ValueError):
        pareto_front([1.0], [])


def shifts() -> dict[tuple[str, str], Interval]:
    return {
        ("optimism", "optimism"): Interval(0.8, 0.5, 1.1, 20),
        ("optimism", "evil"): Interval(-0.2, -0.35, -0.05, 20),
        ("optimism", "refusal"): Interval(0.1, -0.1, 0.3, 20),
        ("evil", "evil"): Interval(0.05, -0.1, 0.2, 20),  # the intended effect is noise
        ("evil", "optimism"): Interval(-0.4, -0.6, -0.2, 20),
        ("refusal", "refusal"): Interval(-0.5, -0.7, -0.3, 18),
    }


def test_entanglement_matrix_places_cells_and_marks_noise():
    m = EntanglementMatrix.from_shifts(shifts(), traits=["optimism", "evil", "refusal"], measure="propensity shift")
    assert m.delta[0].tolist() == [0.8, -0.2, 0.1]
    assert m.delta[1, 0] == -0.4 and math.isnan(m.delta[1, 2]) and m.n[2, 2] == 18 and m.n[2, 0] == 0
    assert m.excludes_zero().tolist() == [[True, True, False], [True, False, False], [False, False, True]]
    rel = m.relative()
    assert rel[0].tolist() == pytest.approx([1.0, -0.25, 0.125])
    assert np.isnan(rel[1]).all()  # evil's own effect includes 0: no ratio to noise
    assert rel[2, 2] == 1.0 and np.isnan(rel[2, :2]).all()
    rows = m.rows()
    assert len(rows) == 6
    cell = next(r for r in rows if (r["steered"], r["measured"]) == ("optimism", "evil"))
    assert cell == {"steered": "optimism", "measured": "evil", "propensity shift": -0.2, "low": -0.35,
                    "high": -0.05, "n": 20, "excludes_zero": True, "relative_to_target": pytest.approx(-0.25)}


def test_entanglement_matrix_rejects_unknown_traits():
    with pytest.raises(ValueError, match="not in traits"):
        EntanglementMatrix.from_shifts(shifts(), traits=["optimism", "evil"])
    assert EntanglementMatrix.from_shifts(shifts()).traits == ["evil", "optimism", "refusal"]


def test_entanglement_figure_hatches_noise_and_outlines_the_diagonal():
    m = EntanglementMatrix.from_shifts(shifts(), traits=["optimism", "evil", "refusal"])
    fig = F.entanglement_figure(m)
    ax = fig.axes[0]
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    hatched = sorted((int(r.get_y() + 0.5), int(r.get_x() + 0.5)) for r in rects if r.get_hatch())
    assert hatched == [(0, 2), (1, 1)]  # the two measured cells whose interval includes 0
    outlined = sorted((int(r.get_y() + 0.5), int(r.get_x() + 0.5)) for r in rects if not r.get_hatch())
    assert outlined == [(0, 0), (1, 1), (2, 2)]
    texts = {t.get_text() for t in ax.texts}
    assert "-0.2\n[-0.35, -0.05]" in texts and "+0.8\n[+0.5, +1.1]" in texts
    assert len(ax.texts) == 6  # unmeasured cells stay blank
    image = ax.images[0].get_array()
    assert image.mask[1, 2] and not image.mask[0, 1]


TRIALS = [
    {"delta": 5.0, "coherence": 90.0, "capability": 0.55, "capability_low": 0.47, "capability_high": 0.63},
    {"delta": 12.0, "coherence": 85.0, "capability": 0.50},
    {"delta": 20.0, "coherence": 60.0, "capability": 0.30},  # incoherent: off the frontier
    {"delta": 4.0, "coherence": 88.0, "capability": 0.45},   # dominated by trial 0
    {"delta": 15.0, "coherence": 80.0, "capability": 0.40},
]


def _offsets(ax, label):
    for c in ax.collections:
        if isinstance(c, PathCollection) and c.get_label() == label:
            return [tuple(xy) for xy in c.get_offsets().tolist()]
    raise AssertionError(f"no scatter labelled {label!r}")


def test_frontier_figure_marks_front_chosen_and_baselines():
    fig = F.frontier_figure(TRIALS, "optimism L10", threshold=77.0, chosen=1,
                            unsteered={"capability": 0.56}, prompted={"delta": 9.0, "capability": 0.52})
    ax = fig.axes[0]
    assert sorted(_offsets(ax, "coherent trial")) == sorted((t["capability"], t["delta"]) for t in TRIALS
                                                            if t["coherence"] >= 77)
    assert _offsets(ax, "incoherent trial") == [(0.30, 20.0)]
    assert _offsets(ax, "chosen") == [(0.50, 12.0)]
    assert _offsets(ax, "unsteered") == [(0.56, 0.0)]
    assert _offsets(ax, "prompted") == [(0.52, 9.0)]
    front = next(line for line in ax.lines if line.get_label() == "frontier (coherent)")
    assert list(zip(front.get_xdata(), front.get_ydata(), strict=True)) == [(0.40, 15.0), (0.50, 12.0), (0.55, 5.0)]
    interval = [line for line in ax.lines if list(line.get_xdata()) == [0.47, 0.63]]
    assert len(interval) == 1 and list(interval[0].get_ydata()) == [5.0, 5.0]


def test_frontier_figure_without_prompted_capability_draws_a_line():
    fig = F.frontier_figure(TRIALS[:2], "t", prompted={"delta": 9.0, "capability": None})
    ax = fig.axes[0]
    assert any(line.get_label().startswith("prompted delta 9") for line in ax.lines)
    with pytest.raises(F.FigureDataError, match="chosen=7"):
        F.frontier_figure(TRIALS, "t", chosen=7)
    with pytest.raises(F.FigureDataError, match="trial 0 lacks capability"):
        F.frontier_figure([{"delta": 1.0}], "t")
