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
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class ExtractionConfig:
    val_split: float = 0.1
    cv_folds: int = 5  # k-fold CV over the training pairs (by prompt group) picks the best layer; 0 = off
    n_bootstrap: int = 1000  # resamples for the effect-size / AUROC intervals
    batch_size: int = 16
    max_length: int = 512
    use_provided_responses: bool = True
    generation: GenerationConfig = field(default_factory=GenerationConfig)


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
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    layers: str = "all"
    seed: int = 42
    force: bool = False
