"""Figures of the steering stage: the objective and coherence against the coefficient, and the propensity of
every held-out pair against the coefficient (the curve whose slope is steerability)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from traitlab.viz.figures import TICK_FONT, FigureDataError, _mean_by_coef, _new_figure, _style, _text


def objective_curve_figure(points: Sequence[Mapping[str, Any]], threshold: float, title: str, *,
                           value_label: str, prompted: float | None = None) -> Figure:
    """The objective's delta (left axis) and coherence (right axis, 0-100, threshold dashed) per coefficient;
    the best coherent point starred, the prompted baseline's delta dotted. points: {coef, value, coherence}."""
    if not points:
        raise FigureDataError("objective_curve_figure got no points; expected [{coef, value, coherence}, ...]")
    value, coh = _mean_by_coef(points, "value"), _mean_by_coef(points, "coherence")
    coefs = sorted({float(p["coef"]) for p in points})
    fig, ax = _new_figure(5.2, 3.4)
    right = ax.twinx()
    xs = [c for c in coefs if c in value]
    ax.plot(xs, [value[c] for c in xs], marker="o", markersize=3, linewidth=1.2, color="tab:red",
            label=_text(value_label, 30))
    xc = [c for c in coefs if c in coh]
    right.plot(xc, [coh[c] for c in xc], marker="s", markersize=2.5, linewidth=1.0, color="tab:blue",
               label="coherence")
    right.axhline(threshold, color="tab:blue", linestyle="--", linewidth=0.9, label=f"coherence ≥ {threshold:g}")
    right.set_ylim(-2, 102)
    right.tick_params(labelsize=TICK_FONT)
    right.set_ylabel("coherence (0–100)", fontsize=TICK_FONT + 1)
    ax.axhline(0.0, color="black", linewidth=0.5)
    if prompted is not None and math.isfinite(prompted):
        ax.axhline(prompted, color="gray", linestyle=":", linewidth=1.0, label=f"prompted {prompted:.3g}")
    coherent = [c for c in xs if coh.get(c, -math.inf) >= threshold]
    if coherent:
        best = max(coherent, key=lambda c: value[c])
        ax.scatter([best], [value[best]], marker="*", s=90, color="gold", edgecolor="black", zorder=5,
                   label=f"best coherent: {best:.3g}")
    _style(ax, title, "steering coefficient", _text(value_label, 40))
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=TICK_FONT, frameon=False, loc="best")
    return fig


def propensity_curve_figure(points: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """One thin line per held-out pair and their mean (bold) against the coefficient; incoherent coefficients
    hollow. points: {coef, margins: [per pair], feasible}; pairs whose line falls are anti-steerable."""
    pts = sorted((p for p in points if p.get("margins")), key=lambda p: float(p["coef"]))
    if not pts:
        raise FigureDataError("propensity_curve_figure got no points with margins")
    n = len(pts[0]["margins"])
    if any(len(p["margins"]) != n for p in pts):
        raise FigureDataError("propensity_curve_figure: every point needs one margin per pair")
    x = np.array([float(p["coef"]) for p in pts])
    y = np.array([[np.nan if v is None else float(v) for v in p["margins"]] for p in pts])
    fig, ax = _new_figure(5.2, 3.4)
    for j in range(n):
        ax.plot(x, y[:, j], color="gray", linewidth=0.6, alpha=0.5)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(y, axis=1)
    ax.plot(x, mean, color="tab:red", linewidth=1.8, label=f"mean of {n} pairs")
    ok = np.array([bool(p.get("feasible", True)) for p in pts])
    ax.scatter(x[ok], mean[ok], color="tab:red", s=14, zorder=4, label="coherent")
    if (~ok).any():
        ax.scatter(x[~ok], mean[~ok], facecolor="white", edgecolor="tab:red", s=14, zorder=4, label="incoherent")
    ax.axhline(0.0, color="black", linewidth=0.5)
    _style(ax, title, "steering coefficient", "log-prob margin per token (pos − neg)")
    ax.legend(fontsize=TICK_FONT, frameon=False, loc="best")
    return fig
