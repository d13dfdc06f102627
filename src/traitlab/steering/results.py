"""Results of the steering stage: per-layer summaries of the search, the table a researcher reads, and what goes
to MLflow (metric names per DESIGN "Dashboard conventions": `layer/<m>` with step = layer, `best/<m>`).

The registry (tracking/registry.py `steering_results`) reads `layer/objective_delta{,_lo,_hi}`, the tags
`traitlab.vector_runs` (which extraction run each layer's vector came from) and `traitlab.comparison` (runs
with the same comparison key measured the same objective, judge and threshold and may be ranked together).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from traitlab.core.stats import Steerability, steerability
from traitlab.steering.measures import PROPENSITY, Delta, Sample, capability_summary
from traitlab.tracking.artifacts import TABLES
from traitlab.tracking.names import best_metric as B
from traitlab.tracking.names import layer_metric as L
from traitlab.tracking.runs import JobRun

log = logging.getLogger(__name__)

RESPONSES_TABLE = f"{TABLES}/responses.json"
SUMMARY_TABLE = f"{TABLES}/steering_summary.json"
TRIALS_TABLE = f"{TABLES}/optuna_trials.json"
STUDIES_FILE = "optuna/studies.json"
TABLE_FILE = "steering_table.md"

DESCRIBE = {PROPENSITY: "log-prob margin per token, positive minus negative response of held-out pairs",
            "trait": "LLM judge's trait score (0-100) of the answers",
            "sentiment": "VADER compound sentiment (-1..1) of the answers",
            "refusal": "fraction of answers with a refusal phrase",
            "scorer": "steering.scorer's score of the answers"}


@dataclass
class LayerResult:
    layer: int
    study: str
    activation_norm: float
    base_coefficient: float
    start_coefficient: float
    trials: list[dict[str, Any]] = field(default_factory=list)  # see trial_row
    best: dict[str, Any] | None = None                          # the best coherent trial's row, if any
    steerability: Steerability | None = None                    # propensity slope over the coherent range


def trial_row(number: int, coefficient: float | None, coherence: float | None, value: float | None,
              feasible: bool, state: str, deltas: dict[str, dict] | None = None,
              margins: Sequence[float] | None = None) -> dict[str, Any]:
    """One trial as the results carry it: `deltas` maps measure -> Delta.as_dict()."""
    return {"number": number, "coefficient": coefficient, "coherence": coherence, "value": value,
            "feasible": feasible, "state": state, "deltas": deltas or {}, "margins": list(margins or [])}


def layer_steerability(res: LayerResult, base_margins: Sequence[float], *, seed: int,
                       n_boot: int) -> Steerability | None:
    """Slopes of propensity against coefficient / base over the unsteered point and every coherent trial
    (the coherent range); None without propensity."""
    if not base_margins:
        return None
    xs, ys = [0.0], [list(base_margins)]
    for t in res.trials:
        if t["feasible"] and t["margins"] and t["coefficient"] is not None:
            xs.append(t["coefficient"] / res.base_coefficient if res.base_coefficient > 0 else t["coefficient"])
            ys.append(list(t["margins"]))
    return steerability(xs, ys, seed=seed, n_boot=n_boot)


@dataclass
class SteerResult:
    run_id: str
    skipped: bool
    trait: str
    mode: str
    layers: list[int] = field(default_factory=list)
    objective: str = PROPENSITY                              # the measure the search maximised
    measures: list[str] = field(default_factory=list)        # the objective first, then the ones logged beside
    baselines: dict[str, Sample] = field(default_factory=dict)   # unsteered / prompted
    prompted: dict[str, Delta] = field(default_factory=dict)     # prompted minus unsteered, per measure
    per_layer: dict[int, LayerResult] = field(default_factory=dict)
    ablation: dict[int, dict[str, float | None]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)    # every measured response
    threshold: float = 77.0
    direction: int = 1
    scorer_name: str | None = None
    n_pairs: dict[str, int] = field(default_factory=dict)        # held-out pairs by source (val, ood)
    stopped: str | None = None                                   # why the search did not run trials
    note: str | None = None                                      # the verdict of a mode without per-layer results
    warnings: list[str] = field(default_factory=list)
    entanglement: list[dict[str, Any]] = field(default_factory=list)  # entangle.measure_entanglement rows

    @property
    def best_layer(self) -> int | None:
        scored = {lyr: r.best["value"] for lyr, r in self.per_layer.items() if r.best and r.best["value"] is not None}
        return max(scored, key=scored.get) if scored else None

    def baseline_mean(self, condition: str, measure: str) -> float:
        s = self.baselines.get(condition)
        if s is None:
            return float("nan")
        vals = [v for v in s.items(measure, self.scorer_name) if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else float("nan")

    def summary_table(self) -> str:
        """Markdown: the baselines, then per layer the best coherent coefficient with every delta's interval."""
        lines = [self._header(), ""]
        others = self.measures[1:]
        cols = (["layer", "coef (x base)", "coherence", f"{self.objective} delta [95% CI]", "prompted delta"]
                + [f"{m} delta [95% CI]" for m in others]
                + ["steerability [95% CI]", "anti-steerable", "coherent / trials"])
        with_cap = any((r.best or {}).get("capability") for r in self.per_layer.values())
        if with_cap:
            cols.append("capability change [95% CI]")
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        prompted = self.prompted.get(self.objective)
        for lyr in sorted(self.per_layer):
            r = self.per_layer[lyr]
            b = r.best or {}
            d = b.get("deltas", {})
            coef = b.get("coefficient")
            rel = coef / r.base_coefficient if coef is not None and r.base_coefficient > 0 else None
            st = r.steerability
            shown = "-" if coef is None else f"{coef:.1f}" + ("" if rel is None else f" ({rel:.2f})")
            cells = [str(lyr), shown, _fmt(b.get("coherence")),
                     _ci(d.get(self.objective)), _ci(prompted.as_dict() if prompted else None)]
            cells += [_ci(d.get(m)) for m in others]
            cells += ["-" if st is None else f"{_num(st.steerability)} [{_num(st.interval.low)}, "
                                              f"{_num(st.interval.high)}]",
                      "-" if st is None else _fmt(st.anti_steerable, ".2f"),
                      f"{sum(t['feasible'] for t in r.trials)} / {len(r.trials)}"]
            if with_cap:
                c = b.get("capability")
                cells.append("-" if not c else f"{100 * c['accuracy']:.1f}% ({100 * c['delta']:+.1f} points "
                                               f"[{100 * c['delta_low']:+.1f}, {100 * c['delta_high']:+.1f}], "
                                               f"n={c['n']})")
            lines.append("| " + " | ".join(cells) + " |")
        for lyr in sorted(self.ablation):
            a = self.ablation[lyr]
            lines.append(f"\nablation at layer {lyr}: trait {_fmt(a.get('ablated_trait'))} "
                         f"(delta {_fmt(a.get('ablation_delta'))}), prompted {_fmt(a.get('ablated_prompted_trait'))} "
                         f"(delta {_fmt(a.get('ablation_prompted_delta'))})")
        if self.stopped:
            lines += ["", f"search stopped: {self.stopped}"]
        if self.warnings:
            lines += ["", "warnings:"] + [f"- {w}" for w in self.warnings]
        return "\n".join(lines)

    def _header(self) -> str:
        pairs = ", ".join(f"{n} {k}" for k, n in self.n_pairs.items())
        what = DESCRIBE.get(self.objective, self.objective)
        head = [f"objective: {self.objective} ({what}" + (f"; held-out pairs: {pairs})" if pairs else ")")
                + f"; constraint: coherence >= {self.threshold:g}; deltas are steered minus unsteered on the same "
                  "items, toward the trait, with paired bootstrap 95% intervals"]
        for cond in ("unsteered", "prompted"):
            s = self.baselines.get(cond)
            if s is None:
                continue
            parts = [f"{m} {_num(self.baseline_mean(cond, m))}" for m in self.measures]
            parts.append(f"coherence {_fmt(s.mean_coherence)}")
            head.append(f"{cond}: " + ", ".join(parts))
        if self.prompted:
            head.append("prompted minus unsteered: " + ", ".join(
                f"{m} {_ci(d.as_dict())}" for m, d in self.prompted.items()))
        return "\n".join(head)

    def verdict(self) -> str:
        """One paragraph for the run's description: what was found, on how much data."""
        best = self.best_layer
        if self.stopped:
            return f"Search stopped after the baselines: {self.stopped}"
        if self.note:
            return self.note
        if best is None:
            return (f"No coherent coefficient at layers {', '.join(map(str, sorted(self.per_layer)))} "
                    f"(coherence >= {self.threshold:g}).")
        b = self.per_layer[best].best
        d = b["deltas"].get(self.objective, {})
        trust = "its 95% interval excludes zero" if _excludes_zero(d) else \
            "its 95% interval includes zero: no evidence of an effect"
        return (f"Best layer {best}: coefficient {b['coefficient']:.3g}, coherence {_fmt(b['coherence'])}, "
                f"{self.objective} delta {_ci(d)}; {trust}.")


def _excludes_zero(d: dict | None) -> bool:
    if not d:
        return False
    lo, hi = d.get("low", float("nan")), d.get("high", float("nan"))
    return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)


def _num(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.1f}"


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _ci(d: dict | None) -> str:
    if not d or d.get("n", 0) == 0:
        return "-"
    return f"{d['delta']:+.3g} [{_num(d['low'])}, {_num(d['high'])}] (n={d['n']})"


# ------------------------------------------------------------------------------------------------ MLflow


def _r(x: float) -> float:
    """Rounded for the dashboard: 4 significant digits."""
    return float(f"{x:.4g}")


def delta_metrics(prefix: str, d: dict[str, Any]) -> dict[str, float]:
    out = {f"{prefix}_delta": d["delta"], f"{prefix}_delta_lo": d["low"], f"{prefix}_delta_hi": d["high"]}
    return {k: _r(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def capability_metrics(prefix: str, cap: dict[str, Any]) -> dict[str, float]:
    """<prefix>_accuracy with _lo/_hi (Wilson), <prefix>_delta with _lo/_hi (paired, against unsteered) and
    n_<name>, from a capability summary (measures.capability_summary)."""
    head, _, name = prefix.rpartition("/")
    out = {f"{prefix}_accuracy": cap["accuracy"], f"{prefix}_accuracy_lo": cap["low"],
           f"{prefix}_accuracy_hi": cap["high"]}
    if "delta" in cap:
        out.update({f"{prefix}_delta": cap["delta"], f"{prefix}_delta_lo": cap["delta_low"],
                    f"{prefix}_delta_hi": cap["delta_high"]})
    out = {k: _r(v) for k, v in out.items() if v is not None and math.isfinite(v)}
    out[f"{head}/n_{name}" if head else f"n_{name}"] = cap["n"]
    return out


def log_baselines(run: JobRun, res: SteerResult) -> None:
    m: dict[str, float] = {}
    for cond in ("unsteered", "prompted"):
        s = res.baselines.get(cond)
        if s is None:
            continue
        if s.capability is not None:
            ref = res.baselines["unsteered"].capability if cond == "prompted" else None
            m.update(capability_metrics(f"{cond}/capability", capability_summary(s.capability, ref)))
        for name in res.measures:
            v = res.baseline_mean(cond, name)
            if math.isfinite(v):
                m[f"{cond}/{name}"] = _r(v)
        if s.mean_coherence is not None:
            m[f"{cond}/coherence"] = _r(s.mean_coherence)
    for name, d in res.prompted.items():
        m.update(delta_metrics(f"prompted/{name}", d.as_dict()))
        m[f"prompted/n_{name}"] = d.interval.n
    for source, n in res.n_pairs.items():
        m[f"n_pairs_{source}"] = n
    if m:
        run.log_metrics(m)


def log_layers(run: JobRun, res: SteerResult) -> None:
    """Per-layer series (step = layer), best/ summaries and the summary table (figures: log_summary)."""
    for lyr, r in sorted(res.per_layer.items()):
        m: dict[str, float] = {L("n_trials"): len(r.trials), L("n_coherent"): sum(t["feasible"] for t in r.trials)}
        for k in ("activation_norm", "base_coefficient", "start_coefficient"):
            if math.isfinite(getattr(r, k)):
                m[L(k)] = _r(getattr(r, k))
        if r.best is not None:
            b = r.best
            m[L("coefficient")] = _r(b["coefficient"])
            if r.base_coefficient > 0:
                m[L("coefficient_rel")] = _r(b["coefficient"] / r.base_coefficient)
            if b["coherence"] is not None:
                m[L("coherence")] = _r(b["coherence"])
            for name, d in b["deltas"].items():
                m.update(delta_metrics(L(name), d))
                m[L(f"n_{name}")] = d["n"]
                m[L(f"lost_{name}")] = d["lost"]
            if res.objective in b["deltas"]:
                m.update(delta_metrics(L("objective"), b["deltas"][res.objective]))
        st = r.steerability
        if st is not None:
            for k, v in (("steerability", st.steerability), ("steerability_lo", st.interval.low),
                         ("steerability_hi", st.interval.high), ("anti_steerable", st.anti_steerable),
                         ("slope_spread", st.spread)):
                if math.isfinite(v):
                    m[L(k)] = _r(v)
            m[L("n_pairs")], m[L("n_points")] = st.n_pairs, st.n_points
        if b_cap := (r.best or {}).get("capability"):
            m.update(capability_metrics(L("capability"), b_cap))
        run.log_metrics(m, step=lyr)
    run.log_table(summary_columns(res), SUMMARY_TABLE)
    best = res.best_layer
    if best is not None:
        b = res.per_layer[best].best
        m = {B("layer"): best, B("coefficient"): _r(b["coefficient"])}
        if b["coherence"] is not None:
            m[B("coherence")] = _r(b["coherence"])
        for name, d in b["deltas"].items():
            m.update(delta_metrics(B(name), d))
        if res.objective in b["deltas"]:
            m.update(delta_metrics(B("objective"), b["deltas"][res.objective]))
        st = res.per_layer[best].steerability
        if st is not None and math.isfinite(st.steerability):
            m[B("steerability")] = _r(st.steerability)
        if b.get("capability"):
            m.update(capability_metrics(B("capability"), b["capability"]))
        run.log_metrics(m)
        run.set_tag("best_layer", best)
        run.set_tag("best_coefficient", f"{b['coefficient']:.6g}")


def summary_columns(res: SteerResult) -> dict[str, list]:
    layers = sorted(res.per_layer)
    out: dict[str, list] = {"layer": layers,
                            "base_coefficient": [res.per_layer[lyr].base_coefficient for lyr in layers],
                            "n_trials": [len(res.per_layer[lyr].trials) for lyr in layers],
                            "n_coherent": [sum(t["feasible"] for t in res.per_layer[lyr].trials) for lyr in layers]}
    bests = [res.per_layer[lyr].best or {} for lyr in layers]
    out["best_coefficient"] = [b.get("coefficient") for b in bests]
    out["best_coherence"] = [b.get("coherence") for b in bests]
    for name in res.measures:
        for k in ("delta", "low", "high", "n", "lost"):
            out[f"{name}_{k}"] = [b.get("deltas", {}).get(name, {}).get(k) for b in bests]
        out[f"unsteered_{name}"] = [res.baseline_mean("unsteered", name)] * len(layers)
        out[f"prompted_{name}"] = [res.baseline_mean("prompted", name)] * len(layers)
    sts = [res.per_layer[lyr].steerability for lyr in layers]
    out["steerability"] = [s.steerability if s else None for s in sts]
    out["anti_steerable"] = [s.anti_steerable if s else None for s in sts]
    return {k: [None if isinstance(v, float) and not math.isfinite(v) else v for v in vs] for k, vs in out.items()}


def log_rows(run: JobRun, rows: Sequence[dict]) -> None:
    if rows:
        cols = list(dict.fromkeys(c for r in rows for c in r))
        run.log_table({c: [r.get(c) for r in rows] for c in cols}, RESPONSES_TABLE)


def log_summary(run: JobRun, res: SteerResult) -> None:
    """The table, the response browser and the figures as artifacts, and the verdict as the run's description
    (best layer, delta with its interval, against the prompted baseline, capability, sample sizes)."""
    from traitlab.tracking.notes import set_run_note
    from traitlab.tracking.steer_report import log_entanglement, log_report, verdict_note

    run.log_text(res.summary_table() + "\n", TABLE_FILE)
    log_report(run, res, f"Steering {res.trait} ({res.mode})", res._header().split("\n"))
    log_entanglement(run, res)
    note = verdict_note(res)
    if res.warnings:
        note += "\n\n" + "\n".join(f"- {w}" for w in res.warnings)
    set_run_note(run.client, run.run_id, note)


# ------------------------------------------------------------------------------------------ verdicts


def cannot_succeed(res: SteerResult, backend: str) -> str | None:
    """Why a search cannot find anything, judged from the baselines (None: it can): the unsteered answers
    already fail the coherence threshold, or the objective scored none of them."""
    base = res.baselines["unsteered"]
    coh, t = base.mean_coherence, res.threshold
    if coh is None or coh < t:
        have = "no coherence score" if coh is None else f"coherence {coh:.1f}"
        fix = "lower steering.threshold" if backend == "perplexity" else (
            "use judge=perplexity (judge-free coherence) or judge=hf_local_perplexity / "
            "judge.perplexity_combine=perplexity (keeps the judge's trait score, takes coherence from perplexity), "
            "or lower steering.threshold")
        return (f"the unsteered answers already have {have} < steering.threshold={t:g} (judge={backend}), so no "
                f"steered answer can pass the constraint; {fix}")
    if not any(math.isfinite(v) for v in base.items(res.objective, res.scorer_name)):
        return (f"the objective ({res.objective}) scored none of the unsteered answers, so there is no baseline to "
                "measure a delta against; check the judge (judge.min_weight, judge.model) or pick another "
                "steering.objective")
    return None


def add_warnings(res: SteerResult) -> None:
    """Plain warnings where a number is noise: intervals that include zero, a measure that cannot tell the
    prompted baseline from the unsteered one, trials that lost questions."""
    for name, d in res.prompted.items():
        if d.interval.n and not d.interval.excludes_zero:
            res.warnings.append(f"{name} cannot separate the prompted baseline from the unsteered one (prompted "
                                f"minus unsteered {_ci(d.as_dict())}): asking for the trait does not move it, so "
                                "either the model ignores the request or this measure is blind to the trait; "
                                "trust its steering deltas only where their own interval excludes zero")
    for lyr, r in sorted(res.per_layer.items()):
        if r.best is None:
            if r.trials:
                res.warnings.append(f"layer {lyr}: none of {len(r.trials)} trials was coherent "
                                    f"(coherence >= {res.threshold:g})")
            continue
        d = r.best["deltas"].get(res.objective)
        if d and not _excludes_zero(d):
            res.warnings.append(f"layer {lyr}: the best {res.objective} delta {_ci(d)} includes zero: no evidence "
                                "that steering moves it")
        lost = [t for t in r.trials if t.get("lost_questions")]
        for t in lost:
            res.warnings.append(f"layer {lyr} trial {t['number']}: lost {t['lost_questions']} question(s) scored "
                                "unsteered; its deltas use only the questions scored in both")
    for w in res.warnings:
        log.warning(w)


def log_studies(run: JobRun, info: dict) -> None:
    """Every trial of every layer's Optuna study as a table (responses left out: they are in RESPONSES_TABLE),
    each study's best trial, and where the studies live."""
    from traitlab.steering.coef_search import best_trial

    frames, summary = [], {"storage": info["storage"], "layers": {}}
    for lyr, study in sorted(info["studies"].items()):
        df = study.trials_dataframe(attrs=("number", "value", "datetime_start", "datetime_complete", "duration",
                                           "params", "user_attrs", "system_attrs", "state"))
        df = df.drop(columns=[c for c in df.columns if c in ("user_attrs_responses", "user_attrs_margins")])
        df.insert(0, "layer", lyr)
        df.insert(0, "study", study.study_name)
        frames.append(df)
        best = best_trial(study)
        summary["layers"][str(lyr)] = {
            "study": study.study_name, "n_trials": len(study.get_trials(deepcopy=False)),
            "user_attrs": study.user_attrs,
            "best_trial": None if best is None else {
                "number": best.number, "value": best.value, "params": best.params, "constraints": best.constraints,
                "user_attrs": {k: v for k, v in best.user_attrs.items() if k not in ("responses", "margins")}}}
    if frames:
        import pandas as pd

        df = pd.concat(frames, ignore_index=True)
        for c in df.columns:
            if str(df[c].dtype).startswith(("datetime", "timedelta")) or df[c].dtype == object:
                df[c] = df[c].map(lambda x: None if x is None or (isinstance(x, float) and math.isnan(x))
                                  else (x if isinstance(x, int | float | str | bool) else str(x)))
        df = df.astype(object).where(df.notna(), None)
        run.log_table({c: df[c].tolist() for c in df.columns}, TRIALS_TABLE)
    run.log_dict(summary, STUDIES_FILE)
    run.set_tag("traitlab.study_storage", info["storage"])
