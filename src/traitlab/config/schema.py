"""Structured configs for every Hydra group. Plain dataclasses: pipelines take these, not argv.

Field names are the config keys users type (`model.dtype=bfloat16`, `trait.path=/dir`, `layers=30%-60%`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from traitlab.models.loading import ModelSpec


@dataclass
class TraitConfig:
    """`trait=starter/sycophancy` picks datasets/traits/starter/sycophancy; `trait.path=/dir` any dir on disk."""

    name: str | None = "starter/sycophancy"
    path: str | None = None


@dataclass
class PositionConfig:
    name: str = "response_all"
    spec: str = "response[:]"


@dataclass
class ComponentConfig:
    name: str = "residual"


@dataclass
class MethodConfig:
    name: str = "probe"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 48
    batch_size: Any = 8  # rows per generate call, or auto: measured once per job (models.batching)
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class JudgeConfig:
    """conf/judge/<backend>.yaml. null model: gpt-4.1-mini (openai), the server's first model
    (openai_compatible), smollm2_135m (hf_local: the in-process model, reused when it is the steered one).
    backend perplexity: no LLM judge, coherence only (from the unsteered model's perplexity)."""

    backend: str = "perplexity"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    max_retries: int = 4
    timeout_s: float = 30.0
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    concurrency: int = 8
    min_weight: float = 0.25
    top_logprobs: int = 20
    scale_max: Any = "auto"            # auto | 100 | 9 (judges whose tokenizer splits numbers into digits)
    cache_path: str | None = "default"  # default: <cache>/judge_cache.sqlite; null: in memory only
    rubric: str = "trait"              # trait | axbench (concept, instruction, fluency; harmonic mean)
    relevance_check: bool = False
    prompts_dir: str | None = None
    trait_prompt_path: str | None = None
    batch_size: int = 16
    perplexity_combine: str | None = None  # null | min | mean: also score coherence by perplexity
    ppl_min: float | None = None
    ppl_max: float | None = None


@dataclass
class VettingConfig:
    """Judge each GENERATED response for the trait before extraction and drop those that do not show their side."""

    enabled: Any = "auto"       # auto: on with a real judge (openai, openai_compatible), off with hf_local; or bool
    positive_min: float = 60.0  # a generated positive is kept when its trait score (0-100) is >= this
    negative_max: float = 40.0  # a generated negative is kept when its trait score is <= this


@dataclass
class ExtractionConfig:
    val_split: float = 0.1
    cv_folds: int = 5  # k-fold CV over the training pairs (by prompt group) picks the best layer; 0 = off
    n_bootstrap: int = 1000  # resamples for the effect-size / AUROC intervals
    batch_size: Any = 16  # capture rows per forward, or auto: measured once per job
    max_length: int = 512
    use_provided_responses: bool = True
    # What the trait's examples are contrasted with when it has no negatives (or to replace them): null (the
    # trait's negatives), neutral (datasets/neutral/default.jsonl), category (the other traits of its
    # category), a set name under datasets/neutral/, or a path (a .jsonl/.json/.txt file or a trait dir).
    reference: str | None = None
    vetting: VettingConfig = field(default_factory=VettingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


@dataclass
class NormalizeConfig:
    """Cross-trait normalisation after a multirun (`-m trait=a,b,c normalize.center=true`): per layer."""

    center: bool = False        # subtract the mean vector over the sweep's traits (grand-mean centring)
    denoise: str | None = None  # a neutral set (neutral, a name under datasets/neutral/, a path): project out its top PCs
    variance: float = 0.5       # those PCs explain this fraction of the neutral activations' variance


@dataclass
class TrackingConfig:
    experiment: str = "traitlab"
    uri: str | None = None
    run_name: str | None = None


@dataclass
class ExtractConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    trait: TraitConfig = field(default_factory=TraitConfig)
    position: PositionConfig = field(default_factory=PositionConfig)
    component: ComponentConfig = field(default_factory=ComponentConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    # Only vetting uses a judge at extraction; the embedded default cannot see traits, so vetting stays off with it.
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(backend="hf_local", min_weight=0.1))
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    layers: str = "all"
    seed: int = 42
    force: bool = False
