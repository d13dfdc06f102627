"""mode=ensemble: one weight per member vector (each layer of `layers`, x each method of
`steering.ensemble.methods`), the members added together while generating, the weights searched by Optuna's
CMA-ES sampler against the steering objective (propensity by default), coherence >= threshold as the constraint.

Weights are in units of base = ||h_layer|| / ||v|| (as the coefficient search's bounds), so a weight of 1 pushes
as hard as the layer's typical activation norm whatever the vector's own norm; the added delta of member i is
direction * w_i * base_i * v_i. CMA-ES has no constraint handling, so an incoherent trial is told
min(delta, 0) - (threshold - coherence): worse than every coherent trial that does not lower the trait, and
worse the further it falls below the threshold. The best ensemble is the coherent trial with the highest delta.
The first trial (every weight = start) is measured alone, as a reference and CMA-ES's first observation; then
each round asks `popsize` weight vectors (one CMA-ES generation) and measures them in ONE batched generate and
shared propensity batches; the study lives in the trait's study storage, so an interrupted job resumes.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import CmaEsSampler
from optuna.trial import TrialState
from torch import Tensor

from traitlab.config.steer import SteerConfig
from traitlab.core.ensemble import combine, layer_shares
from traitlab.io import content_hash
from traitlab.steering import coef_search as cs
from traitlab.steering.measures import PROPENSITY, Measurer, deltas
from traitlab.steering.prepare import Prepared
from traitlab.steering.results import SteerResult
from traitlab.steering_vector import SteeringVector
from traitlab.tracking.names import layer_metric

log = logging.getLogger(__name__)

WEIGHTS_FILE, VECTOR_FILE = "ensemble/weights.json", "ensemble/vector.safetensors"


@dataclass(frozen=True)
class Member:
    method: str
    layer: int
    vector: Tensor
    base: float      # ||h_layer|| / ||v||: weight 1 adds a delta of the layer's activation norm
    run_id: str      # the extraction run the vector came from

    @property
    def name(self) -> str:
        return f"w.{self.method}.L{self.layer:03d}"


@dataclass
class EnsembleResult:
    members: list[Member]
    study_name: str
    weights: list[float] | None = None          # the best coherent trial's weights (None: no coherent trial)
    best: dict[str, Any] | None = None          # its objective Delta.as_dict(), coherence, trial number
    trials: list[dict[str, Any]] = field(default_factory=list)

    def directions(self, direction: int) -> dict[int, Tensor]:
        """The best ensemble as one additive delta per layer (what steering adds at coefficient 1)."""
        if self.weights is None:
            raise ValueError("no coherent ensemble was found")
        return combine([(m.layer, direction * m.base * m.vector) for m in self.members], self.weights)


def setting(members: Sequence[Member], weights: Sequence[float], direction: int) -> list[tuple[int, Tensor, float]]:
    """The (layer, vector, coefficient) terms one generate row adds for these weights."""
    return [(m.layer, m.vector, direction * w * m.base) for m, w in zip(members, weights, strict=True) if w > 0]


def told_value(delta: float, coherence: float | None, threshold: float) -> float:
    """What CMA-ES is told (see the module note): the delta when coherent, else a penalty below it."""
    if coherence is not None and coherence >= threshold:
        return delta
    return min(delta, 0.0) - (threshold - (coherence if coherence is not None else 0.0))


def run_ensemble(cfg: SteerConfig, prep: Prepared, m: Measurer, members: list[Member], res: SteerResult,
                 storage_path: Path) -> EnsembleResult:
    e, s = cfg.steering.ensemble, cfg.steering
    names = [x.name for x in members]
    start = e.start if e.start is not None else min(e.high, s.start_mult / len(members))
    key = content_hash("steer-ensemble-v1", [(x.name, x.run_id) for x in members], e.high, start, e.popsize,
                       cfg.seed, prep.threshold, prep.objective, prep.questions,
                       [(p.prompt, p.response, n.response) for p, n, _ in prep.pair_examples], s.max_new_tokens)
    name = f"ensemble.{prep.trait.qualified_name.replace('/', '.')}.{key[:12]}"
    storage = cs.open_storage(storage_path, heartbeat_interval=s.study.heartbeat_interval,
                              grace_period=s.study.grace_period, max_retry=s.study.max_retry)
    # CMA-ES starts at the middle of [0, high] with Optuna's step size (x0 / sigma0 are deprecated in Optuna 5);
    # the enqueued first trial (all weights = start) is measured alone, so every later trial is CMA-ES's.
    sampler = CmaEsSampler(seed=cfg.seed, popsize=e.popsize, n_startup_trials=1, warn_independent_sampling=False)
    study = cs.open_study(storage, name, sampler, {"members": names, "start": start}, enqueue=dict.fromkeys(names, start))
    cs.recover_stale([study], s.study.grace_period, s.study.heartbeat_interval)
    base = res.baselines["unsteered"]
    while (left := e.trials - len(cs.finished_trials(study))) > 0:
        asked = []
        started = any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
        for _ in range(min(e.popsize, left) if started else 1):
            with warnings.catch_warnings():  # "heartbeat is meant for optimize": keep_alive does it here
                warnings.simplefilter("ignore", UserWarning)
                trial = study.ask()
            storage.record_heartbeat(trial._trial_id)
            asked.append((trial, [trial.suggest_float(n, 0.0, e.high) for n in names]))
        try:
            with cs.keep_alive([(storage, t._trial_id) for t, _ in asked], s.study.heartbeat_interval):
                samples = m.steered([setting(members, w, prep.direction) for _, w in asked])
        except BaseException:
            for t, _ in asked:
                cs.fail_and_retry(study, t)
            raise
        for (trial, w), smp in zip(asked, samples, strict=True):
            ds = deltas(smp, base, res.measures, res.scorer_name, prep.direction, seed=cfg.seed, n_boot=s.bootstrap)
            iv = ds[prep.objective].interval
            coherence = smp.mean_coherence
            feasible = coherence is not None and coherence >= prep.threshold
            for k, v in {"weights": w, "coherence": coherence, "feasible": feasible, "margins": smp.margins,
                         "responses": smp.responses, "deltas": {n: d.as_dict() for n, d in ds.items()}}.items():
                trial.set_user_attr(k, v)
            log.info("ensemble trial %d  weights %s  %s delta %s  coherence %s", trial.number,
                     " ".join(f"{x:.2f}" for x in w), prep.objective, iv,
                     "n/a" if coherence is None else f"{coherence:.1f}")
            if iv.n and math.isfinite(iv.mean):
                study.tell(trial, told_value(iv.mean, coherence, prep.threshold))
            else:
                study.tell(trial, state=TrialState.FAIL)
    return collect(study, members, prep.objective)


def collect(study: optuna.Study, members: list[Member], objective: str) -> EnsembleResult:
    out = EnsembleResult(members, study.study_name)
    names = [x.name for x in members]
    for t in cs.finished_trials(study):
        u = t.user_attrs
        d = (u.get("deltas") or {}).get(objective, {})
        out.trials.append({"number": t.number, "weights": [t.params.get(n) for n in names], "state": t.state.name,
                           "coherence": u.get("coherence"), "feasible": bool(u.get("feasible")), "told": t.value,
                           "objective": d, "deltas": u.get("deltas", {}), "margins": u.get("margins", [])})
    ok = [r for r in out.trials if r["feasible"] and r["state"] == "COMPLETE"]
    if ok:
        best = max(ok, key=lambda r: r["objective"]["delta"])
        out.weights, out.best = best["weights"], best
    return out


def log_ensemble(run: Any, res: EnsembleResult, cfg: SteerConfig, prep: Prepared, model: dict[str, str]) -> None:
    """Metrics (best/ summaries, layer/ weights, trial/ series), the weights JSON and the ensemble vector."""
    for r in res.trials:
        d = r["objective"]
        run.log_metrics({k: v for k, v in {"trial/objective_delta": d.get("delta"), "trial/coherence": r["coherence"]}
                         .items() if v is not None and math.isfinite(v)}, step=r["number"])
    summary = {"n_trials": len(res.trials), "n_feasible": sum(r["feasible"] for r in res.trials),
               "n_members": len(res.members)}
    methods = sorted({x.method for x in res.members})
    if res.best is not None:
        d = res.best["objective"]
        summary.update({"best/objective_delta": d["delta"], "best/objective_delta_lo": d["low"],
                        "best/objective_delta_hi": d["high"],
                        f"best/n_{'pairs' if prep.objective == PROPENSITY else 'questions'}": d["n"],
                        "best/coherence": res.best["coherence"], "best/trial": res.best["number"]})
        for x, w in zip(res.members, res.weights or [], strict=True):
            suffix = "" if len(methods) == 1 else f"_{x.method}"
            run.log_metrics({layer_metric(f"ensemble_weight{suffix}"): round(w, 4)}, step=x.layer)
        vec = res.directions(prep.direction)
        for layer, share in layer_shares(vec).items():
            run.log_metrics({layer_metric("ensemble_share"): round(share, 4)}, step=layer)
        sv = SteeringVector(vec, trait=prep.trait.qualified_name, model=model.get("model"),
                            model_name=model.get("model_name"), method="ensemble:" + "+".join(methods),
                            component=cfg.component.name, position=cfg.position.spec, source_run=run.run_id,
                            best_coefficients=dict.fromkeys(vec, 1.0))
        with tempfile.TemporaryDirectory() as tmp:  # the .safetensors and its provenance .json beside it
            path = sv.save(Path(tmp) / Path(VECTOR_FILE).name)
            run.log_artifact(path, str(Path(VECTOR_FILE).parent))
            run.log_artifact(path.with_suffix(".json"), str(Path(VECTOR_FILE).parent))
    run.log_metrics({k: v for k, v in summary.items() if v is not None})
    run.log_dict({"objective": prep.objective, "threshold": prep.threshold, "direction": prep.direction,
                  "study": res.study_name, "unit": "weight x base, base = ||h_layer|| / ||v||",
                  "members": [{"method": x.method, "layer": x.layer, "extraction_run": x.run_id, "base": x.base,
                               "weight": None if res.weights is None else res.weights[i],
                               "coefficient": None if res.weights is None else
                               prep.direction * res.weights[i] * x.base}
                              for i, x in enumerate(res.members)],
                  "best": None if res.best is None else {k: res.best[k] for k in ("number", "coherence", "objective")},
                  "trials": [{k: r[k] for k in ("number", "weights", "coherence", "feasible", "objective")}
                             for r in res.trials]}, WEIGHTS_FILE)
    run.set_tag("traitlab.ensemble_members", ",".join(x.name for x in res.members))
