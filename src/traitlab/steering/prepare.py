"""Stage 2 before the model loads: check the settings, the trait, the objective, the judge and the vectors, and
collect what the run needs (questions, prompted system prompt, held-out pairs). Every failure is a one-line
error naming the config key or file."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from traitlab.config.schema import ExtractionConfig, GenerationConfig
from traitlab.config.steer import MODES, OBJECTIVES, SAMPLERS, JudgeConfig, SteerConfig
from traitlab.core.components import COMPONENTS
from traitlab.core.layers import LayerSpecError, parse_layers
from traitlab.core.positions import parse_position
from traitlab.data import Example, TraitDataset, load_trait, resolve_trait_dir
from traitlab.errors import ConfigError, DataError
from traitlab.judge.factory import judge_identity
from traitlab.judge.text_scorers import TextScorer, make_text_scorer
from traitlab.models.batching import check_batch_size
from traitlab.models.identity import VARIANT_HINT, vectors_key
from traitlab.steering import coef_search as cs
from traitlab.steering.measures import (
    PROPENSITY,
    heldout_examples,
    measure_names,
    objective_measure,
)
from traitlab.tracking.registry import VectorRef, best_vector, extraction_params, find_vectors

log = logging.getLogger(__name__)


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
    objective: str                                   # the measure the search maximises
    threshold: float                                 # the coherence constraint, resolved (steering.threshold)
    scorer: TextScorer | None = None
    pair_examples: list[tuple[Example, Example, str]] = field(default_factory=list)  # held-out (pos, neg, source)
    split: dict[str, Any] = field(default_factory=dict)  # val_split / seed the held-out pairs came from
    refs: list[VectorRef] = field(default_factory=list)
    choice_items: list[Any] = field(default_factory=list)  # steering.capability's items (empty: off)
    choice_set: str = ""                                   # their set's name and fingerprint

    @property
    def judge_has_trait(self) -> bool:
        return self.judge_cfg["backend"] != "perplexity"

    @property
    def measures(self) -> list[str]:
        return measure_names(self.objective, self.judge_has_trait, self.scorer, bool(self.pair_examples))


def judge_config(cfg: JudgeConfig) -> dict[str, Any]:
    return dict(asdict(cfg))


def _check_settings(cfg: SteerConfig) -> None:
    s = cfg.steering
    if cfg.mode not in MODES:
        raise ConfigError("mode", f"'{cfg.mode}' is not one of {', '.join(MODES)}")
    if s.objective not in OBJECTIVES:
        raise ConfigError("steering.objective", f"'{s.objective}' is not one of {', '.join(OBJECTIVES)}")
    if s.sampler not in SAMPLERS:
        raise ConfigError("steering.sampler", f"'{s.sampler}' is not one of {', '.join(SAMPLERS)}")
    if s.threshold is not None and not 0.0 <= s.threshold <= 100.0:
        raise ConfigError("steering.threshold", f"{s.threshold} is not in 0..100 (coherence scores are 0-100)")
    sp = s.search_space
    if not sp.low > 0 or not sp.high > 0:
        raise ConfigError("steering.search_space", f"low={sp.low} and high={sp.high} must be > 0 (coefficient "
                                                   "magnitudes; the sign comes from steering.json's direction)")
    if sp.low >= sp.high:
        raise ConfigError("steering.search_space", f"bounds are reversed or empty: low={sp.low} >= high={sp.high}")
    p = s.propensity
    for key, value, ok, expected in (
        ("steering.steps", s.steps, s.steps >= 1, ">= 1"),
        ("steering.trials_per_step", s.trials_per_step, s.trials_per_step >= 1, ">= 1"),
        ("steering.start_mult", s.start_mult, s.start_mult > 0, "> 0"),
        ("steering.up_mult", s.up_mult, s.up_mult > 1, "> 1"),
        ("steering.down_mult", s.down_mult, 0 < s.down_mult < 1, "in (0, 1)"),
        ("steering.momentum", s.momentum, 0 <= s.momentum < 1, "in [0, 1)"),
        ("steering.max_new_tokens", s.max_new_tokens, s.max_new_tokens >= 1, ">= 1"),
        ("steering.bootstrap", s.bootstrap, s.bootstrap >= 100, ">= 100"),
        ("steering.propensity.batch_size", p.batch_size, p.batch_size >= 1, ">= 1"),
        ("steering.propensity.max_pairs", p.max_pairs, p.max_pairs is None or p.max_pairs >= 0, ">= 0 or null"),
        ("steering.propensity.max_response_tokens", p.max_response_tokens,
         p.max_response_tokens is None or p.max_response_tokens >= 1, ">= 1 or null"),
        ("steering.study.heartbeat_interval", s.study.heartbeat_interval, s.study.heartbeat_interval >= 1, ">= 1"),
        ("steering.study.grace_period", s.study.grace_period,
         s.study.grace_period > s.study.heartbeat_interval, "> heartbeat_interval"),
    ):
        if not ok:
            raise ConfigError(key, f"{value} must be {expected}")
    check_batch_size(s.batch_size, "steering.batch_size")
    if s.sampler == "tpe":
        cs.tpe_startup(s.steps * s.trials_per_step, s.tpe_startup_trials)  # checks the value, warns if too few
    if s.objective == PROPENSITY and p.max_pairs == 0:
        raise ConfigError("steering.propensity.max_pairs", "0 turns propensity off, but steering.objective is "
                                                            "propensity: give pairs or another objective")
    c = s.capability
    if c.enabled:
        from traitlab.models.multiple_choice import SCORINGS

        if c.scoring not in SCORINGS:
            raise ConfigError("steering.capability.scoring", f"'{c.scoring}' is not one of {', '.join(SCORINGS)}")
        if c.n_items is not None and c.n_items < 1:
            raise ConfigError("steering.capability.n_items", f"{c.n_items} must be >= 1 or null (all items)")
        if c.batch_size < 1:
            raise ConfigError("steering.capability.batch_size", f"{c.batch_size} must be >= 1")
    if s.max_capability_drop is not None:
        if not c.enabled:
            raise ConfigError("steering.max_capability_drop", "needs capability measured: set "
                                                               "steering.capability.set=starter (or .path=<file>)")
        if not 0.0 <= s.max_capability_drop <= 1.0:
            raise ConfigError("steering.max_capability_drop", f"{s.max_capability_drop} is not in 0..1 (a drop in "
                                                               "accuracy, e.g. 0.1 for 10 points)")
    e = s.ensemble
    for key, value, ok, expected in (
        ("steering.ensemble.trials", e.trials, e.trials >= 2, ">= 2"),
        ("steering.ensemble.popsize", e.popsize, e.popsize >= 4, ">= 4 (CMA-ES needs two parents)"),
        ("steering.ensemble.high", e.high, e.high > 0, "> 0"),
        ("steering.ensemble.start", e.start, e.start is None or 0 < e.start <= e.high, "in (0, high] or null"),
    ):
        if not ok:
            raise ConfigError(key, f"{value} must be {expected}")
    if e.methods is not None and (not e.methods or len(set(e.methods)) != len(e.methods)):
        raise ConfigError("steering.ensemble.methods", f"{e.methods} must be distinct method names or null")
    if s.n_questions is not None and s.n_questions < 1:
        raise ConfigError("steering.n_questions", f"{s.n_questions} must be >= 1 or null (all questions)")
    if cfg.component.name not in COMPONENTS:
        raise ConfigError("component", f"'{cfg.component.name}' is not one of {', '.join(COMPONENTS)}")
    parse_position(cfg.position.spec)
    if cfg.mode in ("search", "ablation", "ensemble"):
        try:  # syntax now; the range once the model's depth is known
            parse_layers(cfg.layers, 10_000, best=0)
        except LayerSpecError as e:
            raise ConfigError("layers", str(e).split("; valid layers are")[0]) from None


def _check_judge_fits(cfg: SteerConfig, backend: str) -> None:
    if backend != "perplexity":
        return
    if cfg.steering.objective == "judge":
        raise ConfigError("steering.objective", "judge needs a judge with a trait score (judge=hf_local, openai or "
                                                "openai_compatible); judge=perplexity scores coherence only")
    if cfg.mode in ("ablation", "rescore"):
        raise ConfigError("judge", f"mode={cfg.mode} measures the LLM judge's trait score, and judge=perplexity has "
                                   "none: use judge=hf_local (or openai, openai_compatible)")


PERPLEXITY_THRESHOLD, JUDGE_THRESHOLD = 90.0, 77.0


def coherence_threshold(cfg: SteerConfig) -> float:
    """steering.threshold, or its default for where coherence comes from (see conf/steering/default.yaml)."""
    if cfg.steering.threshold is not None:
        return float(cfg.steering.threshold)
    j = cfg.judge
    perplexity_only = j.backend == "perplexity" or j.perplexity_combine == "perplexity"
    return PERPLEXITY_THRESHOLD if perplexity_only else JUDGE_THRESHOLD


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


def _missing_vectors_error(cfg: SteerConfig, trait: str, what: str) -> ConfigError:
    have = find_vectors(trait, cfg.model, experiment=cfg.tracking.experiment, uri=cfg.tracking.uri)
    kinds = sorted({(r.method, r.component, r.position) for r in have})
    avail = "; ".join(f"method={m} component={c} position={p!r}" for m, c, p in kinds) or "none"
    return ConfigError("method/component/position",
                       f"no extracted vectors {what} for trait {trait} on model {vectors_key(cfg.model)} in "
                       f"experiment '{cfg.tracking.experiment}' (available: {avail}); run launchers/extract.py "
                       f"trait={trait} method={cfg.method.name} first, or pick an available one"
                       f"{VARIANT_HINT if not have else ''}")


def _split_settings(cfg: SteerConfig, refs: list[VectorRef]) -> dict[str, Any]:
    """The val split and seed extraction used for these vectors (so the held-out pairs are truly held out)."""
    if refs:
        params = extraction_params(refs[0].run_id, uri=cfg.tracking.uri, experiment=cfg.tracking.experiment)
        if "extraction.val_split" in params and "seed" in params:
            return {"val_split": float(params["extraction.val_split"]), "seed": int(params["seed"]),
                    "from": refs[0].run_id}
    return {"val_split": ExtractionConfig().val_split, "seed": cfg.seed, "from": "defaults"}


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
    _check_judge_fits(cfg, jcfg["backend"])
    if jcfg.get("rubric") == "axbench" and spec.direction < 0:
        raise ConfigError("judge.rubric", f"axbench rewards the concept being present, but {trait.path}/steering.json "
                                          "steers away from the trait (direction negative); use judge.rubric=trait")
    scorer = make_text_scorer(cfg.steering.scorer) if cfg.steering.scorer else None
    objective = objective_measure(cfg.steering.objective, scorer)
    judge = make_judge(jcfg)  # checks keys, prompt files and templates
    if cfg.mode != "rescore":  # re-scoring reads the judge cache: the judge's server need not be up
        judge.validate()      # key present, server reachable
    check = getattr(judge, "check_trait_prompt", None) or getattr(getattr(judge, "judge", None),
                                                                  "check_trait_prompt", None)
    if check is not None:
        check(spec.eval_prompt, trait.name)
    prep = Prepared(trait, questions, spec.direction, _prompted_system(cfg, trait, spec.direction), jcfg,
                    judge_identity(jcfg, trait), objective, coherence_threshold(cfg), scorer)
    c = cfg.steering.capability
    if c.enabled and cfg.mode in ("search", "baseline"):
        from traitlab.data.multiple_choice import load_choice_set

        cset = load_choice_set(c.set, c.path)
        prep.choice_items = list(cset.items[:c.n_items] if c.n_items else cset.items)
        prep.choice_set = f"{c.set or c.path}@{cset.fingerprint()[:8]}"
    if cfg.mode in ("search", "ablation", "ensemble"):
        prep.refs = find_vectors(trait.qualified_name, cfg.model, method=cfg.method.name,
                                 component=cfg.component.name, position=cfg.position.spec,
                                 experiment=cfg.tracking.experiment, uri=cfg.tracking.uri)
        if not prep.refs:
            raise _missing_vectors_error(cfg, trait.qualified_name,
                                         f"(method={cfg.method.name}, component={cfg.component.name}, "
                                         f"position={cfg.position.spec!r})")
    p = cfg.steering.propensity
    if cfg.mode in ("search", "baseline", "ensemble") and p.max_pairs != 0:
        prep.split = _split_settings(cfg, prep.refs)
        prep.pair_examples = heldout_examples(trait, prep.split["val_split"], prep.split["seed"], ood=p.ood,
                                              max_pairs=p.max_pairs)
        if not prep.pair_examples and objective == PROPENSITY:
            raise DataError(trait.path, "propensity needs held-out pairs whose positive and negative examples "
                                        "share a prompt (the val split and ood_* files have none); use "
                                        "steering.objective=judge or steering.objective=scorer")
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
        if ref is not None:
            log.info("best layer %d (%s)", ref.layer, ref.reason or ref.source)
    layers = parse_layers(cfg.layers, n_layers, best=best)
    missing = [lyr for lyr in layers if lyr not in by_layer]
    if missing:
        raise ConfigError("layers", f"{cfg.layers!r} asks for layers {_ranges(missing)} that have no extracted "
                                    f"vector (method={cfg.method.name}, component={cfg.component.name}, "
                                    f"position={cfg.position.spec!r}); vectors exist for layers "
                                    f"{_ranges(sorted(by_layer))}: pass layers='{_ranges(sorted(by_layer))}' or "
                                    f"extract those layers first")
    return {lyr: by_layer[lyr] for lyr in layers}


def _ranges(layers: list[int]) -> str:
    out, start, prev = [], None, None
    for x in list(layers) + [None]:
        if start is not None and (x is None or x != prev + 1):
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if x is not None and start is None:
            start = x
        prev = x
    return ",".join(out)


def _gen(cfg: SteerConfig) -> GenerationConfig:
    s = cfg.steering
    return GenerationConfig(max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, do_sample=s.do_sample,
                            temperature=s.temperature, top_p=s.top_p)
