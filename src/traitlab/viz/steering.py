"""Figures of the steering stage: the objective and coherence against the coefficient, the propensity of
every held-out pair against the coefficient (the curve whose slope is steerability), the objective against
coherence over every trial, and the per-item spread of the deltas at the chosen coefficient.

Axes are fixed so that noise cannot pass for a trend: the coefficient axis always includes 0 (the unsteered
model, drawn), delta axes always include 0 and every interval drawn, coherence runs 0-100."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from traitlab.viz.figures import (
    TICK_FONT,
    TITLE_FONT,
    FigureDataError,
    _mean_by_coef,
    _new_figure,
    _style,
    _text,
)


def _span(values: Sequence[float | None], pad: float = 0.08) -> tuple[float, float]:
    """Limits covering 0 and every finite value, padded."""
    vals = [0.0] + [float(v) for v in values if v is not None and math.isfinite(float(v))]
    lo, hi = min(vals), max(vals)
    width = (hi - lo) or 1.0
    return lo - pad * width, hi + pad * width


def objective_curve_figure(points: Sequence[Mapping[str, Any]], threshold: float, title: str, *,
                           value_label: str, prompted: float | None = None,
                           unsteered_coherence: float | None = None) -> Figure:
    """The objective's delta (left axis) and coherence (right axis, 0-100, threshold dashed) per coefficient;
    the best coherent point starred, the prompted baseline's delta dotted. points: {coef, value, coherence,
    optional low/high (the delta's 95% interval, drawn as bars)}. `unsteered_coherence`: the unsteered model
    is drawn at coefficient 0 (delta 0 by definition). Both axes include 0."""
    if not points:
        raise FigureDataError("objective_curve_figure got no points; expected [{coef, value, coherence}, ...]")
    if unsteered_coherence is not None:
        points = [{"coef": 0.0, "value": 0.0, "coherence": unsteered_coherence}, *points]
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
    bars = [p for p in points if p.get("low") is not None and p.get("high") is not None and p.get("value") is not None]
    for p in bars:
        ax.plot([p["coef"], p["coef"]], [p["low"], p["high"]], color="tab:red", alpha=0.35, linewidth=1.0)
    if unsteered_coherence is not None:
        ax.scatter([0.0], [0.0], marker="s", s=26, color="black", zorder=5, label="unsteered")
    ax.set_xlim(*_span(coefs, pad=0.05))
    ax.set_ylim(*_span([*value.values(), prompted, *(p["low"] for p in bars), *(p["high"] for p in bars)]))
    coherent = [c for c in xs if coh.get(c, -math.inf) >= threshold and c != 0.0]
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


def trait_coherence_figure(trials: Sequence[Mapping[str, Any]], threshold: float, title: str, *, value_label: str,
                           unsteered_coherence: float | None = None, prompted: Mapping[str, float | None] | None = None,
                           chosen: int | None = None) -> Figure:
    """Every trial's objective delta (y) against its coherence (x, fixed 0-100), coloured by layer, the
    threshold a vertical dashed line: the trade-off a coefficient search walks. `prompted`: {delta,
    coherence}; the unsteered model sits at delta 0; `chosen` (an index into trials) is starred."""
    if not trials:
        raise FigureDataError("trait_coherence_figure got no trials; expected [{value, coherence, layer}, ...]")
    fig, ax = _new_figure(5.2, 3.6)
    layers = sorted({int(t["layer"]) for t in trials})
    cmap = colormaps["viridis"]
    ys: list[float | None] = []
    for i, lyr in enumerate(layers):
        mine = [t for t in trials if int(t["layer"]) == lyr and t.get("value") is not None
                and t.get("coherence") is not None]
        colour = cmap(i / max(1, len(layers) - 1))
        ok = [t for t in mine if t["coherence"] >= threshold]
        bad = [t for t in mine if t["coherence"] < threshold]
        if ok:
            ax.scatter([t["coherence"] for t in ok], [t["value"] for t in ok], color=colour, s=20,
                       edgecolor="black", linewidth=0.3, zorder=3, label=f"layer {lyr} (n={len(mine)})")
        if bad:
            ax.scatter([t["coherence"] for t in bad], [t["value"] for t in bad], color=colour, marker="x", s=20,
                       zorder=3, label=None if ok else f"layer {lyr} (n={len(mine)})")
        ys += [t["value"] for t in mine]
    ax.axvline(threshold, color="tab:blue", linestyle="--", linewidth=0.9, label=f"coherence ≥ {threshold:g}")
    ax.axhline(0.0, color="black", linewidth=0.5)
    if unsteered_coherence is not None:
        ax.scatter([unsteered_coherence], [0.0], marker="s", s=30, color="black", zorder=4, label="unsteered")
    if prompted and prompted.get("delta") is not None and prompted.get("coherence") is not None:
        ax.scatter([prompted["coherence"]], [prompted["delta"]], marker="D", s=30, color="tab:orange",
                   edgecolor="black", zorder=4, label="prompted")
        ys.append(prompted["delta"])
    if chosen is not None:
        t = trials[chosen]
        ax.scatter([t["coherence"]], [t["value"]], marker="*", s=120, color="gold", edgecolor="black", zorder=5,
                   label="chosen")
    ax.set_xlim(-2, 102)
    ax.set_ylim(*_span(ys))
    _style(ax, title, "coherence (0–100)", _text(value_label, 40))
    ax.legend(fontsize=TICK_FONT, frameon=False, loc="best")
    return fig


def item_delta_figure(groups: Mapping[str, Sequence[float | None]], title: str, *,
                      intervals: Mapping[str, tuple[float, float]] | None = None) -> Figure:
    """Per-item deltas (steered minus unsteered on the same question or pair) as one strip per group, each
    with its mean (bar) and 95% interval (line): whether an effect is carried by every item or a few.
    groups: {"propensity per pair (n=12)": [...], ...}; each group gets its own panel and axis, including 0."""
    groups = {k: [float(v) for v in vs if v is not None and math.isfinite(float(v))] for k, vs in groups.items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        raise FigureDataError("item_delta_figure got no finite item deltas")
    fig = Figure(figsize=(2.4 * len(groups) + 0.6, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    rng = np.random.default_rng(0)  # jitter only, so repeated figures are identical
    for ax, (name, vals) in zip(axes, groups.items(), strict=True):
        x = rng.uniform(-0.18, 0.18, size=len(vals))
        ax.scatter(x, vals, s=14, color="tab:red", alpha=0.7, edgecolor="black", linewidth=0.3, zorder=3)
        mean = float(np.mean(vals))
        ax.plot([-0.3, 0.3], [mean, mean], color="black", linewidth=1.6, label=f"mean {mean:.3g}")
        iv = (intervals or {}).get(name)
        if iv is not None:
            ax.plot([0.0, 0.0], list(iv), color="black", linewidth=3, alpha=0.35, label=f"95% CI [{iv[0]:.3g}, "
                                                                                         f"{iv[1]:.3g}]")
        ax.axhline(0.0, color="#777", linewidth=0.7)
        ax.set_xlim(-0.5, 0.5)
        ax.set_xticks([])
        ax.set_ylim(*_span([*vals, *(iv or ())]))
        _style(ax, _text(name, 40), None, "steered − unsteered")
        ax.legend(fontsize=TICK_FONT, frameon=False, loc="best")
    fig.suptitle(_text(title, 90), fontsize=TITLE_FONT + 1)
    return fig
