"""Matplotlib figures for extraction, steering, inference and analysis artifacts.

Each function takes plain data (lists, dicts, numpy arrays, torch tensors) and returns a
:class:`matplotlib.figure.Figure` bound to an Agg canvas. We never touch pyplot: a Figure built directly is
not registered in pyplot's global figure list (so it cannot leak when a sweep makes thousands), and the
Agg canvas is attached per figure, so importing this module never switches the process-wide backend
(a notebook user keeps theirs). ``mlflow.log_figure(fig, "x.png")`` and ``fig.savefig`` both work.

Sized for up to ~30 layers and ~200 tokens: small fonts, thinned and truncated tick labels, and every
label taken from data is escaped so a ``$`` in a token cannot trigger mathtext.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter

from traitlab.core.side_effects import EntanglementMatrix, pareto_front
from traitlab.errors import TraitlabError

__all__ = [
    "cosine_matrix_figure",
    "entanglement_figure",
    "frontier_figure",
    "layer_curve_figure",
    "layer_method_heatmap",
    "model_diff_figure",
    "pca_scatter_figure",
    "projection_histogram_figure",
    "steering_curve_figure",
    "trait_token_heatmap",
    "trajectory_figure",
]

TICK_FONT = 6
LABEL_FONT = 7
TITLE_FONT = 8
MAX_LABEL_CHARS = 14
MAX_TOKEN_TICKS = 60  # beyond this, token tick labels are thinned to every k-th token
# Figures with few elements (per-layer curves, histograms) use larger text: legible at the artifact viewer's
# default zoom without opening the PNG.
READABLE_TICK = 8
READABLE = (READABLE_TICK, 9, 10)  # tick, axis label, title


class FigureDataError(TraitlabError):
    """Data handed to a figure function has the wrong shape or is empty."""


# -------------------------------------------------------------------------------------------- helpers


def _new_figure(width: float, height: float, layout: str = "constrained") -> tuple[Figure, Any]:
    # "compressed" is constrained layout that also packs fixed-aspect (square) images with their colorbar.
    fig = Figure(figsize=(width, height), dpi=110, layout=layout)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _text(label: Any, limit: int | None = MAX_LABEL_CHARS) -> str:
    """Data -> safe, short label: visible newlines/tabs, escaped '$' (mathtext), truncated with '…'."""
    s = str(label).replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("$", r"\$")


def _array(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, any device/dtype
        x = x.detach().float().cpu().numpy()
    if isinstance(x, list | tuple):  # None marks a missing value, as in the JSON artifacts
        x = [[np.nan if v is None else v for v in row] if isinstance(row, list | tuple) else row for row in x]
    arr = np.asarray(x, dtype=float)
    if ndim is not None and arr.ndim != ndim:
        raise FigureDataError(f"{name} has shape {arr.shape}; expected a {ndim}-D array")
    return arr


def _floats(values: Iterable[Any]) -> np.ndarray:
    """Scores with None/NaN for missing values -> float array with NaN gaps (lines break there)."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _token_ticks(ax: Any, tokens: Sequence[str], axis: str = "x") -> None:
    """Token tick labels; for long sequences label every k-th token so the labels stay legible."""
    n = len(tokens)
    step = max(1, math.ceil(n / MAX_TOKEN_TICKS))
    idx = list(range(0, n, step))
    labels = [_text(tokens[i], 10) for i in idx]
    if axis == "x":
        ax.set_xticks(idx, labels, rotation=90, fontsize=TICK_FONT)
    else:
        ax.set_yticks(idx, labels, fontsize=TICK_FONT)


def _layer_ticks(ax: Any, layers: Sequence[int], positions: Sequence[float] | None = None) -> None:
    pos = list(range(len(layers))) if positions is None else list(positions)
    ax.set_xticks(pos, [str(layer) for layer in layers], fontsize=TICK_FONT)


def _style(ax: Any, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
           fonts: tuple[int, int, int] = (TICK_FONT, LABEL_FONT, TITLE_FONT)) -> None:
    tick, label, head = fonts
    if title:
        ax.set_title(_text(title, 90), fontsize=head)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=label)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=label)
    ax.tick_params(labelsize=tick)


def _legend(ax: Any, n: int) -> None:
    if n > 1:
        ax.legend(fontsize=TICK_FONT, ncols=1 if n <= 8 else 2, frameon=False, loc="best")


def _sym_limit(arr: np.ndarray) -> float:
    finite = np.abs(arr[np.isfinite(arr)])
    peak = float(finite.max()) if finite.size else 0.0
    return peak if peak > 0 else 1.0


def _per_key_layers(curves: Mapping[str, Mapping[int, float]], name: str) -> list[int]:
    if not curves:
        raise FigureDataError(f"{name} is empty; expected {{name: {{layer: value}}}}")
    return sorted({int(layer) for per in curves.values() for layer in per})


# -------------------------------------------------------------------------------------------- figures


def layer_method_heatmap(
    values: Mapping[tuple[str, int], float | None], metric: str, higher_is_better: bool = True
) -> Figure:
    """Methods x layers heatmap of one metric; the best cell of each method is outlined and labelled."""
    if not values:
        raise FigureDataError("layer_method_heatmap got no values; expected {(method, layer): value}")
    methods = list(dict.fromkeys(m for m, _ in values))
    layers = sorted({int(layer) for _, layer in values})
    grid = np.full((len(methods), len(layers)), np.nan)
    for (m, layer), v in values.items():
        grid[methods.index(m), layers.index(int(layer))] = np.nan if v is None else float(v)

    fig, ax = _new_figure(min(14.0, 2.2 + 0.32 * len(layers)), min(8.0, 1.4 + 0.32 * len(methods)))
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", interpolation="nearest")
    for row in range(len(methods)):
        vals = grid[row]
        if not np.isfinite(vals).any():
            continue
        col = int(np.nanargmax(vals) if higher_is_better else np.nanargmin(vals))
        ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        r, g, b, _ = im.cmap(im.norm(vals[col]))
        ax.annotate(
            f"★{vals[col]:.3g}",
            (col, row),
            ha="center",
            va="center",
            fontsize=TICK_FONT,
            color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white",
            fontweight="bold",
        )
    _layer_ticks(ax, layers)
    ax.set_yticks(range(len(methods)), [_text(m) for m in methods], fontsize=TICK_FONT)
    best = "max" if higher_is_better else "min"
    _style(ax, f"{metric} by method × layer (★ = {best} per method)", "layer", "method")
    cbar = fig.colorbar(im, ax=ax, shrink=0.9)
    cbar.ax.tick_params(labelsize=TICK_FONT)
    cbar.set_label(_text(metric, 40), fontsize=LABEL_FONT)
    return fig


def cosine_matrix_figure(names: Sequence[str], matrix: Any) -> Figure:
    """Square cosine-similarity matrix on a fixed [-1, 1] diverging scale; values printed when small."""
    mat = _array(matrix, "matrix", ndim=2)
    n = len(names)
    if mat.shape != (n, n):
        raise FigureDataError(f"matrix has shape {mat.shape}; expected ({n}, {n}) for {n} names")
    size = min(12.0, 2.5 + 0.35 * n)
    fig, ax = _new_figure(size + 1.0, size, layout="compressed")
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if np.isfinite(mat[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{mat[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=TICK_FONT - 1,
                        color="white" if abs(mat[i, j]) > 0.6 else "black",
                    )
    labels = [_text(s) for s in names]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=TICK_FONT)
    ax.set_yticks(range(n), labels, fontsize=TICK_FONT)
    _style(ax, "cosine similarity")
    cbar = fig.colorbar(im, ax=ax, shrink=0.85)
    cbar.ax.tick_params(labelsize=TICK_FONT)
    return fig


def pca_scatter_figure(names: Sequence[str], coords: Any, var_ratio: Sequence[float]) -> Figure:
    """Vectors on their first two principal components, each point labelled with its name."""
    xy = _array(coords, "coords", ndim=2)
    if xy.shape[0] != len(names) or xy.shape[1] < 2:
        raise FigureDataError(
            f"coords has shape {xy.shape}; expected ({len(names)}, >=2) for {len(names)} names"
        )
    ratio = [float(v) for v in (var_ratio.tolist() if hasattr(var_ratio, "tolist") else var_ratio)]
    if len(ratio) < 2:
        raise FigureDataError(f"var_ratio has {len(ratio)} values; expected at least 2 (PC1, PC2)")
    fig, ax = _new_figure(4.8, 4.0)
    ax.scatter(xy[:, 0], xy[:, 1], s=18, c=np.arange(len(names)), cmap="tab20")
    for name, (x, y) in zip(names, xy[:, :2], strict=True):
        ax.annotate(_text(name, 20), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=TICK_FONT)
    ax.axhline(0, color="#bbb", linewidth=0.6, zorder=0)
    ax.axvline(0, color="#bbb", linewidth=0.6, zorder=0)
    _style(ax, "PCA of vectors", f"PC1 ({100 * ratio[0]:.1f}%)", f"PC2 ({100 * ratio[1]:.1f}%)")
    return fig


def _mean_by_coef(points: Sequence[Mapping[str, Any]], key: str) -> dict[float, float]:
    acc: dict[float, list[float]] = {}
    for p in points:
        v = p.get(key)
        if v is not None and math.isfinite(float(v)):
            acc.setdefault(float(p["coef"]), []).append(float(v))
    return {c: sum(vs) / len(vs) for c, vs in acc.items()}


def steering_curve_figure(
    points: Sequence[Mapping[str, Any]],
    threshold: float,
    title: str,
    baselines: Mapping[str, float | None] | None = None,
) -> Figure:
    """Trait score and coherence vs steering coefficient, the coherence threshold and best coherent point.

    ``points``: ``{"coef", "trait", "coherence"}`` each (trait/coherence may be None when the judge gate
    rejected a score); several points at one coefficient are averaged. ``baselines`` (e.g. unsteered,
    prompted trait scores) are drawn as dotted lines so steering can be compared with simply asking.
    X is log-scaled when |coef| spans more than 10x (symlog if a coefficient is <= 0).
    """
    if not points:
        raise FigureDataError("steering_curve_figure got no points; expected [{coef, trait, coherence}, ...]")
    for i, p in enumerate(points):
        if "coef" not in p:
            raise FigureDataError(f"point {i} has no 'coef'; expected keys coef, trait, coherence")
    trait, coh = _mean_by_coef(points, "trait"), _mean_by_coef(points, "coherence")
    coefs = sorted({float(p["coef"]) for p in points})

    fig, ax = _new_figure(5.2, 3.4)
    for series, label, colour in ((trait, "trait score", "tab:red"), (coh, "coherence", "tab:blue")):
        xs = [c for c in coefs if c in series]
        ax.plot(
            xs, [series[c] for c in xs], marker="o", markersize=3, linewidth=1.2, color=colour, label=label
        )
    label = f"coherence ≥ {threshold:g}"
    ax.axhline(threshold, color="tab:blue", linestyle="--", linewidth=0.9, label=label)
    for (name, value), style in zip((baselines or {}).items(), (":", "-.", (0, (1, 3))) * 4, strict=False):
        if value is not None:
            ax.axhline(
                float(value),
                color="gray",
                linestyle=style,
                linewidth=0.9,
                label=f"{_text(name, 20)} {value:.1f}",
            )
    coherent = [c for c in coefs if c in trait and coh.get(c, -math.inf) >= threshold]
    if coherent:
        best = max(coherent, key=lambda c: trait[c])
        ax.scatter(
            [best],
            [trait[best]],
            marker="*",
            s=90,
            color="gold",
            edgecolor="black",
            zorder=5,
            label=f"best coherent: {best:.3g}",
        )

    mags = [abs(c) for c in coefs if c != 0]
    if mags and max(mags) / min(mags) > 10:
        if min(coefs) > 0:
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=min(mags))
        # Plain numbers at the tried coefficients read better than 10^k decades.
        if len(coefs) <= 12:
            ax.set_xticks(coefs, [f"{c:.3g}" for c in coefs])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(-2, 102)
    _style(ax, title, "steering coefficient", "judge score (0–100)")
    ax.legend(fontsize=TICK_FONT, frameon=False, loc="best")
    return fig


def _check_scores(tokens: Sequence[str], scores_by_trait: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not scores_by_trait:
        raise FigureDataError("scores_by_trait is empty; expected {trait: [score per token]}")
    out = {}
    for trait, scores in scores_by_trait.items():
        arr = _floats(scores)
        if arr.shape != (len(tokens),):
            raise FigureDataError(
                f"scores for {trait!r} have {arr.size} values; expected {len(tokens)} (one per token)"
            )
        out[trait] = arr
    return out


def trajectory_figure(
    tokens: Sequence[str],
    scores_by_trait: Mapping[str, Any],
    title: str,
    n_prompt_tokens: int = 0,
) -> Figure:
    """Per-token score trajectories, one line per trait; the prompt part (if any) is shaded."""
    series = _check_scores(tokens, scores_by_trait)
    fig, ax = _new_figure(min(16.0, 3.5 + 0.06 * len(tokens)), 3.2)
    x = np.arange(len(tokens))
    for trait, arr in series.items():
        ax.plot(
            x,
            arr,
            linewidth=1.0,
            marker="." if len(tokens) <= 60 else None,
            markersize=3,
            label=_text(trait, 24),
        )
    if n_prompt_tokens > 0:
        ax.axvspan(-0.5, n_prompt_tokens - 0.5, color="#eee", zorder=0)
    ax.axhline(0, color="#999", linewidth=0.6, zorder=0)
    _token_ticks(ax, tokens)
    ax.set_xlim(-0.5, max(len(tokens) - 0.5, 0.5))
    _style(ax, title, None, "score")
    _legend(ax, len(series))
    return fig


def trait_token_heatmap(
    tokens: Sequence[str], scores_by_trait: Mapping[str, Any], normalize_rows: bool = True
) -> Figure:
    """Traits x tokens heatmap centred at 0; each row scaled by its own max |score| (normalize_rows)."""
    series = _check_scores(tokens, scores_by_trait)
    grid = np.stack(list(series.values())) if series else np.zeros((0, len(tokens)))
    if normalize_rows:
        grid = np.stack([row / _sym_limit(row) for row in grid])
    lim = 1.0 if normalize_rows else _sym_limit(grid)
    fig, ax = _new_figure(min(16.0, 3.0 + 0.06 * len(tokens)), min(8.0, 1.4 + 0.3 * len(series)))
    im = ax.imshow(
        np.ma.masked_invalid(grid),
        aspect="auto",
        cmap="RdBu_r",
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim),
        interpolation="nearest",
    )
    _token_ticks(ax, tokens)
    ax.set_yticks(range(len(series)), [_text(t, 20) for t in series], fontsize=TICK_FONT)
    _style(ax, "trait score per token")
    cbar = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.01)
    cbar.ax.tick_params(labelsize=TICK_FONT)
    cbar.set_label("score / max|score| (per trait)" if normalize_rows else "score", fontsize=LABEL_FONT)
    return fig


def _layer_lines(ax: Any, curves: Mapping[str, Mapping[int, float | None]],
                 bands: Mapping[str, Mapping[int, tuple[float, float]]] | None = None,
                 tick_font: int = TICK_FONT) -> list[int]:
    layers = _per_key_layers(curves, "metric_by_layer")
    for name, per in curves.items():
        xs = sorted(int(layer) for layer in per)
        ys = _floats(per[layer] if layer in per else per[str(layer)] for layer in xs)
        line = ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.1, label=_text(name, 48))[0]
        band = (bands or {}).get(name)
        if band:
            bx = [x for x in xs if x in band]
            lo, hi = _floats(band[x][0] for x in bx), _floats(band[x][1] for x in bx)
            ax.fill_between(bx, lo, hi, color=line.get_color(), alpha=0.18, linewidth=0)
    step = max(1, math.ceil(len(layers) / 30))
    ax.set_xticks(layers[::step], [str(layer) for layer in layers[::step]], fontsize=tick_font)
    return layers


def layer_curve_figure(metric_by_layer: Mapping[str, Mapping[int, float | None]], metric: str,
                       bands: Mapping[str, Mapping[int, tuple[float, float]]] | None = None, *,
                       ylim: tuple[float, float] | None = None, chance: float | None = None,
                       zero_line: bool = False, title: str | None = None, mark_layer: int | None = None,
                       mark_label: str = "best layer") -> Figure:
    """One line per trait/method: a metric against layer index; `bands` shades each line's 95% interval.

    Read at a glance: fixed limits (`ylim`; else from 0 or below to the top of every band), the x axis over
    every layer drawn, a dashed chance line (`chance`, e.g. 0.5 for accuracy) or a zero line, a dotted
    vertical line at `mark_layer` (the chosen layer), legend names as given (put the sample sizes in them)
    and text sized for the artifact viewer's default zoom.
    """
    fig, ax = _new_figure(6.4, 3.9)
    layers = _layer_lines(ax, metric_by_layer, bands, tick_font=READABLE_TICK)
    ax.set_xlim(layers[0] - 0.5, layers[-1] + 0.5)
    if chance is not None:
        ax.axhline(chance, color="#555", linestyle="--", linewidth=0.9, label=f"chance {chance:g}", zorder=1)
    if zero_line:
        ax.axhline(0.0, color="#777", linewidth=0.7, zorder=1)
    if mark_layer is not None:
        ax.axvline(mark_layer, color="#333", linestyle=":", linewidth=1.0, label=f"{mark_label} {mark_layer}", zorder=1)
    ax.set_ylim(*(ylim or _span_with_zero(metric_by_layer, bands)))
    _style(ax, title or f"{metric} by layer", "layer", _text(metric, 40), fonts=READABLE)
    ax.grid(alpha=0.3, linewidth=0.5)
    n_entries = len(metric_by_layer) + (chance is not None) + (mark_layer is not None)
    if n_entries > 1:
        ax.legend(fontsize=READABLE_TICK, ncols=1 if n_entries <= 6 else 2, frameon=False, loc="best")
    return fig


def _span_with_zero(curves: Mapping[str, Mapping[int, float | None]],
                    bands: Mapping[str, Mapping[int, tuple[float, float]]] | None) -> tuple[float, float]:
    """y limits that include 0 and every value and band edge, with a little headroom."""
    values = [v for per in curves.values() for v in per.values() if v is not None]
    values += [x for band in (bands or {}).values() for pair in band.values() for x in pair if x is not None]
    finite = [float(v) for v in values if math.isfinite(float(v))] or [0.0]
    lo, hi = min(0.0, min(finite)), max(0.0, max(finite))
    pad = 0.05 * (hi - lo) or 1.0
    return lo - (pad if lo < 0 else 0.0), hi + pad


def projection_histogram_figure(panels: Mapping[str, tuple[Any, Any]], title: str,
                                threshold: float | None = None, xlabel: str = "cosine with the vector") -> Figure:
    """Positive vs negative projections, one panel per part of the data (train, held-out, OOD).

    ``panels``: ``{name: (positive scores, negative scores)}``; every panel shares one x range and the same
    bins so the parts compare by eye; the legend gives each side's n; ``threshold`` (the train midpoint
    the accuracies use) is a dashed line.
    """
    if not panels:
        raise FigureDataError("projection_histogram_figure got no panels; expected {name: (pos, neg)}")
    data = {name: (_floats(p), _floats(n)) for name, (p, n) in panels.items()}
    finite = np.concatenate([a[np.isfinite(a)] for pair in data.values() for a in pair])
    if finite.size == 0:
        raise FigureDataError("projection_histogram_figure got no finite scores")
    lo, hi = float(finite.min()), float(finite.max())
    pad = 0.05 * (hi - lo) or 0.05
    bins = np.linspace(lo - pad, hi + pad, 31)
    fig = Figure(figsize=(6.4, 1.2 + 1.7 * len(data)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(data), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, (pos, neg)) in zip(axes, data.items(), strict=True):
        for arr, label, colour in ((pos, "positive", "tab:red"), (neg, "negative", "tab:blue")):
            ok = arr[np.isfinite(arr)]
            ax.hist(ok, bins=bins, color=colour, alpha=0.45, label=f"{label} (n={ok.size})")
        if threshold is not None and math.isfinite(threshold):
            ax.axvline(threshold, color="#333", linestyle="--", linewidth=0.9, label=f"train threshold {threshold:.3g}")
        _style(ax, name, None, "count", fonts=READABLE)
        ax.legend(fontsize=READABLE_TICK, frameon=False, loc="upper left")
    axes[-1].set_xlabel(xlabel, fontsize=READABLE[1])
    axes[-1].set_xlim(bins[0], bins[-1])
    fig.suptitle(_text(title, 90), fontsize=READABLE[2])
    return fig


def model_diff_figure(
    d_by_layer: Mapping[str, Mapping[int, float | None]], title: str | None = None
) -> Figure:
    """Cohen's d between two model variants per layer, one line per trait, with a zero line."""
    fig, ax = _new_figure(5.2, 3.2)
    _layer_lines(ax, d_by_layer)
    ax.axhline(0, color="#777", linewidth=0.7, zorder=0)
    _style(ax, title or "model diff: Cohen's d per layer", "layer", "Cohen's d (variant − base)")
    ax.grid(alpha=0.3, linewidth=0.5)
    _legend(ax, len(d_by_layer))
    return fig


def entanglement_figure(matrix: EntanglementMatrix, title: str | None = None) -> Figure:
    """Steered trait (rows) x measured trait (columns) shift heatmap, diverging around 0.

    Each cell shows its shift and 95% interval; cells whose interval includes 0 are hatched and their
    numbers grey (noise, not an effect); the diagonal (the intended effect) is outlined; unmeasured cells
    are blank.
    """
    names = matrix.traits
    k = len(names)
    if k == 0:
        raise FigureDataError("entanglement_figure got an empty matrix; expected at least one trait")
    grid = np.asarray(matrix.delta, dtype=float)
    if grid.shape != (k, k):
        raise FigureDataError(f"delta has shape {grid.shape}; expected ({k}, {k}) for {k} traits")
    sure = matrix.excludes_zero()
    lim = _sym_limit(grid)
    size = min(12.0, 2.6 + 0.9 * k)
    fig, ax = _new_figure(size + 1.2, size, layout="compressed")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim),
                   interpolation="nearest")
    for i in range(k):
        for j in range(k):
            if not np.isfinite(grid[i, j]):
                continue
            if not sure[i, j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="////", edgecolor="#999",
                                       linewidth=0))
            if k <= 10:
                label = f"{grid[i, j]:+.2g}"
                if np.isfinite(matrix.low[i, j]) and np.isfinite(matrix.high[i, j]):
                    label += f"\n[{matrix.low[i, j]:+.2g}, {matrix.high[i, j]:+.2g}]"
                strong = abs(grid[i, j]) > 0.6 * lim
                colour = ("white" if strong else "black") if sure[i, j] else "#777"
                ax.text(j, i, label, ha="center", va="center", fontsize=TICK_FONT - 1, color=colour)
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.4))
    labels = [_text(t, 20) for t in names]
    ax.set_xticks(range(k), labels, rotation=90, fontsize=TICK_FONT)
    ax.set_yticks(range(k), labels, fontsize=TICK_FONT)
    _style(ax, title or f"entanglement: {matrix.measure} of each trait (hatched: 95% interval includes 0)",
           f"measured trait ({matrix.measure})", "steered vector's trait")
    cbar = fig.colorbar(im, ax=ax, shrink=0.85)
    cbar.ax.tick_params(labelsize=TICK_FONT)
    cbar.set_label(f"{_text(matrix.measure, 30)} (steered − unsteered)", fontsize=LABEL_FONT)
    return fig


def frontier_figure(
    trials: Sequence[Mapping[str, Any]],
    title: str,
    *,
    threshold: float | None = None,
    chosen: int | None = None,
    unsteered: Mapping[str, float | None] | None = None,
    prompted: Mapping[str, float | None] | None = None,
) -> Figure:
    """The trade-off of a steering study: capability (x) against trait delta (y), coloured by coherence.

    ``trials``: ``{"delta", "coherence", "capability"}`` per trial, optionally ``capability_low/high`` (its
    95% interval, drawn as a horizontal bar). Trials with coherence >= ``threshold`` are filled circles, the
    rest crosses; the Pareto front of the coherent trials (no other coherent trial has both more capability
    and more delta) is a line. ``chosen`` (an index into ``trials``) is a gold star. ``unsteered`` and
    ``prompted`` are ``{"delta", "capability"}``: the unsteered model sits at delta 0; the prompted baseline
    (a system prompt asking for the trait) is a diamond, or a dashed line at its delta when its capability
    was not measured, so steering can be compared with simply asking.
    """
    if not trials:
        raise FigureDataError("frontier_figure got no trials; expected [{delta, coherence, capability}, ...]")
    for i, t in enumerate(trials):
        missing = [key for key in ("delta", "capability") if key not in t]
        if missing:
            raise FigureDataError(f"trial {i} lacks {', '.join(missing)}; expected keys delta, coherence, capability")
    if chosen is not None and not 0 <= chosen < len(trials):
        raise FigureDataError(f"chosen={chosen} is not an index into the {len(trials)} trials")
    x = _floats(t.get("capability") for t in trials)
    y = _floats(t.get("delta") for t in trials)
    coh = _floats(t.get("coherence") for t in trials)
    ok = np.isfinite(coh) & (coh >= threshold) if threshold is not None else np.isfinite(coh)

    fig, ax = _new_figure(5.4, 3.8)
    for i, t in enumerate(trials):
        lo, hi = t.get("capability_low"), t.get("capability_high")
        if lo is not None and hi is not None and np.isfinite(y[i]):
            ax.plot([lo, hi], [y[i], y[i]], color="#bbb", linewidth=0.8, zorder=1)
    scale = {"cmap": "viridis", "vmin": 0.0, "vmax": 100.0}
    sc = ax.scatter(x[ok], y[ok], c=coh[ok], s=22, edgecolor="black", linewidth=0.4, zorder=3,
                    label="coherent trial" if threshold is not None else "trial", **scale)
    if (~ok).any():
        ax.scatter(x[~ok], y[~ok], c=np.nan_to_num(coh[~ok], nan=0.0), marker="x", s=22, linewidth=1.0, zorder=3,
                   label="incoherent trial" if threshold is not None else "trial without coherence", **scale)
    coherent = [i for i in range(len(trials)) if ok[i]]
    front = [coherent[i] for i in pareto_front([x[i] for i in coherent], [y[i] for i in coherent])]
    if len(front) > 1:
        ax.plot(x[front], y[front], color="tab:red", linewidth=1.0, zorder=2, label="frontier (coherent)")
    if chosen is not None and np.isfinite(x[chosen]) and np.isfinite(y[chosen]):
        ax.scatter([x[chosen]], [y[chosen]], marker="*", s=150, color="gold", edgecolor="black", zorder=5,
                   label="chosen")
    ax.axhline(0.0, color="#999", linewidth=0.6, zorder=0)
    base_cap = (unsteered or {}).get("capability")
    if base_cap is not None and math.isfinite(float(base_cap)):
        ax.scatter([base_cap], [0.0], marker="s", s=40, color="black", zorder=4, label="unsteered")
    if prompted and prompted.get("delta") is not None:
        p_cap = prompted.get("capability")
        if p_cap is not None and math.isfinite(float(p_cap)):
            ax.scatter([p_cap], [prompted["delta"]], marker="D", s=40, color="tab:orange", edgecolor="black",
                       zorder=4, label="prompted")
        else:
            ax.axhline(float(prompted["delta"]), color="tab:orange", linestyle="--", linewidth=1.0,
                       label=f"prompted delta {float(prompted['delta']):.3g}")
    _style(ax, title, "capability accuracy", "trait delta (steered − unsteered)")
    cbar = fig.colorbar(sc, ax=ax, shrink=0.9)
    cbar.ax.tick_params(labelsize=TICK_FONT)
    cbar.set_label("coherence (0–100)", fontsize=LABEL_FONT)
    ax.legend(fontsize=TICK_FONT, frameon=False, loc="best")
    return fig
