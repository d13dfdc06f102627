"""The steering stage's coefficient search: one Optuna study per (vector, layer), candidates of every study (of
one trait, or of several traits searched together) generated as one batch and measured in shared forward
batches, each outcome told to its own study, then per-layer results read back from the studies."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from traitlab import faults
from traitlab.config.steer import SteerConfig
from traitlab.data import TraitDataset
from traitlab.io import content_hash
from traitlab.models.chat import format_prompt
from traitlab.models.identity import identity_of
from traitlab.models.loading import LoadedModel
from traitlab.models.responses import model_key
from traitlab.models.steering import activation_norms
from traitlab.paths import outputs_dir
from traitlab.steering import coef_search as cs
from traitlab.steering import modes as modes
from traitlab.steering import results as out
from traitlab.steering.measures import (
    CAPABILITY,
    PROPENSITY,
    Measurer,
    capability_summary,
    deltas,
    steered_together,
)
from traitlab.steering.prepare import Prepared, _gen
from traitlab.steering.results import LayerResult, SteerResult, layer_steerability, trial_row
from traitlab.tracking.artifacts import slug
from traitlab.tracking.registry import VectorRef

log = logging.getLogger(__name__)


def study_storage_path(cfg: SteerConfig, trait: TraitDataset) -> Path:
    root = Path(cfg.steering.study.storage_dir) if cfg.steering.study.storage_dir else outputs_dir() / "studies"
    return root / slug(identity_of(cfg.model).key) / f"{trait.qualified_name}.db"


def search_settings(cfg: SteerConfig, prep: Prepared, lm_key: str) -> dict[str, Any]:
    """What decides a trial's value: a study with other settings would not be comparable (steps excluded,
    so asking for more steps continues the same study)."""
    s = cfg.steering
    settings = {"sampler": s.sampler, "threshold": prep.threshold, "trials_per_step": s.trials_per_step,
                "start_mult": s.start_mult, "search_space": asdict(s.search_space), "questions": prep.questions,
                "generation": asdict(_gen(cfg)) | {"batch_size": None}, "seed": cfg.seed,
                "direction": prep.direction, "judge": prep.judge_id, "model": lm_key, "objective": prep.objective,
                "scorer": s.scorer, "propensity": asdict(s.propensity) | {"batch_size": None},
                "pairs": [(p.prompt, p.response, n.response) for p, n, _ in prep.pair_examples]}
    if s.sampler == "adaptive":
        settings.update(up_mult=s.up_mult, down_mult=s.down_mult, momentum=s.momentum)
    elif s.sampler == "tpe":
        settings["tpe_startup_trials"] = s.tpe_startup_trials
    else:
        settings["steps"] = s.steps  # the grid itself depends on how many points
    if prep.choice_items:  # only then, so studies without capability keep their names
        settings["capability"] = {"set": prep.choice_set, "n_items": len(prep.choice_items),
                                  "scoring": s.capability.scoring, "max_drop": s.max_capability_drop}
    return settings


def study_name(ref: VectorRef, settings_hash: str) -> str:
    return (f"{ref.method}.{ref.component}.{slug(ref.position)}.{ref.run_id[:12]}.L{ref.layer:03d}."
            f"{settings_hash[:10]}")


@dataclass
class TraitSearch:
    """One trait's part of a search: its config, measurer, result being filled, and its studies."""

    cfg: SteerConfig
    prep: Prepared
    measurer: Measurer
    res: SteerResult
    vectors: dict[int, torch.Tensor]
    refs: dict[int, VectorRef]
    studies: list[cs.SearchStudy] = field(default_factory=list)
    storage: str = ""


def _outcome(c: cs.Candidate, smp: Any, res: SteerResult, seed: int, n_boot: int, round_no: int,
             max_drop: float | None) -> cs.Outcome:
    ds = deltas(smp, res.baselines["unsteered"], res.measures, res.scorer_name, res.direction, seed=seed,
                n_boot=n_boot)
    obj = ds[res.objective].interval
    rows = [{"question_index": qi, "response": smp.responses[qi], "coherence": smp.coherence[qi],
             "trait": smp.trait[qi] if smp.trait else None,
             "scorer": smp.scorer[qi] if smp.scorer else None} for qi in range(len(smp.responses))]
    lost = max((d.lost for name, d in ds.items() if name != PROPENSITY), default=0)
    attrs = {"responses": rows, "margins": smp.margins, "lost_questions": lost,
             "deltas": {name: d.as_dict() for name, d in ds.items()}}
    cap = capability_summary(smp.capability, res.baselines["unsteered"].capability)
    constraints = {}
    if cap is not None:
        attrs["capability"] = cap
        if max_drop is not None:  # drop = unsteered - steered accuracy (point estimate)
            constraints[CAPABILITY] = -cap["delta"] - max_drop
    log.info("round %d  %s  layer %d  coef %.3g  %s delta %s  coherence %s%s%s", round_no, res.trait, c.layer,
             c.coefficient, res.objective, obj, out._fmt(smp.mean_coherence),
             f"  capability {cap['accuracy']:.3f} (change {cap['delta']:+.3f})" if cap else "",
             f"  (lost {lost} question(s))" if lost else "")
    return cs.Outcome(obj.mean if obj.n else None, smp.mean_coherence, attrs, constraints)


def evaluator(searches: Sequence[TraitSearch], seed: int, n_boot: int) -> cs.Evaluate:
    """Evaluate a round's candidates of every trait together: one generate call, shared propensity batches."""
    owner = {st.key: i for i, ts in enumerate(searches) for st in ts.studies}
    counter = {"round": 0}

    def evaluate(cands: list[cs.Candidate]) -> list[cs.Outcome]:
        counter["round"] += 1
        mine: list[list[int]] = [[] for _ in searches]
        for j, c in enumerate(cands):
            mine[owner[c.key]].append(j)
        parts = [(ts.measurer, [[(cands[j].layer, cands[j].vector, cands[j].coefficient)] for j in mine[i]])
                 for i, ts in enumerate(searches) if mine[i]]
        samples = iter(steered_together(parts))
        outcomes: list[cs.Outcome | None] = [None] * len(cands)
        for i, ts in enumerate(searches):
            if not mine[i]:
                continue
            for j, smp in zip(mine[i], next(samples), strict=True):
                outcomes[j] = _outcome(cands[j], smp, ts.res, seed, n_boot, counter["round"],
                                       ts.cfg.steering.max_capability_drop)
        return outcomes  # type: ignore[return-value]

    return evaluate


def build_studies(lm: LoadedModel, ts: TraitSearch) -> None:
    """Open (or resume) one study per layer of this trait, coefficient bounds from base = ||h|| / ||v||."""
    cfg, prep, s = ts.cfg, ts.prep, ts.cfg.steering
    layers = sorted(ts.vectors)
    texts = [format_prompt(lm.tokenizer, q, None, lm.use_chat_template) for q in prep.questions]
    norms = activation_norms(lm, texts, layers, cfg.component.name)
    settings_hash = content_hash("steer-study-v2", search_settings(cfg, prep, model_key(lm)))
    path = study_storage_path(cfg, prep.trait)
    storage = cs.open_storage(path, heartbeat_interval=s.study.heartbeat_interval,
                              grace_period=s.study.grace_period, max_retry=s.study.max_retry)
    target = s.steps * s.trials_per_step
    for lyr in layers:
        v = ts.vectors[lyr]
        base = norms[lyr] / float(v.norm())
        lo, hi = (s.search_space.low * base, s.search_space.high * base) if s.search_space.relative \
            else (s.search_space.low, s.search_space.high)
        start = min(hi, max(lo, s.start_mult * base))
        grid = None
        if s.sampler == "grid":
            grid = cs.geometric_grid(lo, hi, target)
            lo, hi = min(grid), max(grid)
        sampler = cs.make_sampler(s.sampler, seed=cfg.seed + lyr, grid=grid, up_mult=s.up_mult,
                                  down_mult=s.down_mult, momentum=s.momentum,
                                  tpe_startup_trials=s.tpe_startup_trials, budget=target)
        attrs = {cs.START_ATTR: start, "base_coefficient": base, "activation_norm": norms[lyr],
                 "vector_norm": float(v.norm()), "layer": lyr, "direction": prep.direction,
                 "vector_run_id": ts.refs[lyr].run_id, "trait": prep.trait.qualified_name,
                 "settings": settings_hash}
        name = study_name(ts.refs[lyr], settings_hash)
        study = cs.open_study(storage, name, sampler, attrs, enqueue={cs.COEF: start} if s.sampler == "tpe" else None)
        key = f"{prep.trait.qualified_name}:{name}"  # unique across the traits of one search
        ts.studies.append(cs.SearchStudy(key, lyr, study, target=target, low=lo, high=hi, log=s.search_space.log,
                                         direction=prep.direction, vector=v))
    ts.storage = str(path)


def run_searches(searches: Sequence[TraitSearch], cfg: SteerConfig) -> None:
    """Every trait's studies in ONE ask -> evaluate -> tell loop (a round's candidates of all traits share
    their generate call and propensity batches)."""
    s = cfg.steering
    studies = [st for ts in searches for st in ts.studies]
    recovered = cs.recover_stale([x.study for x in studies], s.study.grace_period, s.study.heartbeat_interval)
    if recovered:
        log.info("re-queued %d trial(s) of an interrupted run", recovered)
    log.info("search: %d trait(s), %d layer(s) x %d trial(s) (%d to run), %s sampler", len(searches),
             len(studies), s.steps * s.trials_per_step, sum(x.remaining() for x in studies), s.sampler)
    cs.run_search(studies, evaluator(searches, cfg.seed, s.bootstrap), per_step=s.trials_per_step,
                  threshold=_one_threshold(searches),
                  heartbeat_interval=s.study.heartbeat_interval,
                  on_round=lambda _rounds, _asked: faults.maybe_fail("trial"))


def _one_threshold(searches: Sequence[TraitSearch]) -> float:
    thresholds = {ts.prep.threshold for ts in searches}
    if len(thresholds) != 1:
        raise ValueError(f"traits searched together need one coherence threshold, got {sorted(thresholds)}")
    return thresholds.pop()


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


def collect(ts: TraitSearch) -> tuple[dict[int, LayerResult], list[dict], dict]:
    """Per-layer results, response rows and study info of one trait, read back from its studies."""
    cfg, prep = ts.cfg, ts.prep
    per_layer = {x.layer: _layer_result(x, ts.res, cfg.seed, cfg.steering.bootstrap) for x in ts.studies}
    rows = []
    for x in ts.studies:
        for t in cs.finished_trials(x.study):
            for r in t.user_attrs.get("responses", []):
                qi = int(r["question_index"])
                rows.append(modes.response_row("steered", qi, prep.questions[qi], None, r["response"], r["trait"],
                                               r["coherence"], r.get("scorer"), layer=x.layer,
                                               coefficient=t.user_attrs.get("coefficient_signed"), trial=t.number,
                                               study=x.study.study_name))
    return per_layer, rows, {"storage": ts.storage, "studies": {x.layer: x.study for x in ts.studies}}
