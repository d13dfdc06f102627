"""Extraction figures read at a glance: fixed axes, chance line, bands, n in the legend, shared bins."""

from __future__ import annotations

import math

import numpy as np
import pytest

from traitlab.errors import TraitlabError
from traitlab.viz.extraction import (
    accuracy_figure,
    best_layer_histogram,
    cosine_by_layer_figure,
    effect_size_figure,
    run_curves,
)

PER_LAYER = {
    layer: {"val_accuracy": 0.5 + 0.1 * i, "val_accuracy_lo": 0.3 + 0.1 * i, "val_accuracy_hi": 0.7 + 0.1 * i,
            "val_effect_size": 1.0 + i, "val_effect_size_lo": -0.5 + i, "val_effect_size_hi": 2.0 + i,
            "ood_accuracy": 0.6, "ood_accuracy_lo": 0.4, "ood_accuracy_hi": 0.75}
    for i, layer in enumerate((4, 6, 8))
}
COUNTS = {"n_val_pos": 7, "n_val_neg": 6, "n_ood_pos": 22, "n_ood_neg": 21}


def _lines(ax):
    return {ln.get_label(): ln for ln in ax.get_lines()}


def test_run_curves_name_each_part_with_its_n_and_keep_its_band():
    curves, bands = run_curves(PER_LAYER, COUNTS, "accuracy", "probe")
    assert list(curves) == ["probe · held-out (n=7+6)", "probe · OOD (n=22+21)"]  # no cv part was scored
    assert curves["probe · held-out (n=7+6)"] == {4: 0.5, 6: 0.6, 8: pytest.approx(0.7)}
    assert bands["probe · OOD (n=22+21)"][6] == (0.4, 0.75)


def test_accuracy_figure_has_fixed_axis_chance_line_and_bands():
    curves, bands = run_curves(PER_LAYER, COUNTS, "accuracy", "probe")
    ax = accuracy_figure(curves, bands, "t", best_layer=6).axes[0]
    assert ax.get_ylim() == pytest.approx((0.0, 1.02))
    assert ax.get_xlim() == pytest.approx((3.5, 8.5))
    assert list(_lines(ax)["chance 0.5"].get_ydata()) == [0.5, 0.5]
    assert list(_lines(ax)["best layer 6"].get_xdata()) == [6, 6]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["probe · held-out (n=7+6)", "probe · OOD (n=22+21)", "chance 0.5", "best layer 6"]
    assert len(ax.collections) == 2  # one band per curve
    assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 8


def test_effect_size_axis_starts_at_zero_or_below_and_covers_every_band():
    curves, bands = run_curves(PER_LAYER, COUNTS, "effect_size", "mean_diff")
    lo, hi = effect_size_figure(curves, bands, "t").axes[0].get_ylim()
    assert lo < -0.5 and hi > 4.0  # the lowest band edge is -0.5, the highest 4.0


def test_cosine_figure_is_on_a_fixed_minus_one_to_one_axis():
    ax = cosine_by_layer_figure({"mean_diff vs probe": {1: 0.2, 2: 0.3}}, "t").axes[0]
    assert ax.get_ylim() == pytest.approx((-1.02, 1.02))


def test_histogram_panels_share_bins_count_every_example_and_mark_the_threshold():
    rng = np.random.default_rng(0)
    proj = {"train_pos": rng.normal(0.3, 0.05, 40), "train_neg": rng.normal(0.1, 0.05, 38),
            "val_pos": rng.normal(0.3, 0.05, 5), "val_neg": rng.normal(0.1, 0.05, 4)}
    fig = best_layer_histogram(proj, 12, 0.2, "optimism · probe")
    train, val = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["train (fit on these)", "held-out"]
    assert [t.get_text() for t in val.get_legend().get_texts()] == ["positive (n=5)", "negative (n=4)",
                                                                     "train threshold 0.2"]
    for ax, n in ((train, 78), (val, 9)):
        assert sum(p.get_height() for p in ax.patches) == n
    assert train.get_xlim() == val.get_xlim()
    widths = {round(p.get_width(), 9) for ax in fig.axes for p in ax.patches}
    assert len(widths) == 1  # the same bins in every panel
    with pytest.raises(TraitlabError, match="no finite"):
        best_layer_histogram({"val_pos": [math.nan], "val_neg": [math.nan]}, 1, None, "t")
