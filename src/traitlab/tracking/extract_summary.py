"""What an extraction sweep's parent run shows: the best of each child, the winner, and figures that overlay them.

The parent row of the run table then compares methods without opening a child:
- `best/<child>/<metric>` per child (`<child>` = the settings that differ between children, e.g. `probe` or
  `starter/optimism/probe`): best layer, the selection metric with its 95% interval, val and OOD accuracy;
- with one trait, the winner's own `best/<metric>` and `n_*` and tags trait / method / component, so the
  parent's cells line up with the children's columns; `traitlab.winner_run_id` names the run;
- a description: the winner, the runner-up, whether their intervals overlap, the sample sizes;
- tables/children.json (one row per child) and figures: accuracy and effect size by layer with the methods
  overlaid, and the cosine between the methods' vectors per layer.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlab.core.vecmath import cosine_similarity
from traitlab.tracking.artifacts import load_vector, slug, vector_dir
from traitlab.tracking.datasets import copy_dataset_inputs
from traitlab.tracking.names import BEST, NORMALIZATION_TAG, best_metric, layer_metric
from traitlab.tracking.notes import interval, part_n, set_run_note, short_metric

# `normalization`: "raw" for vectors as extracted, else the steps of a cross-trait normalised run
SETTINGS = ("trait", "method", "normalization", "component", "position")
SERIES = tuple(f"{part}_{stat}{end}" for part in ("cv", "val", "ood") for stat in ("accuracy", "effect_size")
               for end in ("", "_lo", "_hi"))


@dataclass
class Child:
    """One finished extraction child: its settings, its `best/` summary (bare names) and sample sizes."""

    run: Any
    settings: dict[str, str]
    best: dict[str, float]
    counts: dict[str, float]
    key: str = ""
    per_layer: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def value(self, metric: str) -> float:
        return self.best.get(metric, math.nan)


def _child(run: Any) -> Child:
    m, tags = run.data.metrics, run.data.tags
    settings = {s: tags.get(s, "?") for s in SETTINGS}
    settings["normalization"] = tags.get(NORMALIZATION_TAG, "raw")
    return Child(run, settings,
                 {k[len(BEST):]: v for k, v in m.items() if k.startswith(BEST)},
                 {k: v for k, v in m.items() if k.startswith("n_")})


def _metric_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]+", "_", text).strip("_") or "x"


def _assign_keys(children: list[Child]) -> list[str]:
    """Name each child by the settings that differ between children (method alone in a method sweep)."""
    varying = [s for s in SETTINGS if len({c.settings[s] for c in children}) > 1] or ["method"]
    seen: dict[str, int] = defaultdict(int)
    for c in children:
        key = "/".join(_metric_safe(c.settings[s] if s != "position" else slug(c.settings[s])) for s in varying)
        seen[key] += 1
        c.key = key if seen[key] == 1 else f"{key}-{seen[key]}"
    return varying


def _selection(children: list[Child]) -> str:
    chosen = {c.run.data.tags.get("traitlab.selection", "val_effect_size") for c in children}
    return chosen.pop() if len(chosen) == 1 else "val_effect_size"


def _ranked(children: list[Child], selection: str) -> list[Child]:
    scored = [c for c in children if math.isfinite(c.value(selection))]
    return sorted(scored, key=lambda c: c.value(selection), reverse=True)


def _with_interval(c: Child, metric: str) -> str:
    v, lo, hi = c.value(metric), c.value(f"{metric}_lo"), c.value(f"{metric}_hi")
    if not math.isfinite(v):
        return "undefined"
    return interval(v, lo, hi) if math.isfinite(lo) and math.isfinite(hi) else f"{v:.2f}"


def _method_label(c: Child) -> str:
    """The method, with the normalisation steps of a normalised run (`probe+center+denoise`)."""
    norm = c.settings["normalization"]
    return c.settings["method"] + ("" if norm == "raw" else f"+{norm}")


def _label(c: Child, varying: list[str]) -> str:
    return " · ".join(c.settings[s] for s in varying if s != "trait") or c.settings["method"]


def verdict(ranked: list[Child], selection: str, varying: list[str]) -> tuple[str, str]:
    """One trait's verdict: a headline short enough for the run table's Description cell (~50 characters show)
    naming the winner and runner-up, and the detail with both 95% intervals and the n behind them."""
    if not ranked:
        return f"no winner: {selection} undefined", f"no child has a defined {selection}"
    w = ranked[0]
    part = selection.split("_", 1)[0]
    head = f"winner {_label(w, varying)} L{int(w.value('layer'))} ({short_metric(selection)} {w.value(selection):.2f}"
    detail = f"{selection} {_with_interval(w, selection)}"
    if len(ranked) == 1:
        return head + ")", detail + f"; n {part_n(w.counts, part)} ({part})"
    r = ranked[1]
    apart = w.value(f"{selection}_lo") > r.value(f"{selection}_hi")  # False when an interval is undefined
    head += f" vs {_label(r, varying)} {r.value(selection):.2f}: intervals {'apart' if apart else 'overlap'})"
    detail += (f" vs {_label(r, varying)} {_with_interval(r, selection)}: "
               + ("the 95% intervals do not overlap" if apart
                  else "the 95% intervals overlap, so this ranking may be noise")
               + f"; n {part_n(w.counts, part)} ({part})")
    return head, detail


def _table(children: list[Child], selection: str) -> dict[str, list]:
    cols: dict[str, list] = defaultdict(list)
    counts = sorted({k for c in children for k in c.counts})  # children may log different n_* (normalised runs)
    for c in children:
        for k, v in (("run_id", c.run_id), ("run_name", c.run.info.run_name), *c.settings.items(),
                     ("best_layer", c.value("layer")), (selection, c.value(selection)),
                     (f"{selection}_lo", c.value(f"{selection}_lo")), (f"{selection}_hi", c.value(f"{selection}_hi")),
                     ("val_accuracy", c.value("val_accuracy")), ("ood_accuracy", c.value("ood_accuracy")),
                     *((k, c.counts.get(k)) for k in counts)):
            cols[k].append(None if isinstance(v, float) and not math.isfinite(v) else v)
    return dict(cols)


def _markdown(children: list[Child], selection: str, varying: list[str]) -> list[str]:
    head = f"| child | best layer | {selection} [95%] | val accuracy | OOD accuracy | n train |"
    rows = [head, "|" + "---|" * 6]
    for c in children:
        layer = c.value("layer")
        rows.append(f"| {_label(c, varying) if len(varying) else c.key} | "
                    f"{int(layer) if math.isfinite(layer) else '–'} | {_with_interval(c, selection)} | "
                    f"{_with_interval(c, 'val_accuracy')} | {_with_interval(c, 'ood_accuracy')} | "
                    f"{part_n(c.counts, 'train')} |")
    return rows


def summarize_extraction(client: Any, parent_run_id: str, runs: list[Any]) -> list[Child]:
    """Log on the parent the best of each extraction child, the winner(s), a description, a table and figures."""
    children = [_child(r) for r in runs
                if r.data.tags.get("traitlab.stage") == "extract" and r.info.status == "FINISHED"]
    if not children:
        return []
    children.sort(key=lambda c: tuple(c.settings[s] for s in SETTINGS))
    varying = _assign_keys(children)
    selection = _selection(children)
    metrics: dict[str, float] = {}
    for c in children:
        for name in ("layer", selection, f"{selection}_lo", f"{selection}_hi", "val_accuracy", "ood_accuracy"):
            if math.isfinite(c.value(name)):
                metrics[f"{BEST}{c.key}/{name}"] = round(c.value(name), 4)
    by_trait: dict[str, list[Child]] = defaultdict(list)
    for c in children:
        by_trait[c.settings["trait"]].append(c)
    heads, details, winners = [], [], {}
    for trait, group in by_trait.items():
        ranked = _ranked(group, selection)
        head, detail = verdict(ranked, selection, varying)
        prefix = f"{trait}: " if len(by_trait) > 1 else ""
        heads.append(prefix + head)
        details.append(f"- {prefix}{detail}")
        if ranked:
            winners[trait] = ranked[0]
            client.set_tag(parent_run_id, f"traitlab.winner/{_metric_safe(trait)}",
                           f"{_label(ranked[0], varying)} · layer {int(ranked[0].value('layer'))}")
    if len(by_trait) == 1 and winners:
        (w,) = winners.values()
        metrics.update({best_metric(k): round(v, 4) for k, v in w.best.items() if math.isfinite(v)})
        metrics.update(w.counts)
        for s in ("trait", "method", "component", "position"):
            client.set_tag(parent_run_id, s, w.settings[s])
        client.set_tag(parent_run_id, "traitlab.winner_run_id", w.run_id)
    _log_metrics(client, parent_run_id, metrics)
    client.log_table(parent_run_id, data=_table(children, selection), artifact_file="tables/children.json")
    copy_dataset_inputs(client, [c.run for c in children], parent_run_id)
    note = ["; ".join(heads), "", *details, "",
            f"{len(children)} extraction runs compared on `{selection}` (d: Cohen's d of the cosine scores) at "
            "each run's best layer; intervals are 95% bootstrap.", ""]
    note += _markdown(children, selection, varying)
    set_run_note(client, parent_run_id, "\n".join(note))
    _log_figures(client, parent_run_id, children, selection)
    return children


def _log_metrics(client: Any, run_id: str, metrics: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, 0) for k, v in sorted(metrics.items())]
    for i in range(0, len(items), 900):
        client.log_batch(run_id, metrics=items[i:i + 900])


def _per_layer(client: Any, run_id: str) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for name in SERIES:
        for m in client.get_metric_history(run_id, layer_metric(name)):
            out[int(m.step)][name] = float(m.value)
    return dict(out)


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No per-file progress bar from MLflow while the parent reads its children's vectors (60 files a child)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _vectors(client: Any, c: Child, tmp: str) -> dict[int, Any]:
    d = vector_dir(c.settings["component"], c.settings["position"], c.settings["method"])
    dst = Path(tmp) / c.run_id
    dst.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet_downloads():
            local = Path(client.download_artifacts(c.run_id, d, str(dst)))
    except Exception:  # noqa: BLE001 - a child without vector files (cut short) is left out of the cosines
        return {}
    return {int(f.stem.split("_")[-1]): load_vector(f)[0] for f in sorted(local.glob("layer_*.safetensors"))}


def _log_figures(client: Any, parent_run_id: str, children: list[Child], selection: str) -> None:
    from traitlab.viz.extraction import (
        accuracy_figure,
        cosine_by_layer_figure,
        effect_size_figure,
        part_curve,
    )

    groups: dict[tuple[str, str, str], list[Child]] = defaultdict(list)
    for c in children:
        groups[(c.settings["trait"], c.settings["component"], c.settings["position"])].append(c)
    for c in children:
        c.per_layer = _per_layer(client, c.run_id)
    sel_part = selection.split("_", 1)[0]
    plots = (("val_accuracy", "val", "accuracy", "held-out accuracy"),
             ("ood_accuracy", "ood", "accuracy", "OOD accuracy"),
             (selection, sel_part, "effect_size", f"{'cross-validated' if sel_part == 'cv' else 'held-out'} effect size"),
             ("ood_effect_size", "ood", "effect_size", "OOD effect size"))
    for (trait, component, position), group in groups.items():
        group_name = "" if len(groups) == 1 else f"{slug(trait)}-{component}-{slug(position)}"
        folder = f"figures/{group_name}".rstrip("/")
        where = f"{trait} · {component} · {position}"
        ranked = _ranked(group, selection)
        winner_layer = int(ranked[0].value("layer")) if ranked else None
        for name, part, stat, title in plots:
            curves, bands = {}, {}
            for c in group:
                values, band = part_curve(c.per_layer, part, stat)
                if values:
                    key = f"{_method_label(c)} (n={part_n(c.counts, part)})"
                    curves[key], bands[key] = values, band
            if not curves:
                continue
            make = accuracy_figure if stat == "accuracy" else effect_size_figure
            fig = make(curves, bands, f"{title} by layer · {where}", winner_layer)
            client.log_figure(parent_run_id, fig, f"{folder}/{name}_by_layer.png")
        if len(group) > 1:
            with tempfile.TemporaryDirectory() as tmp:
                vecs = {c.key: _vectors(client, c, tmp) for c in group}
            methods = {c.key: _method_label(c) for c in group}
            cosines = {}
            for a, b in itertools.combinations([k for k in vecs if vecs[k]], 2):
                common = sorted(set(vecs[a]) & set(vecs[b]))
                cosines[f"{methods[a]} vs {methods[b]}"] = {
                    lyr: float(cosine_similarity(vecs[a][lyr], vecs[b][lyr])) for lyr in common}
            for pair, per in cosines.items():  # also a series, so the Model metrics tab charts it
                for lyr, cos in per.items():
                    name = "/".join(p for p in ("cosine", group_name, pair.replace(" vs ", "_vs_")) if p)
                    client.log_metric(parent_run_id, layer_metric(_metric_safe(name)), round(cos, 4), step=lyr)
            if cosines:
                client.log_figure(parent_run_id, cosine_by_layer_figure(cosines, f"cosine between methods · {where}"),
                                  f"{folder}/method_cosine_by_layer.png")
