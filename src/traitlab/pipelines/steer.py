"""Stage 2: validate trait vectors by steering them, judged by an LLM, with a coherence-gated coefficient search.

Flow (mode=search): validate everything checkable without the model (trait, steering.json, judge reachable,
layer syntax, search settings, vectors present in MLflow) -> load the model -> baselines, judged the same way
as every steered response: unsteered and *prompted* (a system prompt asking for the trait, so a reader sees
whether steering beats simply asking) -> per layer base = median ||h_layer|| / ||v|| on the steering questions
-> one Optuna study per (vector, layer) -> rounds of: ask candidates from every layer's study, generate ALL of
them as ONE batch (rows = candidate x question, PerSampleSteering), judge OUTSIDE the hooks (an hf_local judge
is the same in-process model), tell -> per layer the best coherent coefficient -> MLflow.

Other modes: `baseline` (the two baselines only), `ablation` (project the direction out at each layer, with
and without the trait prompt, and measure the trait score change) and `rescore` (re-judge the responses
table of an earlier steer run with the current judge prompts; no steered model).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from traitlab import faults
from traitlab.config.schema import GenerationConfig
from traitlab.config.steer import MODES, SAMPLERS, JudgeConfig, SteerConfig
from traitlab.config.trait_overrides import apply_lookup_settings
from traitlab.core.components import COMPONENTS, component_dim
from traitlab.core.hooks import AblationHook, MultiLayerCapture, PerSampleSteering
from traitlab.core.layers import LayerSpecError, parse_layers
from traitlab.core.positions import parse_position
from traitlab.data import Example, TraitDataset, load_trait, resolve_trait_dir
from traitlab.errors import ConfigError, DataError
from traitlab.io import content_hash, read_json
from traitlab.models.chat import format_prompt
from traitlab.models.encoding import encode, length_sorted_batches, pad_id_of, padded_inputs
from traitlab.models.generation import HookFactory, generate_texts
from traitlab.models.identity import VARIANT_HINT, identity_of, model_tags, vectors_key
from traitlab.models.loading import LoadedModel, load_model
from traitlab.paths import outputs_dir
from traitlab.pipelines import coef_search as cs
from traitlab.pipelines.common import model_key, responses_for
from traitlab.tracking.artifacts import FIGURES, TABLES, slug
from traitlab.tracking.registry import VectorRef, best_vector, fetch_vector, find_vectors
from traitlab.tracking.runs import JobRun, job_run

log = logging.getLogger(__name__)

RESPONSES_TABLE = f"{TABLES}/responses.json"
SUMMARY_TABLE = f"{TABLES}/steering_summary.json"
TRIALS_TABLE = f"{TABLES}/optuna_trials.json"
STUDIES_FILE = "optuna/studies.json"
# Judge settings that change a score (retries, timeouts, concurrency and cache location do not).
_JUDGE_SEMANTIC = ("backend", "model", "base_url", "min_weight", "top_logprobs", "scale_max", "relevance_check",
                   "perplexity_combine", "ppl_min", "ppl_max")


# ------------------------------------------------------------------------------------------- results


@dataclass
class LayerResult:
    layer: int
    study: str
    activation_norm: float
    base_coefficient: float
    start_coefficient: float
    trials: list[dict[str, Any]] = field(default_factory=list)  # coefficient, trait, coherence, delta, feasible
    best: dict[str, Any] | None = None                          # the best coherent trial's row, if any


@dataclass
class SteerResult:
    run_id: str
    skipped: bool
    trait: str
    mode: str
    layers: list[int] = field(default_factory=list)
    baselines: dict[str, dict[str, float | None]] = field(default_factory=dict)  # unsteered / prompted
    per_layer: dict[int, LayerResult] = field(default_factory=dict)
    ablation: dict[int, dict[str, float | None]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)    # every judged response
    threshold: float = 77.0
    direction: int = 1

    @property
    def prompted_delta(self) -> float | None:
        """What simply asking for the trait achieves, on the same scale as a steering delta."""
        b, p = self.baselines.get("unsteered", {}).get("trait"), self.baselines.get("prompted", {}).get("trait")
        return None if b is None or p is None else self.direction * (p - b)

    @property
    def best_layer(self) -> int | None:
        scored = {lyr: r.best["delta"] for lyr, r in self.per_layer.items() if r.best}
        return max(scored, key=scored.get) if scored else None

    def summary_table(self) -> str:
        """Markdown: per layer the best coherent coefficient beside both baselines."""
        b, p = self.baselines.get("unsteered", {}), self.baselines.get("prompted", {})
        lines = [f"unsteered trait {_fmt(b.get('trait'))} (coherence {_fmt(b.get('coherence'))}), "
                 f"prompted trait {_fmt(p.get('trait'))} (coherence {_fmt(p.get('coherence'))}); "
                 f"coherence threshold {self.threshold:g}", "",
                 "| layer | base coef | trials | coherent | best coef | trait | coherence | delta | prompted delta |",
                 "|---|---|---|---|---|---|---|---|---|"]
        prompted_delta = self.prompted_delta
        for lyr in sorted(self.per_layer):
            r = self.per_layer[lyr]
            best = r.best or {}
            lines.append(f"| {lyr} | {_fmt(r.base_coefficient)} | {len(r.trials)} | "
                         f"{sum(t['feasible'] for t in r.trials)} | {_fmt(best.get('coefficient'), '.1f')} | "
                         f"{_fmt(best.get('trait'))} | {_fmt(best.get('coherence'))} | {_fmt(best.get('delta'))} | "
                         f"{_fmt(prompted_delta)} |")
        for lyr in sorted(self.ablation):
            a = self.ablation[lyr]
            lines.append(f"| {lyr} (ablated) | | | | | {_fmt(a.get('ablated_trait'))} | "
                         f"{_fmt(a.get('ablated_coherence'))} | {_fmt(a.get('ablation_delta'))} | "
                         f"{_fmt(a.get('ablation_prompted_delta'))} |")
        return "\n".join(lines)


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def mean_or_none(values: Sequence[float | None]) -> float | None:
    got = [float(v) for v in values if v is not None]
    return sum(got) / len(got) if got else None


# ---------------------------------------------------------------------------------------- validation


@dataclass
class Prepared:
    """What validation found: everything the run needs that does not need the model."""

    trait: TraitDataset
    questions: list[str]
    direction: int
    prompted_system: str
    judge_cfg: dict[str, Any]
    judge_id: str
    refs: list[VectorRef] = field(default_factory=list)


def judge_config(cfg: JudgeConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items()}


def _check_settings(cfg: SteerConfig) -> None:
    s = cfg.steering
    if cfg.mode not in MODES:
        raise ConfigError("mode", f"'{cfg.mode}' is not one of {', '.join(MODES)}")
    if s.sampler not in SAMPLERS:
        raise ConfigError("steering.sampler", f"'{s.sampler}' is not one of {', '.join(SAMPLERS)}")
    if not 0.0 <= s.threshold <= 100.0:
        raise ConfigError("steering.threshold", f"{s.threshold} is not in 0..100 (judge scores are 0-100)")
    sp = s.search_space
    if not sp.low > 0 or not sp.high > 0:
        raise ConfigError("steering.search_space", f"low={sp.low} and high={sp.high} must be > 0 (coefficient "
                                                   "magnitudes; the sign comes from steering.json's direction)")
    if sp.low >= sp.high:
        raise ConfigError("steering.search_space", f"bounds are reversed or empty: low={sp.low} >= high={sp.high}")
    for key, value, ok, expected in (
        ("steering.steps", s.steps, s.steps >= 1, ">= 1"),
        ("steering.trials_per_step", s.trials_per_step, s.trials_per_step >= 1, ">= 1"),
        ("steering.start_mult", s.start_mult, s.start_mult > 0, "> 0"),
        ("steering.up_mult", s.up_mult, s.up_mult > 1, "> 1"),
        ("steering.down_mult", s.down_mult, 0 < s.down_mult < 1, "in (0, 1)"),
        ("steering.momentum", s.momentum, 0 <= s.momentum < 1, "in [0, 1)"),
        ("steering.max_new_tokens", s.max_new_tokens, s.max_new_tokens >= 1, ">= 1"),
        ("steering.batch_size", s.batch_size, s.batch_size >= 1, ">= 1"),
        ("steering.tpe_startup_trials", s.tpe_startup_trials, s.tpe_startup_trials >= 0, ">= 0"),
        ("steering.study.heartbeat_interval", s.study.heartbeat_interval, s.study.heartbeat_interval >= 1, ">= 1"),
        ("steering.study.grace_period", s.study.grace_period,
         s.study.grace_period > s.study.heartbeat_interval, "> heartbeat_interval"),
    ):
        if not ok:
            raise ConfigError(key, f"{value} must be {expected}")
    if s.n_questions is not None and s.n_questions < 1:
        raise ConfigError("steering.n_questions", f"{s.n_questions} must be >= 1 or null (all questions)")
    if cfg.component.name not in COMPONENTS:
        raise ConfigError("component", f"'{cfg.component.name}' is not one of {', '.join(COMPONENTS)}")
    parse_position(cfg.position.spec)
    if cfg.mode in ("search", "ablation"):
        try:  # syntax now; the range once the model's depth is known
            parse_layers(cfg.layers, 10_000, best=0)
        except LayerSpecError as e:
            raise ConfigError("layers", str(e).split("; valid layers are")[0]) from None


def _prompted_system(cfg: SteerConfig, trait: TraitDataset, direction: int) -> str:
    """The prompted baseline's system prompt: configured, else the trait's own first one for the steered
    direction, else one written from the definition."""
    if cfg.steering.prompted_system_prompt:
        return cfg.steering.prompted_system_prompt
    side = trait.positive if direction > 0 else trait.negative
    for e in side:
        if e.system_prompt:
            return e.system_prompt
    what = trait.definition.strip() if trait.definition else trait.name
    verb = "Strongly display" if direction > 0 else "Avoid any sign of"
    return f"{verb} this trait in your answer: {trait.name}. {what}"


def judge_identity(jcfg: dict[str, Any], trait: TraitDataset) -> str:
    """Hash of everything that changes a judge score: semantic settings and the prompt texts used."""
    from traitlab.judge.factory import prompt_texts

    spec = trait.steering
    texts = prompt_texts(jcfg, eval_prompt=spec.eval_prompt if spec else None, trait=trait.qualified_name)
    semantic = {k: jcfg.get(k) for k in _JUDGE_SEMANTIC}
    if jcfg.get("rubric", "trait") != "trait":  # only then: studies judged by the default rubric keep their names
        semantic["rubric"] = jcfg["rubric"]
    return content_hash("judge-id-v1", semantic, texts, trait.definition or "")


def _missing_vectors_error(cfg: SteerConfig, trait: str, what: str) -> ConfigError:
    have = find_vectors(trait, cfg.model, experiment=cfg.tracking.experiment, uri=cfg.tracking.uri)
    kinds = sorted({(r.method, r.component, r.position) for r in have})
    avail = "; ".join(f"method={m} component={c} position={p!r}" for m, c, p in kinds) or "none"
    return ConfigError("method/component/position",
                       f"no extracted vectors {what} for trait {trait} on model {vectors_key(cfg.model)} in "
                       f"experiment '{cfg.tracking.experiment}' (available: {avail}); run launchers/extract.py "
                       f"trait={trait} method={cfg.method.name} first, or pick an available one"
                       f"{VARIANT_HINT if not have else ''}")


def validate_inputs(cfg: SteerConfig) -> Prepared:
    """Everything checkable before the model loads; every failure is a one-line error."""
    from traitlab.judge import make_judge

    _check_settings(cfg)
    trait = load_trait(resolve_trait_dir(cfg.trait.name, cfg.trait.path))
    spec = trait.steering
    if spec is None or not spec.questions:
        raise DataError(trait.path / "steering.json", "needs a non-empty \"questions\" list to steer on "
                                                      "(questions that do not already show the trait)")
    n = cfg.steering.n_questions
    questions = list(spec.questions[:n] if n else spec.questions)
    jcfg = judge_config(cfg.judge)
    if jcfg["backend"] == "perplexity":
        raise ConfigError("judge.backend", "perplexity scores coherence only; steering needs a trait score: use "
                                           "openai, openai_compatible or hf_local (optionally with "
                                           "judge.perplexity_combine=min, as in judge=perplexity)")
    if jcfg.get("rubric") == "axbench" and spec.direction < 0:
        raise ConfigError("judge.rubric", f"axbench rewards the concept being present, but {trait.path}/steering.json "
                                          "steers away from the trait (direction negative); use judge.rubric=trait")
    judge = make_judge(jcfg)  # checks keys, prompt files and templates
    if cfg.mode != "rescore":  # re-scoring reads the judge cache: the judge's server need not be up
        judge.validate()      # key present, server reachable
    check = getattr(judge, "check_trait_prompt", None) or getattr(getattr(judge, "judge", None),
                                                                  "check_trait_prompt", None)
    if check is not None:
        check(spec.eval_prompt, trait.name)
    prep = Prepared(trait, questions, spec.direction, _prompted_system(cfg, trait, spec.direction), jcfg,
                    judge_identity(jcfg, trait))
    if cfg.mode in ("search", "ablation"):
        prep.refs = find_vectors(trait.qualified_name, cfg.model, method=cfg.method.name,
                                 component=cfg.component.name, position=cfg.position.spec,
                                 experiment=cfg.tracking.experiment, uri=cfg.tracking.uri)
        if not prep.refs:
            raise _missing_vectors_error(cfg, trait.qualified_name,
                                         f"(method={cfg.method.name}, component={cfg.component.name}, "
                                         f"position={cfg.position.spec!r})")
    return prep


def resolve_layers(cfg: SteerConfig, prep: Prepared, n_layers: int) -> dict[int, VectorRef]:
    """The requested layers, each with its vector; a requested layer without a vector is an error."""
    by_layer = {r.layer: r for r in prep.refs}
    best = None
    if "best" in str(cfg.layers):
        ref = best_vector(prep.trait.qualified_name, cfg.model, experiment=cfg.tracking.experiment,
                          uri=cfg.tracking.uri, method=cfg.method.name, component=cfg.component.name,
                          position=cfg.position.spec)
        best = ref.layer if ref else None
    layers = parse_layers(cfg.layers, n_layers, best=best)
    missing = [lyr for lyr in layers if lyr not in by_layer]
    if missing:
        raise ConfigError("layers", f"{cfg.layers!r} asks for layers {_ranges(missing)} that have no extracted "
                                    f"vector (method={cfg.method.name}, component={cfg.component.name}, "
                                    f"position={cfg.position.spec!r}); vectors exist for layers "
                                    f"{_ranges(sorted(by_layer))}: pass layers='{_ranges(sorted(by_layer))}' or "
                                    f"extract those layers first")
    return {lyr: by_layer[lyr] for lyr in layers}


def _ranges(layers: Sequence[int]) -> str:
    out, start, prev = [], None, None
    for x in list(layers) + [None]:
        if start is not None and (x is None or x != prev + 1):
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if x is not None and start is None:
            start = x
        prev = x
    return ",".join(out)


def build_judge(jcfg: dict[str, Any], lm: LoadedModel | None) -> Any:
    """The judge; an in-process judge (or perplexity scorer) reuses the loaded model when it is the same one."""
    from traitlab.judge import make_judge

    same = lm is not None and (jcfg["backend"] != "hf_local"
                               or identity_of(jcfg.get("model") or "smollm2_135m").key == lm.identity.key)
    return make_judge(jcfg, model=lm if same else None)


# ---------------------------------------------------------------------------------------- generation


def _gen(cfg: SteerConfig) -> GenerationConfig:
    s = cfg.steering
    return GenerationConfig(max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, do_sample=s.do_sample,
                            temperature=s.temperature, top_p=s.top_p)


def _per_row(hook: PerSampleSteering) -> HookFactory:
    @contextmanager
    def factory(rows: list[int]) -> Iterator[None]:
        with hook, hook.rows(rows):  # rows: the original row indices of this (possibly OOM-split) sub-batch
            yield

    return factory


def generate_steered(lm: LoadedModel, prompt_texts: Sequence[str],
                     settings: Sequence[Sequence[tuple[int, torch.Tensor, float]] | None], *,
                     component: str = "residual", gen: GenerationConfig | None = None, seed: int = 0) -> list[list[str]]:
    """Responses [setting][prompt] from ONE batched generate: row = setting x prompt, each row steered by its
    setting's (layer, vector, coefficient) list (None: unsteered) through PerSampleSteering."""
    gen = gen or GenerationConfig()
    n = len(prompt_texts)
    texts = [t for _ in settings for t in prompt_texts]
    configs = [(layer, v, float(coef), si * n + q) for si, s in enumerate(settings) if s
               for layer, v, coef in s for q in range(n)]
    hooks = _per_row(PerSampleSteering(lm.model, configs, batch_size=len(texts), component=component)) \
        if configs else None
    gens = generate_texts(lm, texts, max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size, seed=seed,
                          do_sample=gen.do_sample, temperature=gen.temperature, top_p=gen.top_p, hooks=hooks,
                          desc=None)
    return [[g.text for g in gens[si * n:(si + 1) * n]] for si in range(len(settings))]


@torch.inference_mode()
def activation_norms(lm: LoadedModel, prompt_texts: Sequence[str], layers: Sequence[int],
                     component: str = "residual") -> dict[int, float]:
    """Median per-token ||h|| of the component at each layer over the prompts' real tokens.

    The median, because the first token of many models carries a massive activation (SmolLM2: ~25000
    against ~150 for the rest) that a mean would let set the steering scale.
    """
    enc = [encode(lm.tokenizer, t) for t in prompt_texts]
    norms: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for rows in length_sorted_batches([e.seq_len for e in enc], 16):
        inputs = padded_inputs([enc[i] for i in rows], pad_id_of(lm.tokenizer), lm.device)
        cap = MultiLayerCapture(lm.model, layers, component=component, pool="none", stop_after_last=True)
        with cap:
            lm.model(**inputs, use_cache=False)
        real = inputs["attention_mask"].bool().cpu()
        for layer in layers:
            norms[layer].append(cap.get(layer).cpu().norm(dim=-1)[real])
    return {layer: float(torch.cat(v).median()) for layer, v in norms.items()}


# ------------------------------------------------------------------------------------------- judging


def judge_rows(judge: Any, trait: TraitDataset, questions: Sequence[str], responses: Sequence[str]) -> list[Any]:
    """JudgeScores for (question, response) pairs; called outside every hook context."""
    from traitlab.judge import ScoreRequest

    spec = trait.steering
    reqs = [ScoreRequest(q, r, trait.name, trait.definition or trait.name, spec.eval_prompt if spec else None)
            for q, r in zip(questions, responses, strict=True)]
    return judge.score(reqs)


def _row(condition: str, qi: int, question: str, system: str | None, response: str, score: Any, *,
         layer: int | None = None, coefficient: float = 0.0, trial: int | None = None, study: str = "") -> dict:
    return {"condition": condition, "layer": layer, "coefficient": coefficient, "trial": trial, "study": study,
            "question_index": qi, "question": question, "system_prompt": system, "response": response,
            "trait_score": score.trait if score is not None else None,
            "coherence": score.coherence if score is not None else None}


def baselines(lm: LoadedModel, cfg: SteerConfig, prep: Prepared, judge: Any) -> tuple[dict, list[dict]]:
    """Unsteered and prompted responses (cached generation), judged like every steered one."""
    qs = prep.questions
    examples = [Example(q) for q in qs] + [Example(q, prep.prompted_system) for q in qs]
    responses = responses_for(lm, examples, _gen(cfg), cfg.seed, use_provided=False, desc="baselines")
    scores = judge_rows(judge, prep.trait, qs + qs, responses)
    rows = [_row("unsteered" if i < len(qs) else "prompted", i % len(qs), qs[i % len(qs)],
                 None if i < len(qs) else prep.prompted_system, r, s)
            for i, (r, s) in enumerate(zip(responses, scores, strict=True))]
    return summarize_baselines(rows), rows


def summarize_baselines(rows: Sequence[dict]) -> dict[str, dict[str, float | None]]:
    out = {}
    for cond in ("unsteered", "prompted"):
        sel = [r for r in rows if r["condition"] == cond]
        out[cond] = {"trait": mean_or_none([r["trait_score"] for r in sel]),
                     "coherence": mean_or_none([r["coherence"] for r in sel])}
    return out


# --------------------------------------------------------------------------------------------- search


def study_storage_path(cfg: SteerConfig, trait: TraitDataset) -> Path:
    root = Path(cfg.steering.study.storage_dir) if cfg.steering.study.storage_dir else outputs_dir() / "studies"
    return root / slug(identity_of(cfg.model).key) / f"{trait.qualified_name}.db"


def search_settings(cfg: SteerConfig, prep: Prepared, lm_key: str) -> dict[str, Any]:
    """What decides a trial's value: a study with other settings would not be comparable (steps excluded,
    so asking for more steps continues the same study)."""
    s = cfg.steering
    out = {"sampler": s.sampler, "threshold": s.threshold, "trials_per_step": s.trials_per_step,
           "start_mult": s.start_mult, "search_space": asdict(s.search_space), "questions": prep.questions,
           "generation": asdict(_gen(cfg)) | {"batch_size": None}, "seed": cfg.seed, "direction": prep.direction,
           "judge": prep.judge_id, "model": lm_key}
    if s.sampler == "adaptive":
        out.update(up_mult=s.up_mult, down_mult=s.down_mult, momentum=s.momentum)
    elif s.sampler == "tpe":
        out["tpe_startup_trials"] = s.tpe_startup_trials
    else:
        out["steps"] = s.steps  # the grid itself depends on how many points
    return out


def study_name(cfg: SteerConfig, ref: VectorRef, settings_hash: str) -> str:
    return (f"{ref.method}.{ref.component}.{slug(ref.position)}.{ref.run_id[:12]}.L{ref.layer:03d}."
            f"{settings_hash[:10]}")


def _search_evaluator(lm: LoadedModel, cfg: SteerConfig, prep: Prepared, judge: Any) -> cs.Evaluate:
    texts = [format_prompt(lm.tokenizer, q, None, lm.use_chat_template) for q in prep.questions]
    n = len(texts)
    counter = {"round": 0}

    def evaluate(cands: list[cs.Candidate]) -> list[cs.Outcome]:
        counter["round"] += 1
        settings = [[(c.layer, c.vector, c.coefficient)] for c in cands]
        responses = generate_steered(lm, texts, settings, component=cfg.component.name, gen=_gen(cfg),
                                     seed=cfg.seed)
        flat = [r for rs in responses for r in rs]
        scores = judge_rows(judge, prep.trait, prep.questions * len(cands), flat)  # hooks are all removed here
        outcomes = []
        for ci, c in enumerate(cands):
            sc = scores[ci * n:(ci + 1) * n]
            rows = [{"question_index": qi, "response": responses[ci][qi], "trait": s.trait, "coherence": s.coherence}
                    for qi, s in enumerate(sc)]
            out = cs.Outcome(mean_or_none([s.trait for s in sc]), mean_or_none([s.coherence for s in sc]),
                             {"responses": rows})
            log.info("round %d  layer %d  coef %.3g  trait %s  coherence %s", counter["round"], c.layer,
                     c.coefficient, _fmt(out.trait), _fmt(out.coherence))
            outcomes.append(out)
        return outcomes

    return evaluate


def _layer_result(s: cs.SearchStudy, threshold: float) -> LayerResult:
    attrs = s.study.user_attrs
    res = LayerResult(s.layer, s.study.study_name, attrs.get("activation_norm", float("nan")),
                      attrs.get("base_coefficient", float("nan")), attrs.get(cs.START_ATTR, float("nan")))
    for t in cs.finished_trials(s.study):
        res.trials.append({"number": t.number, "coefficient": t.user_attrs.get("coefficient_signed"),
                           "trait": t.user_attrs.get("trait"), "coherence": t.user_attrs.get("coherence"),
                           "delta": t.value, "feasible": cs.is_feasible(t), "state": t.state.name})
    best = cs.best_trial(s.study)
    if best is not None:
        res.best = next(r for r in res.trials if r["number"] == best.number)
    return res


def run_search_mode(lm: LoadedModel, cfg: SteerConfig, prep: Prepared, judge: Any, vectors: dict[int, Any],
                    refs: dict[int, VectorRef], base_trait: float) -> tuple[dict[int, LayerResult], list[dict], dict]:
    s = cfg.steering
    layers = sorted(vectors)
    texts = [format_prompt(lm.tokenizer, q, None, lm.use_chat_template) for q in prep.questions]
    norms = activation_norms(lm, texts, layers, cfg.component.name)
    settings = search_settings(cfg, prep, model_key(lm))
    settings_hash = content_hash("steer-study-v1", settings)
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
        sampler = cs.make_sampler(s.sampler, seed=cfg.seed + lyr, grid=grid, up_mult=s.up_mult,
                                  down_mult=s.down_mult, momentum=s.momentum, tpe_startup_trials=s.tpe_startup_trials)
        attrs = {cs.START_ATTR: start, "base_coefficient": base, "activation_norm": norms[lyr],
                 "vector_norm": float(v.norm()), "layer": lyr, "direction": prep.direction,
                 "vector_run_id": refs[lyr].run_id, "trait": prep.trait.qualified_name, "settings": settings_hash}
        name = study_name(cfg, refs[lyr], settings_hash)
        study = cs.open_study(storage, name, sampler, attrs,
                              enqueue={cs.COEF: start} if s.sampler == "tpe" else None)
        studies.append(cs.SearchStudy(name, lyr, study, target=target, low=lo, high=hi, log=s.search_space.log,
                                      direction=prep.direction, baseline=base_trait, vector=v))
    recovered = cs.recover_stale([x.study for x in studies], s.study.grace_period, s.study.heartbeat_interval)
    if recovered:
        log.info("re-queued %d trial(s) of an interrupted run", recovered)
    todo = sum(x.remaining() for x in studies)
    log.info("search: %d layer(s) x %d trial(s) (%d to run), %s sampler, studies in %s", len(studies), target, todo,
             s.sampler, path)
    cs.run_search(studies, _search_evaluator(lm, cfg, prep, judge), per_step=s.trials_per_step,
                  threshold=s.threshold, heartbeat_interval=s.study.heartbeat_interval,
                  on_round=lambda _rounds, _asked: faults.maybe_fail("trial"))
    per_layer = {x.layer: _layer_result(x, s.threshold) for x in studies}
    rows = []
    for x in studies:
        for t in cs.finished_trials(x.study):
            for r in t.user_attrs.get("responses", []):
                qi = int(r["question_index"])
                rows.append({"condition": "steered", "layer": x.layer,
                             "coefficient": t.user_attrs.get("coefficient_signed"), "trial": t.number,
                             "study": x.study.study_name, "question_index": qi, "question": prep.questions[qi],
                             "system_prompt": None, "response": r["response"], "trait_score": r["trait"],
                             "coherence": r["coherence"]})
    info = {"storage": str(path), "studies": {x.layer: x.study for x in studies}}
    return per_layer, rows, info


# ------------------------------------------------------------------------------------------- ablation


def run_ablation_mode(lm: LoadedModel, cfg: SteerConfig, prep: Prepared, judge: Any, vectors: dict[int, Any],
                      base: dict[str, dict[str, float | None]]) -> tuple[dict[int, dict], list[dict]]:
    """Project the direction out at each layer (one layer at a time) for unsteered and prompted questions."""
    qs = prep.questions
    texts = [format_prompt(lm.tokenizer, q, None, lm.use_chat_template) for q in qs] + \
            [format_prompt(lm.tokenizer, q, prep.prompted_system, lm.use_chat_template) for q in qs]
    gen = _gen(cfg)
    results, rows = {}, []
    for lyr in sorted(vectors):
        hook = AblationHook(lm.model, lyr, vectors[lyr], component=cfg.component.name)
        gens = generate_texts(lm, texts, max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size,
                              seed=cfg.seed, do_sample=gen.do_sample, temperature=gen.temperature, top_p=gen.top_p,
                              hooks=lambda rows_, h=hook: h, desc=None)
        responses = [g.text for g in gens]
        scores = judge_rows(judge, prep.trait, qs + qs, responses)
        n = len(qs)
        for i, (r, s) in enumerate(zip(responses, scores, strict=True)):
            rows.append(_row("ablated" if i < n else "ablated_prompted", i % n, qs[i % n],
                             None if i < n else prep.prompted_system, r, s, layer=lyr))
        results[lyr] = ablation_metrics(scores[:n], scores[n:], base)
        log.info("ablation layer %d: trait %s (unsteered %s), prompted %s (was %s)", lyr,
                 _fmt(results[lyr]["ablated_trait"]), _fmt(base["unsteered"]["trait"]),
                 _fmt(results[lyr]["ablated_prompted_trait"]), _fmt(base["prompted"]["trait"]))
    return results, rows


def ablation_metrics(plain: Sequence[Any], prompted: Sequence[Any], base: dict) -> dict[str, float | None]:
    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    out = {"ablated_trait": mean_or_none([s.trait for s in plain]),
           "ablated_coherence": mean_or_none([s.coherence for s in plain]),
           "ablated_prompted_trait": mean_or_none([s.trait for s in prompted]),
           "ablated_prompted_coherence": mean_or_none([s.coherence for s in prompted])}
    out["ablation_delta"] = diff(out["ablated_trait"], base["unsteered"]["trait"])
    out["ablation_prompted_delta"] = diff(out["ablated_prompted_trait"], base["prompted"]["trait"])
    return out


# -------------------------------------------------------------------------------------------- rescore


def find_source_run(cfg: SteerConfig, trait: str) -> Any:
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


def load_response_rows(cfg: SteerConfig, run_id: str) -> list[dict[str, Any]]:
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
            if r.get(k) is not None and not (isinstance(r[k], float) and math.isnan(r[k])):
                r[k] = int(r[k])
            else:
                r[k] = None
    return rows


def ablation_from_rows(rows: Sequence[dict], base: dict) -> dict[int, dict[str, float | None]]:
    """Ablation metrics recomputed from judged rows (re-scoring an ablation run)."""
    def scores(cond: str, layer: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(trait=r["trait_score"], coherence=r["coherence"]) for r in rows
                if r["condition"] == cond and r["layer"] == layer]

    layers = sorted({r["layer"] for r in rows if r["condition"] == "ablated" and r["layer"] is not None})
    return {lyr: ablation_metrics(scores("ablated", lyr), scores("ablated_prompted", lyr), base) for lyr in layers}


def rescore_rows(rows: list[dict], judge: Any, trait: TraitDataset) -> list[dict]:
    scores = judge_rows(judge, trait, [r["question"] for r in rows], [r["response"] or "" for r in rows])
    return [dict(r, trait_score=s.trait, coherence=s.coherence) for r, s in zip(rows, scores, strict=True)]


def layers_from_rows(rows: Sequence[dict], base_trait: float | None, direction: int,
                     threshold: float) -> dict[int, LayerResult]:
    """Per-layer trial summaries recomputed from judged response rows (rescore): the same rule as the search,
    mean over questions per trial, best = highest delta with mean coherence >= threshold."""
    out: dict[int, LayerResult] = {}
    trials: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        if r["condition"] == "steered" and r["layer"] is not None:
            trials.setdefault((r["layer"], r["trial"] if r["trial"] is not None else -1), []).append(r)
    for (lyr, num), rs in sorted(trials.items()):
        res = out.setdefault(lyr, LayerResult(lyr, rs[0].get("study") or "", float("nan"), float("nan"),
                                              float("nan")))
        trait, coh = mean_or_none([r["trait_score"] for r in rs]), mean_or_none([r["coherence"] for r in rs])
        delta = None if trait is None or base_trait is None else direction * (trait - base_trait)
        feasible = delta is not None and (coh if coh is not None else 0.0) >= threshold
        res.trials.append({"number": num, "coefficient": rs[0]["coefficient"], "trait": trait, "coherence": coh,
                           "delta": delta, "feasible": feasible, "state": "COMPLETE" if trait is not None else "FAIL"})
    for res in out.values():
        ok = [t for t in res.trials if t["feasible"]]
        res.best = max(ok, key=lambda t: t["delta"]) if ok else None
    return out


# -------------------------------------------------------------------------------------------- logging


def _log_rows(run: JobRun, rows: Sequence[dict]) -> None:
    if rows:
        cols = list(rows[0])
        run.log_table({c: [r.get(c) for r in rows] for c in cols}, RESPONSES_TABLE)


def _log_baselines(run: JobRun, base: dict, steps: Sequence[int]) -> None:
    metrics = {f"{'baseline' if k == 'unsteered' else 'prompted'}_{m}": v for k, d in base.items()
               for m, v in d.items() if v is not None}
    for step in steps:
        run.log_metrics(metrics, step=step)


def _log_layers(run: JobRun, res: SteerResult, base: dict) -> None:
    from traitlab.viz.figures import layer_curve_figure, steering_curve_figure

    b_trait = base["unsteered"]["trait"]
    for lyr, r in sorted(res.per_layer.items()):
        m = {"n_trials": len(r.trials), "n_coherent": sum(t["feasible"] for t in r.trials)}
        for k in ("activation_norm", "base_coefficient", "start_coefficient"):
            value = getattr(r, k)
            if not math.isnan(value):
                m[k] = value
        if r.best is not None:  # registry.steering_results reads these three names
            m.update(best_delta=r.best["delta"], best_coherence=r.best["coherence"],
                     best_coefficient=r.best["coefficient"], best_trait=r.best["trait"])
        run.log_metrics(m, step=lyr)
        points = [{"coef": t["coefficient"], "trait": t["trait"], "coherence": t["coherence"]}
                  for t in r.trials if t["coefficient"] is not None]
        if points:
            fig = steering_curve_figure(points, res.threshold, f"{res.trait} layer {lyr}",
                                        baselines={"unsteered": b_trait, "prompted": base["prompted"]["trait"]})
            run.log_figure(fig, f"{FIGURES}/steering_layer_{lyr:03d}.png")
    layers = sorted(res.per_layer)
    curves = {"best coherent delta": {lyr: res.per_layer[lyr].best["delta"] for lyr in layers
                                      if res.per_layer[lyr].best}}
    p, b = base["prompted"]["trait"], b_trait
    if res.prompted_delta is not None:
        curves["prompted (no steering)"] = {lyr: res.prompted_delta for lyr in layers}
    if any(curves.values()):
        run.log_figure(layer_curve_figure({k: v for k, v in curves.items() if v}, "trait delta"),
                       f"{FIGURES}/best_delta_by_layer.png")
    summary = {"layer": layers,
               "base_coefficient": [res.per_layer[lyr].base_coefficient for lyr in layers],
               "n_trials": [len(res.per_layer[lyr].trials) for lyr in layers],
               "n_coherent": [sum(t["feasible"] for t in res.per_layer[lyr].trials) for lyr in layers]}
    for k in ("coefficient", "trait", "coherence", "delta"):
        summary[f"best_{k}"] = [(res.per_layer[lyr].best or {}).get(k) for lyr in layers]
    summary["baseline_trait"] = [b] * len(layers)
    summary["prompted_trait"] = [p] * len(layers)
    run.log_table(summary, SUMMARY_TABLE)
    run.log_text(res.summary_table() + "\n", "steering_table.md")
    best = res.best_layer
    if best is not None:
        run.set_tag("best_layer", best)
        run.set_tag("best_coefficient", f"{res.per_layer[best].best['coefficient']:.6g}")


def _log_studies(run: JobRun, info: dict, per_layer: dict[int, LayerResult]) -> None:
    frames, summary = [], {"storage": info["storage"], "layers": {}}
    for lyr, study in sorted(info["studies"].items()):
        df = study.trials_dataframe(attrs=("number", "value", "datetime_start", "datetime_complete", "duration",
                                           "params", "user_attrs", "system_attrs", "state"))
        df = df.drop(columns=[c for c in df.columns if c == "user_attrs_responses"])
        df.insert(0, "layer", lyr)
        df.insert(0, "study", study.study_name)
        frames.append(df)
        best = cs.best_trial(study)
        summary["layers"][str(lyr)] = {
            "study": study.study_name, "n_trials": len(study.get_trials(deepcopy=False)),
            "user_attrs": study.user_attrs,
            "best_trial": None if best is None else {
                "number": best.number, "value": best.value, "params": best.params, "constraints": best.constraints,
                "user_attrs": {k: v for k, v in best.user_attrs.items() if k != "responses"}}}
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


# -------------------------------------------------------------------------------------------- the job


def job_key(cfg: SteerConfig, prep: Prepared, lm_key: str, refs: dict[int, VectorRef], extra: Any = None) -> str:
    s = cfg.steering
    return content_hash("steer-v1", cfg.mode, lm_key, prep.trait.fingerprint(), prep.questions, prep.direction,
                        prep.prompted_system, prep.judge_id, {lyr: r.run_id for lyr, r in refs.items()},
                        cfg.component.name, cfg.position.spec, cfg.method.name, asdict(s) | {"study": None}, cfg.seed,
                        extra)


def _tags(cfg: SteerConfig, prep: Prepared, model: dict[str, str], refs: dict[int, VectorRef]) -> dict[str, Any]:
    run_ids = sorted({r.run_id for r in refs.values()})
    return {"traitlab.stage": "steer", "traitlab.steer_mode": cfg.mode, "trait": prep.trait.qualified_name,
            **model, "method": cfg.method.name, "component": cfg.component.name,
            "position": cfg.position.spec, "traitlab.vector_run_id": ",".join(run_ids),
            "layers": ",".join(map(str, sorted(refs))), "judge": prep.judge_cfg["backend"],
            "sampler": cfg.steering.sampler, "direction": prep.direction}


def run_steer(cfg: SteerConfig, parent_run_id: str | None = None, lm: LoadedModel | None = None,
              judge: Any = None, command_line: Collection[str] | None = None) -> SteerResult:
    """`command_line`: config keys the user set; the trait's extraction method / position / component fill the
    others (None: a Python caller, whose non-default values count as set), so its vectors are found."""
    cfg = apply_lookup_settings(cfg, command_line)
    prep = validate_inputs(cfg)
    if cfg.mode == "rescore":
        return _run_rescore(cfg, prep, parent_run_id, judge)
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
    key = job_key(cfg, prep, model_key(lm), refs)
    run_name = cfg.tracking.run_name or f"steer-{cfg.mode}-{prep.trait.name}-{cfg.method.name}"
    res = SteerResult("", False, prep.trait.qualified_name, cfg.mode, sorted(refs), threshold=cfg.steering.threshold,
                      direction=prep.direction)
    with job_run(experiment=cfg.tracking.experiment, job_key=key, run_name=run_name, config=asdict(cfg),
                 tags=_tags(cfg, prep, model_tags(cfg.model), refs), parent_run_id=parent_run_id, force=cfg.force,
                 uri=cfg.tracking.uri) as run:
        res.run_id = run.run_id
        if run.skipped:
            res.skipped = True
            return res
        base, rows = baselines(lm, cfg, prep, judge)
        res.baselines = base
        log.info("baselines: unsteered trait %s coherence %s | prompted trait %s coherence %s",
                 _fmt(base["unsteered"]["trait"]), _fmt(base["unsteered"]["coherence"]),
                 _fmt(base["prompted"]["trait"]), _fmt(base["prompted"]["coherence"]))
        if cfg.mode == "search":
            if base["unsteered"]["trait"] is None:
                raise ConfigError("judge", "the judge gave no usable trait score for any unsteered response, so "
                                           "trait_delta has no baseline; check judge.min_weight / the judge model")
            res.per_layer, steered, info = run_search_mode(lm, cfg, prep, judge, vectors, refs,
                                                           base["unsteered"]["trait"])
            rows += steered
            _log_baselines(run, base, sorted(refs))
            _log_layers(run, res, base)
            _log_studies(run, info, res.per_layer)
        elif cfg.mode == "ablation":
            res.ablation, ablated = run_ablation_mode(lm, cfg, prep, judge, vectors, base)
            rows += ablated
            _log_baselines(run, base, sorted(refs))
            for lyr, m in res.ablation.items():
                run.log_metrics({k: v for k, v in m.items() if v is not None}, step=lyr)
            run.log_text(res.summary_table() + "\n", "steering_table.md")
        else:
            _log_baselines(run, base, [0])
            run.log_text(res.summary_table() + "\n", "steering_table.md")
        res.rows = rows
        _log_rows(run, rows)
    return res


def _run_rescore(cfg: SteerConfig, prep: Prepared, parent_run_id: str | None, judge: Any) -> SteerResult:
    source = find_source_run(cfg, prep.trait.qualified_name)
    tags = dict(source.data.tags)
    judge = judge or build_judge(prep.judge_cfg, None)
    key = content_hash("steer-rescore-v1", source.info.run_id, prep.judge_id, cfg.steering.threshold, prep.direction)
    run_tags = {k: tags[k] for k in ("trait", "model", "model_name", "vectors_model", "method", "component",
                                     "position", "traitlab.vector_run_id",
                                     "layers", "sampler", "direction") if k in tags}
    run_tags.update({"traitlab.stage": "steer", "traitlab.steer_mode": "rescore", "judge": prep.judge_cfg["backend"],
                     "traitlab.rescored_from": source.info.run_id})
    res = SteerResult("", False, prep.trait.qualified_name, "rescore", threshold=cfg.steering.threshold,
                      direction=prep.direction)
    with job_run(experiment=cfg.tracking.experiment, job_key=key,
                 run_name=cfg.tracking.run_name or f"steer-rescore-{prep.trait.name}", config=asdict(cfg),
                 tags=run_tags, parent_run_id=parent_run_id, force=cfg.force, uri=cfg.tracking.uri) as run:
        res.run_id = run.run_id
        if run.skipped:
            res.skipped = True
            return res
        rows = rescore_rows(load_response_rows(cfg, source.info.run_id), judge, prep.trait)
        base = summarize_baselines(rows)
        res.baselines, res.rows = base, rows
        res.per_layer = layers_from_rows(rows, base["unsteered"]["trait"], prep.direction, cfg.steering.threshold)
        res.ablation = ablation_from_rows(rows, base)
        res.layers = sorted(set(res.per_layer) | set(res.ablation))
        log.info("re-scored %d responses of run %s", len(rows), source.info.run_id)
        _log_baselines(run, base, res.layers or [0])
        if res.per_layer:
            _log_layers(run, res, base)
        for lyr, m in res.ablation.items():
            run.log_metrics({k: v for k, v in m.items() if v is not None}, step=lyr)
        if not res.per_layer:
            run.log_text(res.summary_table() + "\n", "steering_table.md")
        _log_rows(run, rows)
    return res
