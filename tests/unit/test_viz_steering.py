"""Steering figures: the objective/coherence curve marks the best COHERENT point; the propensity figure draws
one line per held-out pair and their mean."""

from __future__ import annotations

import pytest
from matplotlib.collections import PathCollection

from traitlab.viz.figures import FigureDataError
from traitlab.viz.steering import objective_curve_figure, propensity_curve_figure


def test_objective_curve_marks_the_best_coherent_coefficient():
    points = [{"coef": 20.0, "value": 0.2, "coherence": 99}, {"coef": 40.0, "value": 0.4, "coherence": 95},
              {"coef": 40.0, "value": 0.6, "coherence": 93},   # averaged with the one above: 0.5, coherence 94
              {"coef": 80.0, "value": 0.9, "coherence": 60}]   # larger but incoherent
    fig = objective_curve_figure(points, 90, "optimism L10", value_label="propensity delta", prompted=0.05)
    ax, right = fig.axes
    value = next(ln for ln in ax.get_lines() if ln.get_label() == "propensity delta")
    assert list(value.get_xdata()) == [20.0, 40.0, 80.0]
    assert list(value.get_ydata()) == pytest.approx([0.2, 0.5, 0.9])
    coherence = next(ln for ln in right.get_lines() if ln.get_label() == "coherence")
    assert list(coherence.get_ydata()) == pytest.approx([99, 94, 60])
    (best,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert best.get_offsets().tolist() == [[40.0, 0.5]]
    assert any(ln.get_label() == "prompted 0.05" for ln in ax.get_lines())


def test_propensity_curve_one_line_per_pair_and_the_mean():
    points = [{"coef": 0.0, "margins": [0.0, 1.0, -1.0], "feasible": True},
              {"coef": 30.0, "margins": [0.5, 1.5, -2.0], "feasible": True},
              {"coef": 60.0, "margins": [1.0, 2.0, None], "feasible": False}]
    ax = propensity_curve_figure(points, "t").axes[0]
    lines = ax.get_lines()
    mean = next(ln for ln in lines if ln.get_label() == "mean of 3 pairs")
    assert list(mean.get_ydata()) == pytest.approx([0.0, 0.0, 1.5])  # the missing margin is left out of the mean
    assert len([ln for ln in lines if ln.get_label().startswith("_")]) == 3 + 1  # a line per pair, and y = 0
    with pytest.raises(FigureDataError, match="one margin per pair"):
        propensity_curve_figure([{"coef": 0, "margins": [1.0]}, {"coef": 1, "margins": [1.0, 2.0]}], "t")
