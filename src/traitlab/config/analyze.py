"""Structured config of the analysis app: conf/analyze.yaml + the `analysis/` group (`analysis=<name>`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from traitlab.config.infer import InferenceConfig
from traitlab.config.schema import TrackingConfig
from traitlab.errors import ConfigError
from traitlab.models.loading import ModelSpec

ANALYSES = ("geometry", "logit_lens", "correlation", "response_correlation", "dynamics", "top_spans", "model_diff",
            "calibration")
SPAN_UNITS = ("window", "clause")


@dataclass
class AnalysisConfig:
    """One analysis and its knobs (each conf/analysis/<name>.yaml sets `name` and the knobs it uses)."""

    name: str = "geometry"
    top_k: int = 15  # logit_lens: tokens per direction
    max_lag: int = 5  # correlation: lags -max_lag..max_lag (tokens)
    window: int = 5  # top_spans (unit=window) / model_diff: span length in tokens
    top_n: int = 10  # top_spans / model_diff: spans reported per trait and layer
    unit: str = "window"  # top_spans: window (fixed-length token windows) | clause (punctuation/conjunctions)
    min_tokens: int = 3  # top_spans unit=clause: shorter clauses are not ranked
    # correlation/response_correlation/dynamics/top_spans: an inference run's JSONs, or a list of runs
    # (null: fresh pass over prompt_set)
    source_run: Any = None
    max_figures: int = 8  # dynamics: trajectory figures for the first N prompts; response_correlation: scatters

    def check(self) -> None:
        """The analysis name and its knobs, before anything loads."""
        if self.name not in ANALYSES:
            raise ConfigError("analysis", f"{self.name!r} is not one of {', '.join(ANALYSES)}")
        if min(self.window, self.top_n, self.top_k, self.min_tokens) < 1 or self.max_lag < 0:
            raise ConfigError("analysis", f"window/top_n/top_k/min_tokens must be >= 1 and max_lag >= 0, got {self}")
        if self.unit not in SPAN_UNITS:
            raise ConfigError("analysis.unit", f"{self.unit!r} is not one of {', '.join(SPAN_UNITS)}")


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
    prompt_set: Any = "starter"  # a prompt set, or several: [starter,smoke] (records tagged with their set)
    traits: Any = None
    layers: Any = "best"  # layer DSL string or list
    responses: str | None = None  # score these {prompt, response} items instead of generating
    seed: int = 42
    force: bool = False
