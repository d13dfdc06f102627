"""Stage 4 (use): generate with vectors applied and the chosen traits monitored per token, unsteered and
steered side by side in one MLflow run.

Flow: validate and resolve everything before the model loads (prompts or conversations, vector specs from the
registry / run ids / files, coefficient=best from the steering study) -> load -> cap thresholds (mode=cap) ->
monitored (trait, layer) vectors -> two monitored generations of the same prompts (unsteered, steered), the
projections taken inside the generation -> per-prompt records -> per monitored trait x layer the mean shift
over prompts with a paired bootstrap interval -> views, tables, metrics, a one-paragraph verdict.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from traitlab.config.generate import GenerateConfig
from traitlab.core.analysis import check_score_mode
from traitlab.core.proportions import paired_bootstrap
from traitlab.data.texts import Conversation, TextItem, load_conversations, load_source
from traitlab.errors import ConfigError
from traitlab.io import content_hash
from traitlab.models.identity import model_tags
from traitlab.models.loading import LoadedModel, load_model
from traitlab.monitor.calibration import check_calibration
from traitlab.monitor.generation import MonitoredGeneration, generate_monitored
from traitlab.monitor.records import build_record, response_scores
from traitlab.monitor.scoring import decode_tokens
from traitlab.monitor.vectors import TraitVector, vector_keys, vectors_by_layer
from traitlab.monitor.views import write_views
from traitlab.pipelines.common import (
    check_monitored,
    clean_for_scoring,
    conversation_text,
    model_key,
    monitor_component,
    monitored_vectors,
    set_cap_thresholds,
    steering_setup,
)
from traitlab.steering_vector import SteeringSetup
from traitlab.tracking.artifacts import TABLES
from traitlab.tracking.names import layer_metric
from traitlab.tracking.runs import JobRun, stage_run

log = logging.getLogger(__name__)
CONDITIONS = ("unsteered", "steered")


@dataclass
class GenerateResult:
    run_id: str
    skipped: bool
    steering: str = ""  # SteeringSetup.describe()
    pairs: list[dict[str, Any]] = field(default_factory=list)  # prompt_id, prompt, unsteered, steered
    shifts: list[dict[str, Any]] = field(default_factory=list)  # trait, layer, unsteered, steered, shift, low, high, n
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # condition -> per-prompt records

    def headline(self) -> float:
        """Mean shift of the first monitored trait x layer (what a sweeper sees)."""
        return float(self.shifts[0]["shift"]) if self.shifts else float("nan")


# ------------------------------------------------------------------------------------------------ inputs


def load_conversations_of(cfg: GenerateConfig) -> tuple[str, list[Conversation]]:
    """(source name, conversations): one ``prompt``, a ``conversations`` jsonl, or the prompt set."""
    if cfg.prompt is not None and cfg.conversations:
        raise ConfigError("prompt", "give prompt= or conversations=, not both")
    if cfg.prompt is not None:
        if not str(cfg.prompt).strip():
            raise ConfigError("prompt", "is empty; expected the text to answer")
        convs, name = [Conversation.single("prompt", str(cfg.prompt), cfg.system_prompt)], "prompt"
    elif cfg.conversations:
        convs, name = load_conversations(cfg.conversations), Path(cfg.conversations).stem
    else:
        src = load_source(cfg.prompt_set, None, None)
        convs = [Conversation.single(it.id, it.prompt, it.system_prompt) for it in src.items]
        name = src.name
    if cfg.max_prompts is not None:
        if cfg.max_prompts < 1:
            raise ConfigError("max_prompts", f"{cfg.max_prompts} must be >= 1 (or null for all)")
        convs = convs[: cfg.max_prompts]
    return name, convs


def validate(cfg: GenerateConfig) -> tuple[str, list[Conversation], SteeringSetup]:
    """Everything checkable before the model loads."""
    check_score_mode(cfg.score_mode, "score_mode")
    check_calibration(cfg, prefix="")
    name, convs = load_conversations_of(cfg)
    setup = steering_setup(cfg)
    check_monitored(cfg)
    return name, convs, setup


# ------------------------------------------------------------------------------------------------ scoring


def _records(lm: LoadedModel, convs: list[Conversation], gens: list[MonitoredGeneration],
             vectors: list[TraitVector], cfg: GenerateConfig, condition: str, source: str) -> list[dict[str, Any]]:
    _, columns = vectors_by_layer(vectors)
    out = []
    for conv, g in zip(convs, gens, strict=True):
        item = TextItem(f"{conv.id}/{condition}", conv.prompt, conv.system_prompt, g.text)
        rec = build_record(item, decode_tokens(lm.tokenizer, g.scored.token_ids), g.scored, vectors, columns,
                           model=lm.name, source=source, score_mode=cfg.score_mode, centered=False,
                           clean_massive=cfg.clean_massive)
        rec.update(condition=condition, conversation=list(conv.messages))
        out.append(rec)
    return out


def _mean_response(rec: dict[str, Any], trait: str, layer: int) -> float:
    s = response_scores(rec, trait, layer)
    s = s[~torch.isnan(s)]
    return float(s.mean()) if s.numel() else float("nan")


def shift_rows(plain: list[dict], steered: list[dict], vectors: list[TraitVector], seed: int) -> list[dict]:
    """Per monitored trait x layer: mean response score per prompt, unsteered vs steered, paired over prompts
    (``per_prompt`` keeps both lists for the side-by-side table)."""
    rows = []
    for tv in vectors:
        before = [_mean_response(r, tv.trait, tv.layer) for r in plain]
        after = [_mean_response(r, tv.trait, tv.layer) for r in steered]
        s = paired_bootstrap(before, after, seed=seed)
        rows.append({"trait": tv.trait, "layer": tv.layer, "unsteered": _nanmean(before), "steered": _nanmean(after),
                     "shift": s.mean, "low": s.low, "high": s.high, "n": s.n, "excludes_zero": s.excludes_zero,
                     "per_prompt": {"unsteered": before, "steered": after}})
    return rows


def _nanmean(values: list[float]) -> float:
    ok = [v for v in values if math.isfinite(v)]
    return sum(ok) / len(ok) if ok else float("nan")


# ------------------------------------------------------------------------------------------------ logging


def _r(x: float, digits: int = 4) -> float | None:
    return round(x, digits) if math.isfinite(x) else None


def verdict(setup: SteeringSetup, shifts: list[dict], n_prompts: int, score_mode: str) -> str:
    lines = [f"Steered {setup.describe()} on {n_prompts} prompt(s); {score_mode} scores, mean over response tokens.",
             "", "| monitored | unsteered | steered | shift [95% CI] | n | |", "|---|---|---|---|---|---|"]
    for s in shifts:
        ci = f"[{s['low']:+.3f}, {s['high']:+.3f}]" if math.isfinite(s["low"]) else "[undefined: n < 2]"
        call = "interval excludes 0" if s["excludes_zero"] else "noise: interval includes 0 or is undefined"
        lines.append(f"| {s['trait']} L{s['layer']} | {s['unsteered']:+.3f} | {s['steered']:+.3f} | "
                     f"{s['shift']:+.3f} {ci} | {s['n']} | {call} |")
    return "\n".join(lines) + "\n"


def _log(run: JobRun, cfg: GenerateConfig, setup: SteeringSetup, records: dict[str, list[dict]],
         shifts: list[dict], pairs: list[dict], source: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        both = [r for c in CONDITIONS for r in records[c]]
        write_views(Path(tmp), both, title=f"{source} · {setup.describe()} · {cfg.score_mode}",
                    max_figures=2 * len(pairs))
        for i, v in enumerate(setup.vectors):  # exactly what was applied, loadable with SteeringVector.load
            v.save(Path(tmp) / "steering" / f"vector_{i}.safetensors")
        run.log_artifacts(tmp)
    side: dict[str, list] = {k: [p[k] for p in pairs] for k in ("prompt_id", "prompt", "unsteered", "steered")}
    for s in shifts:
        for cond in CONDITIONS:
            side[f"{s['trait']} L{s['layer']} {cond}"] = [_r(x) for x in s["per_prompt"][cond]]
    run.log_table(side, f"{TABLES}/side_by_side.json")
    cols = ("trait", "layer", "unsteered", "steered", "shift", "low", "high", "n", "excludes_zero")
    run.log_table({k: [_r(s[k]) if isinstance(s[k], float) else s[k] for s in shifts] for k in cols},
                  f"{TABLES}/shift.json")
    names = {"unsteered": "unsteered_score", "steered": "steered_score", "shift": "shift", "low": "shift_low",
             "high": "shift_high"}
    for s in shifts:  # per-layer series, step = layer; n beside every value
        metrics = {layer_metric(f"{name}/{s['trait']}"): _r(s[k]) for k, name in names.items()}
        metrics = {k: v for k, v in metrics.items() if v is not None}
        metrics[layer_metric(f"n/{s['trait']}")] = s["n"]
        run.log_metrics(metrics, step=s["layer"])
    run.log_metric("n_prompts", len(pairs))
    note = verdict(setup, shifts, len(pairs), cfg.score_mode)
    run.set_tag("mlflow.note.content", note)
    run.log_text(note, "verdict.md")


# ---------------------------------------------------------------------------------------------------- run


def run_generate(cfg: GenerateConfig, parent_run_id: str | None = None,
                 lm: LoadedModel | None = None) -> GenerateResult:
    source, convs, setup = validate(cfg)
    lm = lm or load_model(cfg.model)
    monitored = monitored_vectors(cfg, setup, lm)
    texts = [conversation_text(lm, c.messages) for c in convs]
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("tracking", "force", "model")}
    key = content_hash("generate-v1", model_key(lm), texts, settings, vector_keys(monitored),
                       [(v.provenance(), {k: t.tolist() for k, t in v.directions.items()}) for v in setup.vectors])
    steered_traits = sorted({v.trait or v.label for v in setup.vectors})
    tags = {"traitlab.stage": "generate", **model_tags(cfg.model), "trait": ",".join(steered_traits)[:5000],
            "mode": setup.mode, "coefficient": str(setup.coefficient), "steering": setup.describe()[:5000],
            "monitor": ",".join(sorted({tv.label for tv in monitored}))[:5000], "prompt_set": source,
            "layers": ",".join(str(lyr) for lyr in sorted({lyr for v in setup.vectors for lyr in v.layers})),
            "component": setup.component, "score_mode": cfg.score_mode,
            "vector_runs": ",".join(sorted({v.source_run or "file" for v in setup.vectors}))[:5000]}
    run_name = cfg.tracking.run_name or f"generate-{steered_traits[0].split('/')[-1]}-{setup.mode}"
    with stage_run(cfg, job_key=key, run_name=run_name, tags=tags, parent_run_id=parent_run_id) as run:
        result = GenerateResult(run.run_id, run.skipped, setup.describe())
        if run.skipped:
            return result
        set_cap_thresholds(lm, setup, cfg.cap.quantile, experiment=cfg.tracking.experiment, uri=cfg.tracking.uri)
        component = monitor_component(cfg, setup)  # the calibration covers the component the scores come from
        clean_for_scoring(run, lm, monitored, [TextItem(c.id, c.prompt, c.system_prompt) for c in convs],
                          calibration=cfg.calibration, clean=cfg.clean_massive, centered=False,
                          component=component, massive=cfg.massive, batch_size=cfg.generation.batch_size)
        stacked, _ = vectors_by_layer(monitored)
        gen = asdict(cfg.generation)
        plain = generate_monitored(lm, texts, stacked, component=component, seed=cfg.seed, **gen)
        steered = generate_monitored(lm, texts, stacked, component=component, seed=cfg.seed,
                                     steering=lambda start: setup.apply(lm, start=start), **gen)
        result.records = {"unsteered": _records(lm, convs, plain, monitored, cfg, "unsteered", source),
                          "steered": _records(lm, convs, steered, monitored, cfg, "steered", source)}
        result.pairs = [{"prompt_id": c.id, "prompt": c.prompt, "unsteered": p.text, "steered": s.text}
                        for c, p, s in zip(convs, plain, steered, strict=True)]
        result.shifts = shift_rows(result.records["unsteered"], result.records["steered"], monitored, cfg.seed)
        _log(run, cfg, setup, result.records, result.shifts, result.pairs, source)
        for s in result.shifts:
            log.info("%s L%d: %+.4f -> %+.4f, shift %+.4f [%+.4f, %+.4f] (n=%d prompts)", s["trait"], s["layer"],
                     s["unsteered"], s["steered"], s["shift"], s["low"], s["high"], s["n"])
        return result
