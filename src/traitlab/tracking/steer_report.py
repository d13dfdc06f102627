"""What a steer run shows a reader: its verdict (the run's description), the response browser
(report/steering.html), and its figures on fixed axes.

Reads a steering result by its fields (steering/results.py `SteerResult`, duck-typed so that tracking
stays below the pipelines): trait, objective, measures, threshold, direction, scorer_name, n_pairs,
baselines {unsteered, prompted: Sample(responses, coherence, trait, scorer, margins, capability)},
prompted {measure: Delta}, per_layer {layer: LayerResult(trials, best, base_coefficient)}, rows, best_layer.
A trial row carries number, coefficient, coherence, value, feasible, deltas {measure: {delta, low, high, n}},
margins (per pair), responses (per question: trait, scorer, coherence) and capability (or None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from traitlab.core.stats import Interval, bootstrap_mean
from traitlab.tracking.artifacts import FIGURES

REPORT_FILE = "report/steering.html"
PROPENSITY = "propensity"


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(mean: float, low: float, high: float, n: int | None = None, unit: str = "") -> str:
    out = f"{mean:+.3g} [{low:.3g}, {high:.3g}]{unit}"
    return out + (f" (n={n})" if n is not None else "")


# ------------------------------------------------------------------------------------------ per-item values


def trial_items(res: Any, trial: dict[str, Any], measure: str) -> list[float]:
    """A trial's per-item values of a measure (per pair for propensity, per question otherwise), NaN where
    unscored."""
    if measure == PROPENSITY:
        return [float("nan") if v is None else float(v) for v in trial.get("margins") or []]
    key = "trait" if measure == "trait" else "scorer"
    vals = [r.get(key) for r in sorted(trial.get("responses") or [], key=lambda r: int(r["question_index"]))]
    return [float(v) if _finite(v) else float("nan") for v in vals]


def paired_items(treated: Sequence[float], reference: Sequence[float], direction: int) -> list[float]:
    """direction * (treated - reference) per item, over the items finite in both."""
    if len(treated) != len(reference):
        return []
    return [direction * (t - r) for t, r in zip(treated, reference, strict=True) if math.isfinite(t) and math.isfinite(r)]


def versus_prompted(res: Any, seed: int = 0, n_boot: int = 2000) -> Interval | None:
    """The chosen coefficient's objective minus the prompted baseline's, paired over the same items, toward the
    trait, with a bootstrap 95% interval: does steering beat simply asking? None without both."""
    best = res.best_layer
    prompted = res.baselines.get("prompted")
    if best is None or prompted is None:
        return None
    trial = res.per_layer[best].best
    diffs = paired_items(trial_items(res, trial, res.objective), prompted.items(res.objective, res.scorer_name),
                         res.direction)
    return bootstrap_mean(diffs, seed=seed, n_boot=n_boot) if diffs else None


# ---------------------------------------------------------------------------------------------- verdict


def capability_line(res: Any, trial: dict[str, Any] | None) -> str:
    """'capability (40 items): unsteered 57.5% [42.2, 71.5], steered 55.0% [...], change -2.5 points [...]'."""
    base = res.baselines.get("unsteered")
    scores = getattr(base, "capability", None) if base is not None else None
    if scores is None:
        return ""
    acc = scores.accuracy_interval()
    line = f"Capability ({acc.n} items): unsteered {_pct(acc.mean)} [{_pct(acc.low)}, {_pct(acc.high)}]"
    cap = (trial or {}).get("capability")
    if cap:
        line += (f", steered {_pct(cap['accuracy'])} [{_pct(cap['low'])}, {_pct(cap['high'])}], change "
                 f"{100 * cap['delta']:+.1f} points [{100 * cap['delta_low']:+.1f}, {100 * cap['delta_high']:+.1f}]")
        line += " (interval includes 0: no measurable cost)" if cap["delta_low"] <= 0 <= cap["delta_high"] else ""
    return line + "."


def verdict_note(res: Any, seed: int = 0, n_boot: int = 2000) -> str:
    """The run's description: first line the headline (~50 characters show in the run table), then whether
    steering beats prompting, the capability cost, and the sample sizes."""
    lines = [res.verdict()]
    best = res.best_layer
    trial = res.per_layer[best].best if best is not None else None
    p = res.prompted.get(res.objective)
    if p is not None and p.interval.n:
        iv = p.interval
        lines.append(f"Prompted baseline (a system prompt asking for the trait): {res.objective} delta "
                     f"{_ci(iv.mean, iv.low, iv.high, iv.n)}.")
    vs = versus_prompted(res, seed, n_boot)
    if vs is not None and vs.n:
        word = ("steering beats prompting" if vs.low > 0 else "prompting beats steering" if vs.high < 0
                else "steering and prompting cannot be told apart (interval includes 0)")
        lines.append(f"Steered minus prompted, same items: {_ci(vs.mean, vs.low, vs.high, vs.n)}: {word}.")
    cap = capability_line(res, trial)
    if cap:
        lines.append(cap)
    if res.entanglement:
        lines.append("Propensity shift at the chosen coefficient, per trait (steered minus unsteered): " + "; ".join(
            f"{r['measured']} {_ci(r['delta'], r['low'], r['high'], r['n'])}" for r in res.entanglement) + ".")
    n_q = len(res.baselines["unsteered"].responses) if "unsteered" in res.baselines else 0
    pairs = ", ".join(f"{n} {k}" for k, n in res.n_pairs.items())
    trials = sum(len(r.trials) for r in res.per_layer.values())
    lines.append(f"Sample sizes: {n_q} questions" + (f", held-out pairs {pairs}" if pairs else "")
                 + f", {len(res.per_layer)} layer(s), {trials} trials. Responses: {REPORT_FILE}.")
    return "\n\n".join(lines)


# ----------------------------------------------------------------------------------------- the browser


def _condition(layer: Any, coefficient: Any, trial: Any) -> str:
    return f"L{int(layer)} c={float(coefficient):+.3g} #{int(trial)}"


def report_data(res: Any, title: str, meta: Sequence[str] = ()) -> dict[str, Any]:
    """The data of viz.steering_report.render_steering_report from a steering result."""
    obj, others = res.objective, [m for m in res.measures if m != res.objective]
    best = res.best_layer
    chosen = (best, res.per_layer[best].best["number"]) if best is not None else None
    cond_cols = [{"key": "condition", "label": "condition", "kind": "text"},
                 {"key": "layer", "label": "layer", "kind": "num"},
                 {"key": "coefficient", "label": "coefficient", "kind": "num"},
                 {"key": "coef_rel", "label": "× base", "kind": "num"},
                 {"key": "coherence", "label": "coherence", "kind": "num"},
                 {"key": "delta", "label": f"{obj} delta", "kind": "num"},
                 {"key": "low", "label": "95% low", "kind": "num"},
                 {"key": "high", "label": "95% high", "kind": "num"},
                 {"key": "n", "label": "n", "kind": "num"}]
    cond_cols += [{"key": f"delta_{m}", "label": f"{m} delta", "kind": "num"} for m in others]
    cond_cols += [{"key": "capability", "label": "capability", "kind": "num"},
                  {"key": "capability_delta", "label": "capability change", "kind": "num"},
                  {"key": "feasible", "label": "passes constraints", "kind": "num"}]
    cond_rows: list[dict[str, Any]] = []
    by_trial: dict[tuple[int, int], dict[str, Any]] = {}
    for cond in ("unsteered", "prompted"):
        s = res.baselines.get(cond)
        if s is None:
            continue
        row: dict[str, Any] = {"condition": cond, "coefficient": 0.0, "coherence": s.mean_coherence}
        if cond == "unsteered":
            row.update(delta=0.0)
        elif obj in res.prompted:
            d = res.prompted[obj].as_dict()
            row.update(delta=d["delta"], low=d["low"], high=d["high"], n=d["n"])
            row.update({f"delta_{m}": res.prompted[m].interval.mean for m in others if m in res.prompted})
        cap = getattr(s, "capability", None)
        if cap is not None:
            row["capability"] = cap.accuracy
            if cond == "prompted" and getattr(res.baselines["unsteered"], "capability", None) is not None:
                row["capability_delta"] = cap.accuracy - res.baselines["unsteered"].capability.accuracy
        cond_rows.append(row)
    for lyr, lr in sorted(res.per_layer.items()):
        for t in lr.trials:
            if t["coefficient"] is None:
                continue
            d = t["deltas"].get(obj, {})
            cap = t.get("capability") or {}
            row = {"condition": _condition(lyr, t["coefficient"], t["number"]), "layer": lyr,
                   "coefficient": t["coefficient"],
                   "coef_rel": t["coefficient"] / lr.base_coefficient if _finite(lr.base_coefficient)
                   and lr.base_coefficient > 0 else None,
                   "coherence": t["coherence"], "delta": d.get("delta"), "low": d.get("low"),
                   "high": d.get("high"), "n": d.get("n"), "capability": cap.get("accuracy"),
                   "capability_delta": cap.get("delta"), "feasible": bool(t["feasible"]),
                   "chosen": chosen == (lyr, t["number"])}
            row.update({f"delta_{m}": t["deltas"].get(m, {}).get("delta") for m in others})
            cond_rows.append(row)
            by_trial[(lyr, t["number"])] = row
    resp_cols = [{"key": "question_index", "label": "#", "kind": "num"},
                 {"key": "question", "label": "question", "kind": "text"},
                 {"key": "condition", "label": "condition", "kind": "text"},
                 {"key": "coefficient", "label": "coefficient", "kind": "num"},
                 {"key": "coherence", "label": "coherence", "kind": "num"},
                 {"key": "trait_score", "label": "trait score", "kind": "num"},
                 {"key": "scorer", "label": res.scorer_name or "scorer", "kind": "num"},
                 {"key": "delta", "label": f"condition's {obj} delta", "kind": "num"},
                 {"key": "response", "label": "response (full text)", "kind": "text"}]
    resp_rows = []
    for r in res.rows:
        row = {k: r.get(k) for k in ("question_index", "question", "coefficient", "coherence", "trait_score",
                                     "scorer", "response")}
        if r["condition"] == "steered" and r.get("layer") is not None and r.get("trial") is not None:
            trial = by_trial.get((int(r["layer"]), int(r["trial"])), {})
            row.update(condition=_condition(r["layer"], r["coefficient"], r["trial"]), delta=trial.get("delta"),
                       chosen=trial.get("chosen", False), feasible=trial.get("feasible"))
        else:
            base = next((c for c in cond_rows if c["condition"] == r["condition"]), {})
            row.update(condition=r["condition"], delta=base.get("delta"))
        resp_rows.append(row)
    return {"title": title, "meta": list(meta), "verdict": verdict_note(res).split("\n\n")[0],
            "conditions": {"columns": cond_cols, "rows": cond_rows},
            "responses": {"columns": resp_cols, "rows": resp_rows}}


# --------------------------------------------------------------------------------------------- figures


def figures(res: Any) -> dict[str, Any]:
    """{artifact path: Figure}: per layer the objective and coherence against the coefficient (coefficient 0,
    the unsteered model, drawn; the delta's interval as bars), the objective against coherence over every
    trial, the best delta per layer with intervals beside the prompted baseline, the per-item deltas at the
    chosen coefficient, the propensity of every held-out pair against the coefficient, and the trait /
    coherence / capability frontier per layer when capability was measured."""
    from traitlab.viz.figures import frontier_figure, layer_curve_figure
    from traitlab.viz.steering import (
        item_delta_figure,
        objective_curve_figure,
        propensity_curve_figure,
        trait_coherence_figure,
    )

    out: dict[str, Any] = {}
    obj = res.objective
    base = res.baselines.get("unsteered")
    base_coh = base.mean_coherence if base is not None else None
    p = res.prompted.get(obj)
    p_mean = p.interval.mean if p is not None and p.interval.n else None
    prompted_s = res.baselines.get("prompted")
    label = f"{obj} delta (toward the trait)"
    for lyr, lr in sorted(res.per_layer.items()):
        pts = [{"coef": t["coefficient"], "value": t["value"], "coherence": t["coherence"],
                "low": t["deltas"].get(obj, {}).get("low"), "high": t["deltas"].get(obj, {}).get("high")}
               for t in lr.trials if t["coefficient"] is not None]
        if pts:
            out[f"{FIGURES}/steering_layer_{lyr:03d}.png"] = objective_curve_figure(
                pts, res.threshold, f"{res.trait} layer {lyr}", value_label=label, prompted=p_mean,
                unsteered_coherence=base_coh)
        if base is not None and base.margins:
            curve = [{"coef": 0.0, "margins": list(base.margins), "feasible": True}]
            curve += [{"coef": t["coefficient"], "margins": t["margins"], "feasible": t["feasible"]}
                      for t in lr.trials if t["margins"] and t["coefficient"] is not None]
            if len(curve) > 1:
                out[f"{FIGURES}/propensity_layer_{lyr:03d}.png"] = propensity_curve_figure(
                    curve, f"{res.trait} layer {lyr}: propensity per pair")
        caps = [t for t in lr.trials if t.get("capability") and t["value"] is not None]
        if caps and getattr(base, "capability", None) is not None:
            trials = [{"delta": t["value"], "coherence": t["coherence"], "capability": t["capability"]["accuracy"],
                       "capability_low": t["capability"]["low"], "capability_high": t["capability"]["high"]}
                      for t in caps]
            chosen = next((i for i, t in enumerate(caps) if lr.best and t["number"] == lr.best["number"]), None)
            p_cap = getattr(prompted_s, "capability", None)
            out[f"{FIGURES}/frontier_layer_{lyr:03d}.png"] = frontier_figure(
                trials, f"{res.trait} layer {lyr}: {obj} delta / coherence / capability", threshold=res.threshold,
                chosen=chosen, unsteered={"delta": 0.0, "capability": base.capability.accuracy},
                prompted={"delta": p_mean, "capability": p_cap.accuracy if p_cap is not None else None})
    every = [dict(value=t["value"], coherence=t["coherence"], layer=lyr, number=t["number"])
             for lyr, lr in sorted(res.per_layer.items()) for t in lr.trials if t["value"] is not None]
    if every:
        best = res.best_layer
        chosen = next((i for i, t in enumerate(every) if best is not None and t["layer"] == best
                       and t["number"] == res.per_layer[best].best["number"]), None)
        out[f"{FIGURES}/objective_vs_coherence.png"] = trait_coherence_figure(
            every, res.threshold, f"{res.trait}: every trial", value_label=label, unsteered_coherence=base_coh,
            prompted={"delta": p_mean, "coherence": prompted_s.mean_coherence if prompted_s else None},
            chosen=chosen)
    layers = sorted(lyr for lyr, lr in res.per_layer.items() if lr.best and obj in lr.best["deltas"])
    if layers:
        ds = {lyr: res.per_layer[lyr].best["deltas"][obj] for lyr in layers}
        n = max(d["n"] for d in ds.values())
        curves = {f"steered, best coherent (n={n})": {lyr: d["delta"] for lyr, d in ds.items()}}
        bands = {f"steered, best coherent (n={n})": {lyr: (d["low"], d["high"]) for lyr, d in ds.items()
                                                     if _finite(d["low"]) and _finite(d["high"])}}
        if p_mean is not None:
            name = f"prompted (n={p.interval.n})"
            curves[name] = dict.fromkeys(layers, p_mean)
            if _finite(p.interval.low) and _finite(p.interval.high):
                bands[name] = dict.fromkeys(layers, (p.interval.low, p.interval.high))
        out[f"{FIGURES}/best_delta_by_layer.png"] = layer_curve_figure(
            curves, label, bands, zero_line=True, title=f"{res.trait}: best coherent {obj} delta per layer",
            mark_layer=res.best_layer, mark_label="chosen layer")
    spread = item_spread(res)
    if spread:
        groups = {k: v for k, (v, _) in spread.items()}
        intervals = {k: iv for k, (_, iv) in spread.items() if iv is not None}
        out[f"{FIGURES}/item_deltas_chosen.png"] = item_delta_figure(
            groups, f"{res.trait}: per-item deltas at the chosen coefficient (layer {res.best_layer})",
            intervals=intervals)
    return out


def item_spread(res: Any) -> dict[str, tuple[list[float], tuple[float, float] | None]]:
    """Per measure, the chosen trial's per-item deltas against the unsteered model (and the measure's 95%
    interval), plus the prompted baseline's per-item deltas of the objective beside them."""
    best = res.best_layer
    base = res.baselines.get("unsteered")
    if best is None or base is None:
        return {}
    trial = res.per_layer[best].best
    out: dict[str, tuple[list[float], tuple[float, float] | None]] = {}
    for m in res.measures:
        diffs = paired_items(trial_items(res, trial, m), base.items(m, res.scorer_name), res.direction)
        d = trial["deltas"].get(m, {})
        unit = "pair" if m == PROPENSITY else "question"
        if diffs:
            iv = (d["low"], d["high"]) if _finite(d.get("low")) and _finite(d.get("high")) else None
            out[f"{m} per {unit}, steered (n={len(diffs)})"] = (diffs, iv)
    prompted = res.baselines.get("prompted")
    if prompted is not None:
        m = res.objective
        diffs = paired_items(prompted.items(m, res.scorer_name), base.items(m, res.scorer_name), res.direction)
        p = res.prompted.get(m)
        if diffs:
            iv = (p.interval.low, p.interval.high) if p is not None and _finite(p.interval.low) else None
            out[f"{m}, prompted (n={len(diffs)})"] = (diffs, iv)
    return out


def log_report(run: Any, res: Any, title: str, meta: Sequence[str] = ()) -> None:
    """The response browser and every figure of a steer run, as artifacts of `run` (a JobRun)."""
    from traitlab.viz.steering_report import render_steering_report

    for path, fig in figures(res).items():
        run.log_figure(fig, path)
    if res.rows:
        run.log_text(render_steering_report(report_data(res, title, meta)), REPORT_FILE)


# ---------------------------------------------------------------------------------------------- entanglement

ENTANGLEMENT_TABLE = "tables/entanglement.json"
ENTANGLEMENT_TAG = "traitlab.entanglement"


def entanglement_matrix(rows: Sequence[dict[str, Any]]) -> Any:
    """EntanglementMatrix from rows {steered, measured, delta, low, high, n}: steered traits first, in order."""
    from traitlab.core.side_effects import EntanglementMatrix

    order = list(dict.fromkeys([r["steered"] for r in rows] + [r["measured"] for r in rows]))
    shifts = {(r["steered"], r["measured"]): Interval(r["delta"], r["low"], r["high"], int(r["n"])) for r in rows}
    return EntanglementMatrix.from_shifts(shifts, traits=order, measure="propensity shift")


def stored_entanglement(client: Any, experiment_id: str, model: str, skip_trait: str) -> list[dict[str, Any]]:
    """The rows of the newest finished steer run of every other steered trait on `model` that measured them."""
    import json
    import tempfile
    from pathlib import Path

    filt = (f"tags.`traitlab.stage` = 'steer' and tags.`{ENTANGLEMENT_TAG}` = 'true' and "
            f"tags.model = '{model}' and attributes.status = 'FINISHED'")
    runs = client.search_runs([experiment_id], filter_string=filt, order_by=["attributes.start_time DESC"],
                              max_results=500)
    seen, out = {skip_trait}, []
    for r in runs:
        trait = r.data.tags.get("trait")
        if trait in seen:
            continue
        seen.add(trait)
        with tempfile.TemporaryDirectory() as tmp:
            doc = json.loads(Path(client.download_artifacts(r.info.run_id, ENTANGLEMENT_TABLE, tmp)).read_text())
        out += [dict(zip(doc["columns"], row, strict=True)) for row in doc["data"]]
    return out


def log_entanglement(run: Any, res: Any) -> None:
    """This run's row (table, `entanglement/<measured>_delta{,_lo,_hi}` and n metrics) and the model's trait x
    trait matrix (this run's row plus the newest stored row of every other trait), as figure and table."""
    from traitlab.viz.figures import entanglement_figure

    rows = res.entanglement
    if not rows:
        return
    run.log_table({k: [r[k] for r in rows] for k in rows[0]}, ENTANGLEMENT_TABLE)
    m: dict[str, float] = {}
    for r in rows:
        name = f"entanglement/{r['measured']}"
        for suffix, key in (("_delta", "delta"), ("_delta_lo", "low"), ("_delta_hi", "high")):
            if _finite(r[key]):
                m[name + suffix] = float(f"{r[key]:.4g}")
        m[f"entanglement/n_{r['measured']}"] = r["n"]
    run.log_metrics(m)
    run.set_tag(ENTANGLEMENT_TAG, "true")
    info = run.client.get_run(run.run_id)
    others = stored_entanglement(run.client, info.info.experiment_id, info.data.tags.get("model", ""), res.trait)
    matrix = entanglement_matrix(list(rows) + others)
    run.log_figure(entanglement_figure(matrix, f"propensity shift at each trait's chosen coefficient "
                                               f"({len(matrix.traits)} traits)"), f"{FIGURES}/entanglement_matrix.png")
    table = matrix.rows()
    run.log_table({k: [r[k] for r in table] for k in table[0]}, "tables/entanglement_matrix.json")
