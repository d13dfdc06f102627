"""Figures of the breadth analyses: correlations with their intervals, response-level scatters, ranked spans,
and massive-activation ratios per layer. Plain data in, an Agg-bound Figure out (see viz.figures)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from traitlab.viz.figures import TICK_FONT, FigureDataError, _floats, _new_figure, _style, _text

__all__ = ["correlation_interval_figure", "interval_figure", "massive_ratio_figure", "ranked_spans_figure", "response_scatter_figure"]


def interval_figure(labels: Sequence[str], values: Sequence[float], lows: Sequence[float],
                    highs: Sequence[float], title: str, xlabel: str, ns: Sequence[int] | None = None) -> Figure:
    """One row per estimate: a point and its interval (a point alone where the interval is undefined), a zero line."""
    v, lo, hi = _floats(values), _floats(lows), _floats(highs)
    if not (len(labels) == len(v) == len(lo) == len(hi)) or not len(v):
        raise FigureDataError(f"interval_figure: {len(labels)} labels, {len(v)} values, {len(lo)} lows, "
                              f"{len(hi)} highs; expected the same non-zero count")
    fig, ax = _new_figure(6.0, 1.0 + 0.28 * len(v))
    y = np.arange(len(v))[::-1]
    defined = np.isfinite(lo) & np.isfinite(hi)
    ax.hlines(y[defined], lo[defined], hi[defined], color="#4472c4", linewidth=1.6)
    ax.plot(v, y, "o", color="#1f3b73", markersize=3.5)
    ax.axvline(0, color="#777", linewidth=0.7, zorder=0)
    names = [_text(s, 48) + (f" (n={ns[i]})" if ns is not None else "") for i, s in enumerate(labels)]
    ax.set_yticks(y, names, fontsize=TICK_FONT)
    ax.set_xlim(-1.05, 1.05)
    ax.grid(axis="x", alpha=0.3, linewidth=0.5)
    _style(ax, title, xlabel)
    return fig


def correlation_interval_figure(rows: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """``interval_figure`` of correlation rows (a, b, r, low, high, n)."""
    return interval_figure([f"{r['a']} ~ {r['b']}" for r in rows], [r["r"] for r in rows], [r["low"] for r in rows],
                           [r["high"] for r in rows], title, "Pearson r", [r["n"] for r in rows])


def response_scatter_figure(x: Sequence[float], y: Sequence[float], xlabel: str, ylabel: str, title: str,
                            groups: Sequence[str] | None = None) -> Figure:
    """One point per response (coloured by its group, e.g. the prompt set), with the least-squares line."""
    xs, ys = _floats(x), _floats(y)
    if xs.shape != ys.shape or not xs.size:
        raise FigureDataError(f"response_scatter_figure: {xs.size} x and {ys.size} y values; expected pairs")
    fig, ax = _new_figure(4.2, 3.6)
    keys = list(dict.fromkeys(groups)) if groups is not None else [None]
    for key in keys:
        sel = np.array([g == key for g in groups]) if groups is not None else np.ones(xs.size, dtype=bool)
        ax.scatter(xs[sel], ys[sel], s=12, alpha=0.8, label=_text(key, 20) if key is not None else None)
    ok = np.isfinite(xs) & np.isfinite(ys)
    if ok.sum() >= 2 and np.ptp(xs[ok]) > 0:
        slope, icept = np.polyfit(xs[ok], ys[ok], 1)
        grid = np.linspace(xs[ok].min(), xs[ok].max(), 20)
        ax.plot(grid, slope * grid + icept, color="#999", linewidth=0.9)
    if groups is not None and len(keys) > 1:
        ax.legend(fontsize=TICK_FONT, frameon=False)
    ax.grid(alpha=0.3, linewidth=0.5)
    _style(ax, title, _text(xlabel, 40), _text(ylabel, 40))
    return fig


def ranked_spans_figure(rows: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """Top and bottom spans as horizontal bars of their mean score, labelled with their text and set."""
    if not rows:
        raise FigureDataError("ranked_spans_figure: no rows")
    fig, ax = _new_figure(7.0, 1.0 + 0.26 * len(rows))
    means = _floats(r["mean"] for r in rows)
    y = np.arange(len(rows))[::-1]
    colors = ["#c0504d" if r["direction"] == "top" else "#4f81bd" for r in rows]
    ax.barh(y, means, color=colors, height=0.7)
    labels = [f"{_text(r.get('source') or '', 10)}/{_text(r['prompt_id'], 8)}: {_text(r['text'].strip(), 48)}"
              for r in rows]
    ax.set_yticks(y, labels, fontsize=TICK_FONT)
    ax.axvline(0, color="#777", linewidth=0.7)
    ax.grid(axis="x", alpha=0.3, linewidth=0.5)
    _style(ax, title, "mean score over the span")
    return fig


def massive_ratio_figure(ratio_by_layer: Mapping[int, Any], dims_by_layer: Mapping[int, Sequence[int]],
                         threshold: float, title: str) -> Figure:
    """Max |h| over the median dim's per layer (log scale): one line per dim massive at some layer, the largest
    ratio of any other dim, and the threshold above which a dim counts as massive."""
    layers = sorted(ratio_by_layer)
    if not layers:
        raise FigureDataError("massive_ratio_figure: no layers")
    mat = np.array([_floats(ratio_by_layer[layer]) for layer in layers])  # [L, D]
    dims = sorted({int(d) for ds in dims_by_layer.values() for d in ds})
    fig, ax = _new_figure(5.6, 3.4)
    for d in dims:
        ax.plot(layers, mat[:, d], marker="o", markersize=2.5, linewidth=1.1, label=f"dim {d}")
    rest = np.delete(mat, dims, axis=1) if dims else mat
    ax.plot(layers, np.nanmax(rest, axis=1), color="#999", linestyle="--", linewidth=1.0, label="largest other dim")
    ax.axhline(threshold, color="#c00", linewidth=0.8, label=f"threshold ({threshold:g}x)")
    ax.set_yscale("log")
    step = max(1, math.ceil(len(layers) / 30))
    ax.set_xticks(layers[::step], [str(layer) for layer in layers[::step]], fontsize=TICK_FONT)
    ax.grid(alpha=0.3, linewidth=0.5)
    ax.legend(fontsize=TICK_FONT, frameon=False, ncols=2 if len(dims) > 4 else 1)
    _style(ax, title, "layer", "max |h| / median dim's max |h|")
    return fig
