"""Extraction figures a researcher reads at a glance, for one run and for a sweep's parent.

Held-out accuracy (with the 0.5 chance line, on a fixed 0-1 axis) and effect size against layer, 95%
intervals as bands, the sample size of each curve in its legend; projections of positive and negative
examples at the best layer; cosine between the methods' vectors per layer (fixed -1..1).
Inputs are the per-layer metric dicts stage 1 logs (cv_/val_/ood_ + accuracy / effect_size, `_lo`/`_hi`)
and its counts (n_cv_pos, n_val_neg, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from traitlab.tracking.names import PARTS
from traitlab.tracking.notes import part_n
from traitlab.viz.figures import layer_curve_figure, projection_histogram_figure

Curves = dict[str, dict[int, float]]
Bands = dict[str, dict[int, tuple[float, float]]]


def part_curve(per_layer: Mapping[int, Mapping[str, float]], part: str, stat: str) -> tuple[dict[int, float],
                                                                                           dict[int, tuple[float, float]]]:
    """One part's `stat` (accuracy, effect_size) per layer and its 95% band; empty when the part was not scored."""
    key = f"{part}_{stat}"
    values = {lyr: float(m[key]) for lyr, m in per_layer.items() if key in m}
    band = {lyr: (float(per_layer[lyr][f"{key}_lo"]), float(per_layer[lyr][f"{key}_hi"])) for lyr in values
            if f"{key}_lo" in per_layer[lyr] and f"{key}_hi" in per_layer[lyr]}
    return values, band


def run_curves(per_layer: Mapping[int, Mapping[str, float]], counts: Mapping[str, float], stat: str,
               label: str) -> tuple[Curves, Bands]:
    """Every held-out part of one run: curves named '<label> · <part> (n=p+n)'."""
    curves: Curves = {}
    bands: Bands = {}
    for part, name in PARTS:
        values, band = part_curve(per_layer, part, stat)
        if values:
            key = f"{label} · {name} (n={part_n(counts, part)})"
            curves[key], bands[key] = values, band
    return curves, bands


def accuracy_figure(curves: Curves, bands: Bands, title: str, best_layer: int | None = None) -> Figure:
    return layer_curve_figure(curves, "accuracy (95% Wilson band)", bands, ylim=(0.0, 1.02), chance=0.5, title=title,
                              mark_layer=best_layer)


def effect_size_figure(curves: Curves, bands: Bands, title: str, best_layer: int | None = None) -> Figure:
    return layer_curve_figure(curves, "effect size d (95% bootstrap band)", bands, zero_line=True, title=title,
                              mark_layer=best_layer)


def cosine_by_layer_figure(cosines: Mapping[str, Mapping[int, float]], title: str) -> Figure:
    """Cosine between pairs of vectors at each layer (e.g. 'mean_diff vs probe'), on a fixed -1..1 axis."""
    return layer_curve_figure(cosines, "cosine between vectors", ylim=(-1.02, 1.02), zero_line=True, title=title)


def best_layer_histogram(projections: Mapping[str, Any], layer: int, threshold: float | None, title: str) -> Figure:
    """Positive vs negative cosines at the best layer: train (what the vector was fit on), held-out, OOD."""
    names = {"train": "train (fit on these)", "val": "held-out", "ood": "OOD"}
    panels = {label: (projections[f"{part}_pos"], projections[f"{part}_neg"]) for part, label in names.items()
              if f"{part}_pos" in projections and f"{part}_neg" in projections}
    return projection_histogram_figure(panels, f"{title} · layer {layer}", threshold=threshold)
