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

What is measured and how deltas are formed: steering/measures.py. Tables, metrics, figures:
steering/results.py. Modes `ablation` and `rescore`: steering/modes.py; `baseline` runs the two
baselines only.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from contextlib import ExitStack
from dataclasses import asdict, replace
from typing import Any

import torch

from traitlab.config.schema import MethodConfig, TraitConfig
from traitlab.config.steer import SteerConfig
from traitlab.config.trait_overrides import apply_lookup_settings
from traitlab.core.components import component_dim
from traitlab.errors import ConfigError
from traitlab.io import content_hash
from traitlab.judge.factory import build_judge
from traitlab.models.chat import format_prompt
from traitlab.models.identity import model_tags
from traitlab.models.loading import LoadedModel, load_model
from traitlab.models.steering import activation_norms
from traitlab.pipelines.common import model_key, with_measured_batch_sizes
from traitlab.steering import ensemble as ens
from traitlab.steering import modes as modes
from traitlab.steering import results as out
from traitlab.steering import search as search
from traitlab.steering.entangle import entanglement_examples, measure_entanglement
from traitlab.steering.measures import (
    PROPENSITY,
    TRAIT,
    Measurer,
    deltas,
    heldout_pairs,
    scorer_measure,
)
from traitlab.steering.prepare import Prepared, _gen, resolve_layers, validate_inputs
from traitlab.steering.results import SteerResult
from traitlab.tracking.names import auto_batch_metric, layer_metric
from traitlab.tracking.registry import VectorRef, fetch_vector
from traitlab.tracking.runs import JobRun, job_run

log = logging.getLogger(__name__)

__all__ = ["run_steer", "run_steer_traits", "validate_inputs"]


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


def _measured_steering(cfg: SteerConfig, lm: LoadedModel, jobs: list[tuple[Prepared, int]]) -> SteerConfig:
    """steering.batch_size=auto: measured once, on the prompted baselines' prompts (the longest a generate
    sees), for the most rows one generate holds (questions x candidates x steered layers, over every trait
    searched together). The job key keeps `auto`, so a rerun finds the run whatever it measures."""
    if not isinstance(cfg.steering.batch_size, str):
        return cfg
    prompts = [format_prompt(lm.tokenizer, q, prep.prompted_system, lm.use_chat_template)
               for prep, _ in jobs for q in prep.questions]
    rows = sum(len(prep.questions) * max(2, cfg.steering.trials_per_step * max(1, n_layers)) for prep, n_layers in jobs)
    return replace(cfg, steering=with_measured_batch_sizes(cfg.steering, lm, prompts, prefix="steering",
                                                           max_rows=rows))


def _log_measured(run: JobRun, configured: SteerConfig, cfg: SteerConfig) -> None:
    if isinstance(configured.steering.batch_size, str):
        run.log_metrics({auto_batch_metric("steering.batch_size"): float(cfg.steering.batch_size)})


def _vectors(cfg: SteerConfig, prep: Prepared, lm: LoadedModel) -> tuple[dict[int, VectorRef], dict[int, Any]]:
    refs = resolve_layers(cfg, prep, lm.n_layers)
    vectors = {lyr: fetch_vector(ref, uri=cfg.tracking.uri, experiment=cfg.tracking.experiment,
                                 expected_dim=component_dim(lm.model, cfg.component.name, lyr)).to(torch.float32)
               for lyr, ref in refs.items()}
    return refs, vectors


def _measurer(cfg: SteerConfig, prep: Prepared, lm: LoadedModel, judge: Any) -> Measurer:
    pairs = heldout_pairs(lm, prep.pair_examples, prep.split.get("seed", cfg.seed)) if prep.pair_examples else []
    p = cfg.steering.propensity
    c = cfg.steering.capability
    return Measurer(lm, prep.trait, prep.questions, judge, prep.scorer, pairs, _gen(cfg), cfg.component.name,
                    cfg.seed, p.batch_size, p.max_response_tokens, prep.choice_items, c.scoring, c.batch_size)


def _open_job(stack: ExitStack, cfg: SteerConfig, prep: Prepared, lm: LoadedModel, refs: dict[int, VectorRef],
              parent_run_id: str | None, extra: Any = None) -> tuple[JobRun, SteerResult]:
    run_name = cfg.tracking.run_name or f"steer-{cfg.mode}-{prep.trait.name}-{cfg.method.name}"
    run = stack.enter_context(job_run(
        experiment=cfg.tracking.experiment, job_key=job_key(cfg, prep, model_key(lm), refs, extra),
        run_name=run_name, config=asdict(cfg), tags=_tags(cfg, prep, model_tags(cfg.model), refs),
        parent_run_id=parent_run_id, force=cfg.force, uri=cfg.tracking.uri))
    res = _result(cfg, prep, cfg.mode, sorted(refs))
    res.run_id, res.skipped = run.run_id, run.skipped
    return run, res


def _stopped(run: JobRun, res: SteerResult, prep: Prepared) -> bool:
    res.stopped = out.cannot_succeed(res, prep.judge_cfg["backend"])
    if res.stopped:
        log.warning("%s: search stopped after the baselines: %s", res.trait, res.stopped)
        run.set_tag("traitlab.search_stopped", res.stopped)
    return bool(res.stopped)


def run_steer(cfg: SteerConfig, parent_run_id: str | None = None, lm: LoadedModel | None = None,
              judge: Any = None, command_line: Collection[str] | None = None) -> SteerResult:
    """`command_line`: config keys the user set; the trait's extraction method / position / component fill the
    others (None: a Python caller, whose non-default values count as set), so its vectors are found.
    With `traits` set, every trait is searched together (run_steer_traits) and the first trait's result
    is returned."""
    if cfg.traits:
        return next(iter(run_steer_traits(cfg, parent_run_id, lm, judge, command_line).values()))
    cfg = apply_lookup_settings(cfg, command_line)
    prep = validate_inputs(cfg)
    if cfg.mode == "rescore":
        return _run_rescore(cfg, prep, parent_run_id, judge)
    methods = {}  # mode=ensemble: the other member methods, each checked before the model loads
    for name in (cfg.steering.ensemble.methods or []) if cfg.mode == "ensemble" else []:
        if name != cfg.method.name:
            c = replace(cfg, method=MethodConfig(name=name))
            methods[name] = (c, validate_inputs(c))
    entangle = entanglement_examples(cfg, prep.trait.qualified_name) if cfg.mode == "search" else {}
    lm = lm or load_model(cfg.model)
    refs, vectors = _vectors(cfg, prep, lm) if cfg.mode in ("search", "ablation", "ensemble") else ({}, {})
    by_method = {cfg.method.name: (refs, vectors)} | {n: _vectors(c, p, lm) for n, (c, p) in methods.items()}
    judge = judge or build_judge(prep.judge_cfg, lm)
    with ExitStack() as stack:
        run, res = _open_job(stack, cfg, prep, lm, refs, parent_run_id,
                             extra=sorted((n, r.run_id) for n, (rs, _) in by_method.items() for r in rs.values())
                             if methods else None)
        if res.skipped:
            return res
        measured = _measured_steering(cfg, lm, [(prep, len(refs))])
        _log_measured(run, cfg, measured)
        cfg = measured
        m = _measurer(cfg, prep, lm, judge)
        rows = _measure_baselines(m, cfg, prep, res)
        if cfg.mode == "search" and not _stopped(run, res, prep):
            ts = search.TraitSearch(cfg, prep, m, res, vectors, refs)
            search.build_studies(lm, ts)
            search.run_searches([ts], cfg)
            res.per_layer, steered, info = search.collect(ts)
            rows += steered
            out.log_studies(run, info)
            best = res.best_layer
            if entangle and best is not None:
                res.entanglement = measure_entanglement(lm, cfg, entangle, prep.trait.qualified_name, best,
                                                        vectors[best], res.per_layer[best].best["coefficient"])
        elif cfg.mode == "ensemble" and not _stopped(run, res, prep):
            _run_ensemble(lm, cfg, prep, m, by_method, res, run)
        elif cfg.mode == "ablation":
            res.ablation, ablated = modes.run_ablation_mode(m, vectors, res.baselines, prep.prompted_system,
                                                            cfg.component.name)
            rows += ablated
        _finish(run, res, rows)
    return res


def _run_ensemble(lm: LoadedModel, cfg: SteerConfig, prep: Prepared, m: Measurer,
                  by_method: dict[str, tuple[dict[int, VectorRef], dict[int, Any]]], res: SteerResult,
                  run: JobRun) -> None:
    layers = sorted({lyr for _, vs in by_method.values() for lyr in vs})
    texts = [format_prompt(lm.tokenizer, q, None, lm.use_chat_template) for q in prep.questions]
    norms = activation_norms(lm, texts, layers, cfg.component.name)
    members = [ens.Member(name, lyr, v, norms[lyr] / float(v.norm()), rs[lyr].run_id)
               for name, (rs, vs) in by_method.items() for lyr, v in sorted(vs.items())]
    found = ens.run_ensemble(cfg, prep, m, members, res, search.study_storage_path(cfg, prep.trait))
    ens.log_ensemble(run, found, cfg, prep, model_tags(cfg.model))
    if found.best is None:
        res.note = (f"No ensemble trial met coherence >= {prep.threshold:g} ({len(found.trials)} trials): no "
                    "ensemble vector was logged; lower steering.ensemble.high.")
    else:
        d = found.best["objective"]
        trust = "its 95% interval excludes zero" if d["low"] > 0 or d["high"] < 0 else \
            "its 95% interval includes zero: no evidence of an effect"
        res.note = (f"Best ensemble (trial {found.best['number']} of {len(found.trials)}): weights "
                    + ", ".join(f"{x.method} L{x.layer} {w:.3f}" for x, w in zip(members, found.weights or [],
                                                                              strict=True))
                    + f" (x base); coherence {found.best['coherence']:.1f}, {prep.objective} delta {d['delta']:+.3g} "
                    f"[{d['low']:.3g}, {d['high']:.3g}] (n={d['n']}); {trust}.")
    log.info("%s", res.note)


def trait_configs(cfg: SteerConfig, command_line: Collection[str] | None) -> list[SteerConfig]:
    """One single-trait config per entry of `traits`, each with its own extraction settings filled in."""
    names = list(cfg.traits or [])
    if cfg.mode != "search":
        raise ConfigError("traits", f"several traits are searched together in mode=search only, not {cfg.mode}")
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError("traits", f"{names} must be distinct trait names, e.g. [starter/optimism,starter/refusal]")
    def tracking(name: str) -> Any:  # children of a named run are told apart by their trait
        run_name = cfg.tracking.run_name
        return replace(cfg.tracking, run_name=f"{run_name}-{name.split('/')[-1]}") if run_name else cfg.tracking

    return [apply_lookup_settings(replace(cfg, trait=TraitConfig(name=n), traits=None, tracking=tracking(n)),
                                  command_line) for n in names]


def run_steer_traits(cfg: SteerConfig, parent_run_id: str | None = None, lm: LoadedModel | None = None,
                     judge: Any = None, command_line: Collection[str] | None = None) -> dict[str, SteerResult]:
    """mode=search over several traits at once: every trait keeps its own studies and its own steer run (a
    child of one parent run), while each round's candidates of ALL traits are generated in one batched
    call and their held-out pairs scored in shared forward batches."""
    cfgs = trait_configs(cfg, command_line)
    preps = [validate_inputs(c) for c in cfgs]  # every trait checked before the model loads
    lm = lm or load_model(cfg.model)
    loaded = [(c, prep, *_vectors(c, prep, lm)) for c, prep in zip(cfgs, preps, strict=True)]
    names = [prep.trait.qualified_name for prep in preps]
    key = content_hash("steer-traits-v1", [job_key(c, prep, model_key(lm), refs) for c, prep, refs, _ in loaded])
    results: dict[str, SteerResult] = {}
    with ExitStack() as stack:
        parent = stack.enter_context(job_run(
            experiment=cfg.tracking.experiment, job_key=key, run_name=cfg.tracking.run_name or
            f"steer-traits-{'+'.join(p.trait.name for p in preps)}", config=asdict(cfg),
            tags={"traitlab.stage": "steer_traits", "traits": ",".join(names), **model_tags(cfg.model)},
            parent_run_id=parent_run_id, force=cfg.force, uri=cfg.tracking.uri))
        searches, jobs = [], []
        measured = None  # the traits' rounds share generate calls: one `auto` measurement over all of them
        for c, prep, refs, vectors in loaded:
            run, res = _open_job(stack, c, prep, lm, refs, parent.run_id)
            results[prep.trait.qualified_name] = res
            if res.skipped:
                continue
            measured = measured or _measured_steering(cfg, lm, [(p, len(r)) for _, p, r, _ in loaded])
            _log_measured(run, cfg, measured)
            c = replace(c, steering=measured.steering)
            m = _measurer(c, prep, lm, judge or build_judge(prep.judge_cfg, lm))
            rows = _measure_baselines(m, c, prep, res)
            jobs.append((run, res, rows))
            if not _stopped(run, res, prep):
                ts = search.TraitSearch(c, prep, m, res, vectors, refs)
                search.build_studies(lm, ts)
                searches.append((ts, run, rows))
        if searches:
            search.run_searches([ts for ts, _, _ in searches], measured or cfg)
        for ts, run, rows in searches:
            ts.res.per_layer, steered, info = search.collect(ts)
            rows += steered
            out.log_studies(run, info)
        for run, res, rows in jobs:
            _finish(run, res, rows)
        if not parent.skipped:
            parent.log_metrics({"n_traits": len(names), "n_searched_together": len(searches)})
            parent.set_tag("traitlab.children", ",".join(r.run_id for r in results.values()))
    return results


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
