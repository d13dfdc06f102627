"""The steering stage's other modes: `ablation` (project the direction out, judge the change) and `rescore`
(re-judge the responses table of an earlier steer run; no steered model). Both measure the LLM judge's trait
score, with the same rule as the search: deltas over the questions scored in both conditions."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from traitlab.errors import ConfigError, DataError
from traitlab.io import read_json
from traitlab.models.chat import format_prompt
from traitlab.models.generation import generate_texts
from traitlab.steering.measures import TRAIT, Measurer, Sample, paired_delta
from traitlab.steering.results import RESPONSES_TABLE, LayerResult, trial_row

log = logging.getLogger(__name__)


def response_row(condition: str, qi: int, question: str, system: str | None, response: str, trait: float | None,
                 coherence: float | None, scorer: float | None = None, *, layer: int | None = None,
                 coefficient: float = 0.0, trial: int | None = None, study: str = "") -> dict:
    return {"condition": condition, "layer": layer, "coefficient": coefficient, "trial": trial, "study": study,
            "question_index": qi, "question": question, "system_prompt": system, "response": response,
            "trait_score": trait, "coherence": coherence, "scorer": scorer}


def sample_rows(condition: str, questions: Sequence[str], system: str | None, s: Sample, **kw: Any) -> list[dict]:
    return [response_row(condition, qi, q, system, s.responses[qi], s.trait[qi] if s.trait else None,
                         s.coherence[qi], s.scorer[qi] if s.scorer else None, **kw)
            for qi, q in enumerate(questions)]


def _mean(values: Sequence[float | None]) -> float | None:
    got = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(got) / len(got) if got else None


# ------------------------------------------------------------------------------------------- ablation


def run_ablation_mode(m: Measurer, vectors: dict[int, Any], base: dict[str, Sample], prompted_system: str,
                      component: str) -> tuple[dict[int, dict], list[dict]]:
    """Project the direction out at each layer (one layer at a time) for unsteered and prompted questions."""
    from traitlab.core.hooks import AblationHook

    qs, lm, gen = m.questions, m.lm, m.gen
    texts = [format_prompt(lm.tokenizer, q, None, lm.use_chat_template) for q in qs] + \
            [format_prompt(lm.tokenizer, q, prompted_system, lm.use_chat_template) for q in qs]
    results, rows = {}, []
    for lyr in sorted(vectors):
        hook = AblationHook(lm.model, lyr, vectors[lyr], component=component)
        gens = generate_texts(lm, texts, max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size, seed=m.seed,
                              do_sample=gen.do_sample, temperature=gen.temperature, top_p=gen.top_p,
                              hooks=lambda rows_, h=hook: h, desc=None)
        responses = [g.text for g in gens]
        trait, coherence = m.judged(qs + qs, responses)
        n = len(qs)
        plain = Sample(responses[:n], coherence[:n], trait[:n])
        prompted = Sample(responses[n:], coherence[n:], trait[n:])
        rows += sample_rows("ablated", qs, None, plain, layer=lyr)
        rows += sample_rows("ablated_prompted", qs, prompted_system, prompted, layer=lyr)
        results[lyr] = ablation_metrics(plain, prompted, base)
        log.info("ablation layer %d: trait delta %s, prompted trait delta %s", lyr,
                 results[lyr]["ablation_delta"], results[lyr]["ablation_prompted_delta"])
    return results, rows


def ablation_metrics(plain: Sample, prompted: Sample, base: dict[str, Sample]) -> dict[str, float | None]:
    """Trait and coherence under ablation; deltas against the matching baseline over questions scored in both."""
    def delta(a: Sample, b: Sample) -> float | None:
        d = paired_delta(a.items(TRAIT, None), b.items(TRAIT, None), 1, seed=0, n_boot=1)
        return None if d.interval.n == 0 else d.interval.mean

    return {"ablated_trait": _mean(plain.trait), "ablated_coherence": plain.mean_coherence,
            "ablated_prompted_trait": _mean(prompted.trait), "ablated_prompted_coherence": prompted.mean_coherence,
            "ablation_delta": delta(plain, base["unsteered"]),
            "ablation_prompted_delta": delta(prompted, base["prompted"])}


# -------------------------------------------------------------------------------------------- rescore


def find_source_run(cfg: Any, trait: str) -> Any:
    from traitlab.models.identity import identity_of
    from traitlab.tracking.store import ensure_store

    client, exp_id = ensure_store(cfg.tracking.uri, cfg.tracking.experiment)
    if cfg.rescore_from:
        try:
            run = client.get_run(cfg.rescore_from)
        except Exception:  # noqa: BLE001 - MLflow raises several kinds for an unknown id
            raise ConfigError("rescore_from", f"no MLflow run {cfg.rescore_from!r} in the tracking store") from None
        if run.data.tags.get("traitlab.stage") != "steer":
            raise ConfigError("rescore_from", f"run {cfg.rescore_from} is not a steer run "
                                              f"(traitlab.stage={run.data.tags.get('traitlab.stage')!r})")
        return run

    def quoted(v: str) -> str:
        return "'" + v.replace("'", "\\'") + "'"

    q = ["tags.`traitlab.stage` = 'steer'", f"tags.trait = {quoted(trait)}", f"tags.model = {quoted(identity_of(cfg.model).key)}",
         f"tags.method = {quoted(cfg.method.name)}", f"tags.component = {quoted(cfg.component.name)}",
         f"tags.position = {quoted(cfg.position.spec)}", "attributes.status = 'FINISHED'"]
    runs = client.search_runs([exp_id], filter_string=" and ".join(q), order_by=["attributes.start_time DESC"],
                              max_results=50)
    runs = [r for r in runs if r.data.tags.get("traitlab.steer_mode") in ("search", "rescore")]
    if not runs:
        raise ConfigError("mode", f"rescore found no finished steer run of {trait} on {identity_of(cfg.model)} "
                                  f"(method={cfg.method.name}, component={cfg.component.name}, position="
                                  f"{cfg.position.spec!r}) in experiment '{cfg.tracking.experiment}'; run "
                                  "mode=search first or set rescore_from=<run id>")
    return runs[0]


def load_response_rows(cfg: Any, run_id: str) -> list[dict[str, Any]]:
    from traitlab.tracking.store import ensure_store

    client, _ = ensure_store(cfg.tracking.uri, cfg.tracking.experiment)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, RESPONSES_TABLE, tmp)
        except Exception:  # noqa: BLE001
            raise ConfigError("rescore_from", f"run {run_id} has no {RESPONSES_TABLE} to re-score") from None
        doc = read_json(Path(local))
    cols, data = doc.get("columns"), doc.get("data")
    if not isinstance(cols, list) or not isinstance(data, list):
        raise DataError(f"{run_id}:{RESPONSES_TABLE}", "expected an MLflow table {columns, data}")
    rows = [dict(zip(cols, r, strict=True)) for r in data]
    for r in rows:
        for k in ("layer", "trial", "question_index"):
            v = r.get(k)
            r[k] = int(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else None
    return rows


def rescore_rows(rows: list[dict], m: Measurer) -> list[dict]:
    trait, coherence = m.judged([r["question"] for r in rows], [r["response"] or "" for r in rows])
    return [dict(r, trait_score=t, coherence=c) for r, t, c in zip(rows, trait, coherence, strict=True)]


def rows_sample(rows: Sequence[dict], n_questions: int) -> Sample:
    """Rows of one condition -> a Sample indexed by question (questions without a row are unscored)."""
    by_q = {int(r["question_index"]): r for r in rows}
    column = {k: [by_q[qi][k] if qi in by_q else None for qi in range(n_questions)]
              for k in ("response", "coherence", "trait_score")}
    return Sample([r or "" for r in column["response"]], column["coherence"], column["trait_score"])


def baselines_from_rows(rows: Sequence[dict]) -> dict[str, Sample]:
    n = 1 + max((int(r["question_index"]) for r in rows if r.get("question_index") is not None), default=-1)
    return {cond: rows_sample([r for r in rows if r["condition"] == cond], n) for cond in ("unsteered", "prompted")}


def layers_from_rows(rows: Sequence[dict], base: Sample, direction: int, threshold: float, *, seed: int = 0,
                     n_boot: int = 2000) -> dict[int, LayerResult]:
    """Per-layer trial summaries from judged response rows (rescore), with the search's rule: trait delta over
    the questions scored in both, coherent when the mean coherence >= threshold, best = highest coherent delta."""
    out: dict[int, LayerResult] = {}
    trials: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        if r["condition"] == "steered" and r["layer"] is not None:
            trials.setdefault((r["layer"], r["trial"] if r["trial"] is not None else -1), []).append(r)
    n = len(base.responses)
    for (lyr, num), rs in sorted(trials.items()):
        res = out.setdefault(lyr, LayerResult(lyr, rs[0].get("study") or "", float("nan"), float("nan"),
                                              float("nan")))
        s = rows_sample(rs, n)
        d = paired_delta(s.items(TRAIT, None), base.items(TRAIT, None), direction, seed=seed, n_boot=n_boot)
        value = d.interval.mean if d.interval.n else None
        coh = s.mean_coherence
        feasible = value is not None and (coh if coh is not None else 0.0) >= threshold
        res.trials.append(trial_row(num, rs[0]["coefficient"], coh, value, feasible,
                                    "COMPLETE" if value is not None else "FAIL", {TRAIT: d.as_dict()}))
    for res in out.values():
        ok = [t for t in res.trials if t["feasible"]]
        res.best = max(ok, key=lambda t: t["value"]) if ok else None
    return out


def ablation_from_rows(rows: Sequence[dict], base: dict[str, Sample]) -> dict[int, dict[str, float | None]]:
    """Ablation metrics recomputed from judged rows (re-scoring an ablation run)."""
    n = len(base["unsteered"].responses)
    layers = sorted({r["layer"] for r in rows if r["condition"] == "ablated" and r["layer"] is not None})

    def cond(name: str, lyr: int) -> Sample:
        return rows_sample([r for r in rows if r["condition"] == name and r["layer"] == lyr], n)

    return {lyr: ablation_metrics(cond("ablated", lyr), cond("ablated_prompted", lyr), base) for lyr in layers}
