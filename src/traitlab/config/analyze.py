"""Structured config of the analysis app: conf/analyze.yaml + the `analysis/` group (`analysis=<name>`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from traitlab.config.infer import InferenceConfig
from traitlab.config.schema import TrackingConfig
from traitlab.models.loading import ModelSpec

ANALYSES = ("geometry", "logit_lens", "correlation", "dynamics", "top_spans", "model_diff")


@dataclass
class AnalysisConfig:
    """One analysis and its knobs (each conf/analysis/<name>.yaml sets `name` and the knobs it uses)."""

    name: str = "geometry"
    top_k: int = 15  # logit_lens: tokens per direction
    max_lag: int = 5  # correlation: lags -max_lag..max_lag (tokens)
    window: int = 5  # top_spans / model_diff: span length in tokens
    top_n: int = 10  # top_spans / model_diff: spans reported per trait and layer
    source_run: str | None = (
        None  # correlation/dynamics/top_spans: an inference run's JSONs (null: fresh pass)
    )
    max_figures: int = 8  # dynamics: trajectory figures for the first N prompts


@dataclass
class AnalyzeConfig:
    model: ModelSpec = field(
        default_factory=ModelSpec
    )  # whose vectors (and, unless model_diff, whose forward)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)  # scoring of fresh passes
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    variant_a: ModelSpec = field(default_factory=ModelSpec)  # model_diff: reference model (e.g. base)
    variant_b: ModelSpec = field(default_factory=ModelSpec)  # model_diff: compared model (e.g. base + LoRA)
    prompt_set: str = "starter"
    traits: Any = None
    layers: Any = "best"  # layer DSL string or list
    responses: str | None = None  # score these {prompt, response} items instead of generating
    seed: int = 42
    force: bool = False
