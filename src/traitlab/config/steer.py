"""Structured config of stage 2 (steering validation): conf/steer.yaml + the `judge/` and `steering/` groups.

Top-level keys are what a researcher types most: `trait=starter/optimism`, `layers=10,12`, `mode=baseline`,
`judge=hf_local`; `steering.*` holds the coefficient search, `judge.*` the judge backend (its keys mirror
`traitlab.judge.factory.DEFAULTS`, which stays the one place that gives them meaning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from traitlab.config.schema import (
    ComponentConfig,
    JudgeConfig,
    MethodConfig,
    PositionConfig,
    TrackingConfig,
    TraitConfig,
)
from traitlab.models.loading import ModelSpec

MODES = ("search", "baseline", "ablation", "rescore", "ensemble")
SAMPLERS = ("adaptive", "tpe", "grid")
OBJECTIVES = ("propensity", "judge", "scorer")


@dataclass
class SearchSpaceConfig:
    """Coefficient magnitudes searched; the sign comes from steering.json's direction."""

    low: float = 0.05
    high: float = 3.0
    relative: bool = True   # bounds in units of base = ||h_layer|| / ||v|| (else absolute coefficients)
    log: bool = True


@dataclass
class StudyConfig:
    """Optuna storage: one sqlite file per (model, trait) under outputs/studies/, one study per vector x layer."""

    storage_dir: str | None = None  # null: <outputs>/studies
    heartbeat_interval: int = 10    # s; a killed job's trials go stale after grace_period and are retried
    grace_period: int = 30
    max_retry: int = 2


@dataclass
class PropensityConfig:
    """Held-out pairs whose log-prob margin (positive minus negative response) is measured under steering."""

    max_pairs: int | None = 12         # the extraction's val split first, then OOD pairs (null: all; 0: off)
    ood: bool = True                   # add ood_positive/ood_negative pairs after the val split
    max_response_tokens: int | None = 32  # score the first N tokens of each response (null: all)
    batch_size: int = 16               # forward rows (setting x pair x side), halves on out-of-memory


@dataclass
class CapabilityConfig:
    """Multiple-choice accuracy measured unsteered, prompted and at every tried coefficient (one batched
    forward pass per round, no generation). Off while `set` and `path` are both null."""

    set: str | None = None             # a set under datasets/capability/ (starter), or
    path: str | None = None            # a user's file in MMLU's column layout (csv or jsonl)
    n_items: int | None = 40           # the first N items (null: all)
    scoring: str = "text"              # text (option text log-prob; small models) | letter (MMLU's standard)
    batch_size: int = 32               # forward rows (setting x item x option), halves on out-of-memory

    @property
    def enabled(self) -> bool:
        return bool(self.set or self.path)


@dataclass
class EnsembleConfig:
    """mode=ensemble: one weight per member vector (each layer of `layers`, x each method of `methods`), the
    members added together, the weights searched by Optuna's CMA-ES against steering.objective."""

    methods: list[str] | None = None  # other methods whose vectors join `method`'s: every method x layer is a member
    trials: int = 16                  # weight vectors measured
    popsize: int = 4                  # CMA-ES population (>= 4): the candidates of one batched round
    high: float = 0.4                 # each weight in [0, high], in units of base = ||h_layer|| / ||v||; CMA-ES
    #                                   starts at high / 2 per member
    start: float | None = None        # the first trial's weights (all equal, measured first as a reference);
    #                                   null: steering.start_mult / number of members (one layer's first push)


@dataclass
class SteeringConfig:
    """conf/steering/default.yaml."""

    objective: str = "propensity"    # propensity | judge | scorer: what the search maximises
    scorer: str | None = None        # sentiment | refusal | 'package.module:function' (text -> number); logged
    propensity: PropensityConfig = field(default_factory=PropensityConfig)
    bootstrap: int = 2000            # resamples of every 95% interval (paired, over questions or pairs)
    sampler: str = "adaptive"        # adaptive | tpe | grid
    threshold: float | None = None   # coherence >= threshold (0-100); null: 90 when coherence is perplexity
    #                                  alone (judge=perplexity), else 77 (an LLM judge's coherence)
    steps: int = 5                   # rounds of ask -> one batched generate -> judge -> tell
    trials_per_step: int = 1         # candidates per layer per round (all layers x candidates in one batch)
    start_mult: float = 0.3          # first coefficient = base * start_mult
    up_mult: float = 1.3             # adaptive: x up_mult after a coherent round
    down_mult: float = 0.85          # adaptive: x down_mult after an incoherent one
    momentum: float = 0.5            # adaptive: consecutive moves the same way accelerate (0: none)
    tpe_startup_trials: Any = "auto"  # auto: a third of the trials (at least 1); or an int
    search_space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    n_questions: int | None = 5      # first N of steering.json's questions (null: all)
    max_new_tokens: int = 48
    batch_size: Any = 64             # generation rows (question x candidate), halves on OOM; auto: measured
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    prompted_system_prompt: str | None = None  # null: the trait's first positive (negative if direction<0)
    study: StudyConfig = field(default_factory=StudyConfig)
    capability: CapabilityConfig = field(default_factory=CapabilityConfig)
    entanglement: Any = None           # null | registry (every other trait with vectors for this model) | [traits]:
    #                                    the chosen coefficient's propensity shift on each one's held-out pairs
    max_capability_drop: float | None = None  # a trial whose accuracy falls more than this (0-1, steered minus
    #                                           unsteered, point estimate) is infeasible, beside coherence
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)


@dataclass
class SteerConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    trait: TraitConfig = field(default_factory=TraitConfig)
    position: PositionConfig = field(default_factory=PositionConfig)
    component: ComponentConfig = field(default_factory=ComponentConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    layers: Any = "30%-60%"          # layer DSL string or list
    traits: list[str] | None = None  # mode=search over several traits together (their trials share batches);
    #                                  each gets its own studies and steer run under one parent; `trait` unused
    mode: str = "search"             # search | baseline | ablation | rescore | ensemble
    rescore_from: str | None = None  # mode=rescore: a steer run id (null: the newest matching one)
    seed: int = 42
    force: bool = False
