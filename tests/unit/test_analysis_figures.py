"""viz.analysis_figures: each figure draws what its data says (points, intervals, bars, lines per dim)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.collections import LineCollection

from traitlab.viz import analysis_figures as A
from traitlab.viz.figures import FigureDataError


def test_interval_figure_draws_only_defined_intervals():
    fig = A.interval_figure(["a ~ b", "a ~ c", "b ~ c"], [0.5, -0.2, math.nan], [0.1, math.nan, math.nan],
                            [0.8, math.nan, math.nan], "r", "Pearson r", ns=[10, 3, 2])
    ax = fig.axes[0]
    segments = [c for c in ax.collections if isinstance(c, LineCollection)][0].get_segments()
    assert len(segments) == 1 and np.allclose(segments[0][:, 0], [0.1, 0.8])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a ~ b (n=10)", "a ~ c (n=3)", "b ~ c (n=2)"]
    with pytest.raises(FigureDataError):
        A.interval_figure([], [], [], [], "r", "x")


def test_ranked_spans_figure_bars_and_labels():
    rows = [{"direction": "top", "mean": 0.7, "source": "smoke", "prompt_id": "s01", "text": " it rains,"},
            {"direction": "bottom", "mean": -0.3, "source": "starter", "prompt_id": "p02", "text": " no"}]
    ax = A.ranked_spans_figure(rows, "t").axes[0]
    assert sorted(round(p.get_width(), 3) for p in ax.patches) == [-0.3, 0.7]
    assert "smoke/s01: it rains," in [t.get_text() for t in ax.get_yticklabels()]


def test_massive_ratio_figure_one_line_per_massive_dim():
    ratios = {0: [1.0, 300.0, 1.0, 2.0], 1: [1.0, 50.0, 1.0, 3.0]}
    ax = A.massive_ratio_figure(ratios, {0: [1], 1: []}, 100.0, "t").axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:2] == ["dim 1", "largest other dim"]
    assert list(ax.get_lines()[0].get_ydata()) == [300.0, 50.0]
    assert list(ax.get_lines()[1].get_ydata()) == [2.0, 3.0]
