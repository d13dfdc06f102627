"""Stage 2: validate trait vectors by steering them, with a coherence-gated Optuna coefficient search.

Flow (mode=search): validate everything checkable without the model (trait, steering.json, objective and
scorer, judge reachable, layer syntax, search settings, vectors present in MLflow, held-out pairs) -> load the
model -> baselines, measured the same way as every steered condition: unsteered and *prompted* (a system prompt
asking for the trait, so a reader sees whether steering beats simply asking) -> stop here, with the reason, when
the unsteered answers already fail the coherence threshold -> per layer base = median ||h_layer|| / ||v|| ->
one Optuna study per (vector, layer) -> rounds of: ask candidates from every layer's study, generate ALL of
them as ONE batch and score their held-out pairs' propensity in shared forward batches (per-row steering),
judge and score OUTSIDE the hooks, tell the objective's delta -> per layer the best coherent coefficient, its
paired 95% intervals and the propensity slope (steerability) -> MLflow.

What is measured and how deltas are formed: pipelines/steer_measures.py. Tables, metrics, figures:
pipelines/steer_results.py. Modes `ablation` and `rescore`: pipelines/steer_modes.py; `baseline` runs the two
baselines only.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from traitlab import faults
from traitlab.config.steer import SteerConfig
from traitlab.config.trait_overrides import apply_lookup_settings
from traitlab.core.components import component_dim
from traitlab.data import TraitDataset
from traitlab.io import content_hash
from traitlab.models.chat import format_prompt
from traitlab.models.identity import identity_of, model_tags
from traitlab.models.loading import LoadedModel, load_model
from traitlab.models.steering import activation_norms
from traitlab.paths import outputs_dir
from traitlab.pipelines import coef_search as cs
from traitlab.pipelines import steer_modes as modes
from traitlab.pipelines import steer_results as out
from traitlab.pipelines.common import model_key
from traitlab.pipelines.steer_entangle import entanglement_examples, measure_entanglement
from traitlab.pipelines.steer_measures import (
    CAPABILITY,
    PROPENSITY,
    TRAIT,
    Measurer,
    capability_summary,
    deltas,
    heldout_pairs,
    scorer_measure,
)
from traitlab.pipelines.steer_prepare import Prepared, _gen, build_judge, resolve_layers, validate_inputs
from traitlab.pipelines.steer_results import LayerResult, SteerResult, layer_steerability, trial_row
from traitlab.tracking.artifacts import slug
from traitlab.tracking.names import layer_metric
from traitlab.tracking.registry import VectorRef, fetch_vector
from traitlab.tracking.runs import JobRun, job_run

log = logging.getLogger(__name__)

__all__ = ["run_steer", "validate_inputs"]


# --------------------------------------------------------------------------------------------- search


def study_storage_path(cfg: SteerConfig, trait: TraitDataset) -> Path:
    root = Path(cfg.steering.study.storage_dir) if cfg.steering.study.storage_dir else outputs_dir() / "studies"
    return root / slug(identity_of(cfg.model).key) / f"{trait.qualified_name}.db"


def search_settings(cfg: SteerConfig, prep: Prepared, lm_key: str) -> dict[str, Any]:
    """What decides a trial's value: a study with other settings would not be comparable (steps excluded,
    so asking for more steps continues the same study)."""
    s = cfg.steering
    out = {"sampler": s.sampler, "threshold": prep.threshold, "trials_per_step": s.trials_per_step,
           "start_mult": s.start_mult, "search_space": asdict(s.search_space), "questions": prep.questions,
           "generation": asdict(_gen(cfg)) | {"batch_size": None}, "seed": cfg.seed, "direction": prep.direction,
           "judge": prep.judge_id, "model": lm_key, "objective": prep.objective, "scorer": s.scorer,
           "propensity": asdict(s.propensity) | {"batch_size": None},
           "pairs": [(p.prompt, p.response, n.response) for p, n, _ in prep.pair_examples]}
    if s.sampler == "adaptive":
        out.update(up_mult=s.up_mult, down_mult=s.down_mult, momentum=s.momentum)
    elif s.sampler == "tpe":
        out["tpe_startup_trials"] = s.tpe_startup_trials
    else:
        out["steps"] = s.steps  # the grid itself depends on how many points
    if prep.choice_items:  # only then, so studies without capability keep their names
        out["capability"] = {"set": prep.choice_set, "n_items": len(prep.choice_items),
                             "scoring": s.capability.scoring, "max_drop": s.max_capability_drop}
    return out


def study_name(ref: VectorRef, settings_hash: str) -> str:
    return (f"{ref.method}.{ref.component}.{slug(ref.position)}.{ref.run_id[:12]}.L{ref.layer:03d}."
            f"{settings_hash[:10]}")


def _evaluator(m: Measurer, res: SteerResult, seed: int, n_boot: int, max_drop: float | None) -> cs.Evaluate:
    base = res.baselines["unsteered"]
    counter = {"round": 0}

    def evaluate(cands: list[cs.Candidate]) -> list[cs.Outcome]:
        counter["round"] += 1
        samples = m.steered([[(c.layer, c.vector, c.coefficient)] for c in cands])
        outcomes = []
        for c, smp in zip(cands, samples, strict=True):
            ds = deltas(smp, base, res.measures, res.scorer_name, res.direction, seed=seed, n_boot=n_boot)
            obj = ds[res.objective].interval
            rows = [{"question_index": qi, "response": smp.responses[qi], "coherence": smp.coherence[qi],
                     "trait": smp.trait[qi] if smp.trait else None,
                     "scorer": smp.scorer[qi] if smp.scorer else None} for qi in range(len(smp.responses))]
            lost = max((d.lost for name, d in ds.items() if name != PROPENSITY), default=0)
            attrs = {"responses": rows, "margins": smp.margins, "lost_questions": lost,
                     "deltas": {name: d.as_dict() for name, d in ds.items()}}
            cap = capability_summary(smp.capability, base.capability)
            constraints = {}
            if cap is not None:
                attrs["capability"] = cap
                if max_drop is not None:  # drop = unsteered - steered accuracy (point estimate)
                    constraints[CAPABILITY] = -cap["delta"] - max_drop
            outcomes.append(cs.Outcome(obj.mean if obj.n else None, smp.mean_coherence, attrs, constraints))
            log.info("round %d  layer %d  coef %.3g  %s delta %s  coherence %s%s%s", counter["round"], c.layer,
                     c.coefficient, res.objective, obj, out._fmt(smp.mean_coherence),
                     f"  capability {cap['accuracy']:.3f} (change {cap['delta']:+.3f})" if cap else "",
                     f"  (lost {lost} question(s))" if lost else "")
        return outcomes

    return evaluate


def _layer_result(s: cs.SearchStudy, res: SteerResult, seed: int, n_boot: int) -> LayerResult:
    attrs = s.study.user_attrs
    lr = LayerResult(s.layer, s.study.study_name, attrs.get("activation_norm", float("nan")),
                     attrs.get("base_coefficient", float("nan")), attrs.get(cs.START_ATTR, float("nan")))
    for t in cs.finished_trials(s.study):
        u = t.user_attrs
        row = trial_row(t.number, u.get("coefficient_signed"), u.get("coherence"), t.value, cs.is_feasible(t),
                        t.state.name, u.get("deltas"), u.get("margins"))
        row["lost_questions"] = u.get("lost_questions", 0)
        row["capability"] = u.get("capability")
        row["responses"] = u.get("responses", [])
        lr.trials.append(row)
    best = cs.best_trial(s.study)
    if best is not None:
        lr.best = next(r for r in lr.trials if r["number"] == best.number)
    lr.steerability = layer_steerability(lr, res.baselines["unsteered"].margins, seed=seed, n_boot=n_boot)
    return lr


def run_search_mode(lm: LoadedModel, cfg: SteerConfig, prep: Prepared, m: Measurer, vectors: dict[int, Any],
                    refs: dict[int, VectorRef], res: SteerResult) -> tuple[dict[int, LayerResult], list[dict], dict]:
    s = cfg.steering
    layers = sorted(vectors)
    texts = [format_prompt(lm.tokenizer, q, None, lm.use_chat_template) for q in prep.questions]
    norms = activation_norms(lm, texts, layers, cfg.component.name)
    settings = search_settings(cfg, prep, model_key(lm))
    settings_hash = content_hash("steer-study-v2", settings)
    path = study_storage_path(cfg, prep.trait)
    storage = cs.open_storage(path, heartbeat_interval=s.study.heartbeat_interval,
                              grace_period=s.study.grace_period, max_retry=s.study.max_retry)
    target = s.steps * s.trials_per_step
    studies = []
    for lyr in layers:
        v = vectors[lyr]
        base = norms[lyr] / float(v.norm())
        lo, hi = (s.search_space.low * base, s.search_space.high * base) if s.search_space.relative \
            else (s.search_space.low, s.search_space.high)
        start = min(hi, max(lo, s.start_mult * base))
        grid = None
        if s.sampler == "grid":
            grid = cs.geometric_grid(lo, hi, target)
            lo, hi = min(grid), max(grid)
        sampler = cs.make_sampler(s.sampler, seed=cfg.seed + lyr, grid=grid, up_mult=s.up_mult, down_mult=s.down_mult,
                                  momentum=s.momentum, tpe_startup_trials=s.tpe_startup_trials, budget=target)
        attrs = {cs.START_ATTR: start, "base_coefficient": base, "activation_norm": norms[lyr],
                 "vector_norm": float(v.norm()), "layer": lyr, "direction": prep.direction,
                 "vector_run_id": refs[lyr].run_id, "trait": prep.trait.qualified_name, "settings": settings_hash}
        name = study_name(refs[lyr], settings_hash)
        study = cs.open_study(storage, name, sampler, attrs, enqueue={cs.COEF: start} if s.sampler == "tpe" else None)
        studies.append(cs.SearchStudy(name, lyr, study, target=target, low=lo, high=hi, log=s.search_space.log,
                                      direction=prep.direction, vector=v))
    recovered = cs.recover_stale([x.study for x in studies], s.study.grace_period, s.study.heartbeat_interval)
    if recovered:
        log.info("re-queued %d trial(s) of an interrupted run", recovered)
    todo = sum(x.remaining() for x in studies)
    log.info("search: %d layer(s) x %d trial(s) (%d to run), %s sampler, objective %s, studies in %s", len(studies),
             target, todo, s.sampler, res.objective, path)
    cs.run_search(studies, _evaluator(m, res, cfg.seed, s.bootstrap, s.max_capability_drop), per_step=s.trials_per_step,
                  threshold=prep.threshold, heartbeat_interval=s.study.heartbeat_interval,
                  on_round=lambda _rounds, _asked: faults.maybe_fail("trial"))
    per_layer = {x.layer: _layer_result(x, res, cfg.seed, s.bootstrap) for x in studies}
    rows = []
    for x in studies:
        for t in cs.finished_trials(x.study):
            for r in t.user_attrs.get("responses", []):
                qi = int(r["question_index"])
                rows.append(modes.response_row("steered", qi, prep.questions[qi], None, r["response"], r["trait"],
                                               r["coherence"], r.get("scorer"), layer=x.layer,
                                               coefficient=t.user_attrs.get("coefficient_signed"), trial=t.number,
                                               study=x.study.study_name))
    return per_layer, rows, {"storage": str(path), "studies": {x.layer: x.study for x in studies}}




# -------------------------------------------------------------------------------------------- the job


def job_key(cfg: SteerConfig, prep: Prepared, lm_key: str, refs: dict[int, VectorRef], extra: Any = None) -> str:
    s = cfg.steering
    return content_hash("steer-v2", cfg.mode, lm_key, prep.trait.fingerprint(), prep.questions, prep.direction,
                        prep.prompted_system, prep.judge_id, {lyr: r.run_id for lyr, r in refs.items()},
                        cfg.component.name, cfg.position.spec, cfg.method.name, _settings_key(s), cfg.seed,
                        prep.split, extra)


def _settings_key(s: Any) -> dict[str, Any]:
    """steering.* as it decides a run's results; capability only when on, so older runs keep their keys."""
    out = asdict(s) | {"study": None}
    if not s.capability.enabled:
        out.pop("capability")
        out.pop("max_capability_drop")
    if not s.entanglement:
        out.pop("entanglement")
    return out


def comparison_key(cfg: SteerConfig, prep: Prepared) -> str:
    """Steering results with equal keys measured the same thing the same way and may be ranked together."""
    judge = prep.judge_id if prep.objective == TRAIT else None
    pairs = [(p.prompt, p.response, n.response) for p, n, _ in prep.pair_examples] if prep.objective == PROPENSITY \
        else None
    return content_hash("steer-comparison-v1", prep.objective, cfg.steering.scorer, judge, prep.threshold,
                        prep.questions, pairs, cfg.steering.propensity.max_response_tokens)[:16]


def _tags(cfg: SteerConfig, prep: Prepared, model: dict[str, str], refs: dict[int, VectorRef]) -> dict[str, Any]:
    run_ids = sorted({r.run_id for r in refs.values()})
    return {"traitlab.stage": "steer", "traitlab.steer_mode": cfg.mode, "trait": prep.trait.qualified_name,
            **model, "method": cfg.method.name, "component": cfg.component.name,
            "position": cfg.position.spec, "traitlab.vector_run_id": ",".join(run_ids),
            "traitlab.vector_runs": ",".join(f"{lyr}:{r.run_id}" for lyr, r in sorted(refs.items())),
            "layers": ",".join(map(str, sorted(refs))), "judge": prep.judge_cfg["backend"],
            "traitlab.objective": prep.objective, "traitlab.comparison": comparison_key(cfg, prep),
            "traitlab.threshold": prep.threshold,
            "sampler": cfg.steering.sampler, "direction": prep.direction}


def _result(cfg: SteerConfig, prep: Prepared, mode: str, layers: list[int]) -> SteerResult:
    return SteerResult("", False, prep.trait.qualified_name, mode, layers, objective=prep.objective,
                       measures=prep.measures, threshold=prep.threshold, direction=prep.direction,
                       scorer_name=scorer_measure(prep.scorer) if prep.scorer else None,
                       n_pairs={src: sum(1 for *_, s in prep.pair_examples if s == src)
                                for src in dict.fromkeys(s for *_, s in prep.pair_examples)})


def _measure_baselines(m: Measurer, cfg: SteerConfig, prep: Prepared, res: SteerResult) -> list[dict]:
    base = m.baselines(prep.prompted_system)
    res.baselines = base
    res.prompted = deltas(base["prompted"], base["unsteered"], res.measures, res.scorer_name, prep.direction,
                          seed=cfg.seed, n_boot=cfg.steering.bootstrap)
    log.info("baselines: unsteered coherence %s | prompted minus unsteered: %s", out._fmt(base["unsteered"].mean_coherence),
             ", ".join(f"{k} {d.interval}" for k, d in res.prompted.items()))
    return (modes.sample_rows("unsteered", prep.questions, None, base["unsteered"])
            + modes.sample_rows("prompted", prep.questions, prep.prompted_system, base["prompted"]))


def run_steer(cfg: SteerConfig, parent_run_id: str | None = None, lm: LoadedModel | None = None,
              judge: Any = None, command_line: Collection[str] | None = None) -> SteerResult:
    """`command_line`: config keys the user set; the trait's extraction method / position / component fill the
    others (None: a Python caller, whose non-default values count as set), so its vectors are found."""
    cfg = apply_lookup_settings(cfg, command_line)
    prep = validate_inputs(cfg)
    if cfg.mode == "rescore":
        return _run_rescore(cfg, prep, parent_run_id, judge)
    entangle = entanglement_examples(cfg, prep.trait.qualified_name) if cfg.mode == "search" else {}
    lm = lm or load_model(cfg.model)
    refs: dict[int, VectorRef] = {}
    vectors: dict[int, torch.Tensor] = {}
    if cfg.mode in ("search", "ablation"):
        refs = resolve_layers(cfg, prep, lm.n_layers)
        for lyr, ref in refs.items():
            dim = component_dim(lm.model, cfg.component.name, lyr)
            vectors[lyr] = fetch_vector(ref, uri=cfg.tracking.uri, experiment=cfg.tracking.experiment,
                                        expected_dim=dim).to(torch.float32)
    judge = judge or build_judge(prep.judge_cfg, lm)
    p = cfg.steering.propensity
    key = job_key(cfg, prep, model_key(lm), refs)
    run_name = cfg.tracking.run_name or f"steer-{cfg.mode}-{prep.trait.name}-{cfg.method.name}"
    res = _result(cfg, prep, cfg.mode, sorted(refs))
    with job_run(experiment=cfg.tracking.experiment, job_key=key, run_name=run_name, config=asdict(cfg),
                 tags=_tags(cfg, prep, model_tags(cfg.model), refs), parent_run_id=parent_run_id, force=cfg.force,
                 uri=cfg.tracking.uri) as run:
        res.run_id = run.run_id
        if run.skipped:
            res.skipped = True
            return res
        pairs = heldout_pairs(lm, prep.pair_examples, prep.split.get("seed", cfg.seed)) if prep.pair_examples else []
        c = cfg.steering.capability
        m = Measurer(lm, prep.trait, prep.questions, judge, prep.scorer, pairs, _gen(cfg), cfg.component.name,
                     cfg.seed, p.batch_size, p.max_response_tokens, prep.choice_items, c.scoring, c.batch_size)
        rows = _measure_baselines(m, cfg, prep, res)
        if cfg.mode == "search":
            res.stopped = out.cannot_succeed(res, prep.judge_cfg["backend"])
            if res.stopped:
                log.warning("search stopped after the baselines: %s", res.stopped)
                run.set_tag("traitlab.search_stopped", res.stopped)
            else:
                res.per_layer, steered, info = run_search_mode(lm, cfg, prep, m, vectors, refs, res)
                rows += steered
                out.log_studies(run, info)
                best = res.best_layer
                if entangle and best is not None:
                    res.entanglement = measure_entanglement(lm, cfg, entangle, prep.trait.qualified_name, best,
                                                            vectors[best], res.per_layer[best].best["coefficient"])
        elif cfg.mode == "ablation":
            res.ablation, ablated = modes.run_ablation_mode(m, vectors, res.baselines, prep.prompted_system,
                                                            cfg.component.name)
            rows += ablated
        _finish(run, res, rows)
    return res


def _finish(run: JobRun, res: SteerResult, rows: list[dict]) -> None:
    out.add_warnings(res)
    out.log_baselines(run, res)
    if res.per_layer:
        out.log_layers(run, res)
    for lyr, a in res.ablation.items():
        run.log_metrics({layer_metric(k): v for k, v in a.items() if v is not None}, step=lyr)
    res.rows = rows
    out.log_rows(run, rows)
    out.log_summary(run, res)


def _run_rescore(cfg: SteerConfig, prep: Prepared, parent_run_id: str | None, judge: Any) -> SteerResult:
    source = modes.find_source_run(cfg, prep.trait.qualified_name)
    tags = dict(source.data.tags)
    judge = judge or build_judge(prep.judge_cfg, None)
    key = content_hash("steer-rescore-v2", source.info.run_id, prep.judge_id, prep.threshold, prep.direction)
    run_tags = {k: tags[k] for k in ("trait", "model", "model_name", "vectors_model", "method", "component",
                                     "position", "traitlab.vector_run_id", "traitlab.vector_runs", "layers",
                                     "sampler", "direction") if k in tags}
    run_tags.update({"traitlab.stage": "steer", "traitlab.steer_mode": "rescore", "judge": prep.judge_cfg["backend"],
                     "traitlab.rescored_from": source.info.run_id, "traitlab.objective": TRAIT,
                     "traitlab.comparison": content_hash("steer-comparison-v1", TRAIT, prep.judge_id,
                                                         prep.threshold, prep.questions)[:16],
                     "traitlab.threshold": prep.threshold})
    res = _result(cfg, prep, "rescore", [])
    res.objective, res.measures, res.n_pairs = TRAIT, [TRAIT], {}
    with job_run(experiment=cfg.tracking.experiment, job_key=key,
                 run_name=cfg.tracking.run_name or f"steer-rescore-{prep.trait.name}", config=asdict(cfg),
                 tags=run_tags, parent_run_id=parent_run_id, force=cfg.force, uri=cfg.tracking.uri) as run:
        res.run_id = run.run_id
        if run.skipped:
            res.skipped = True
            return res
        m = Measurer(None, prep.trait, prep.questions, judge, None, [], _gen(cfg))  # judging needs no model
        rows = modes.rescore_rows(modes.load_response_rows(cfg, source.info.run_id), m)
        base = modes.baselines_from_rows(rows)
        res.baselines = base
        res.prompted = deltas(base["prompted"], base["unsteered"], [TRAIT], None, prep.direction, seed=cfg.seed,
                              n_boot=cfg.steering.bootstrap)
        res.per_layer = modes.layers_from_rows(rows, base["unsteered"], prep.direction, prep.threshold,
                                               seed=cfg.seed, n_boot=cfg.steering.bootstrap)
        res.ablation = modes.ablation_from_rows(rows, base)
        res.layers = sorted(set(res.per_layer) | set(res.ablation))
        log.info("re-scored %d responses of run %s", len(rows), source.info.run_id)
        _finish(run, res, rows)
    return res
