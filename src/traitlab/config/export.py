"""Structured configs of `traitlab export` (conf/export.yaml) and the vector source it shares with serve.

Vectors come from the MLflow registry (`trait=`, `layers=` with `best`, optional `method=` / `position=` /
`component=`) or from safetensors vector files (`vector_file=`), resolved into one SteeringVector as every
stage that uses vectors resolves them (pipelines.common.source_vector).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from traitlab.config.schema import ComponentConfig, MethodConfig, PositionConfig, TrackingConfig, TraitConfig
from traitlab.models.loading import ModelSpec


@dataclass
class VectorSourceConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    trait: TraitConfig = field(default_factory=TraitConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    layers: Any = "best"  # layer DSL: best, best+2, 8-12, 30%-60%, 'best,best+1'
    # Registry filters; null: the trait's extraction.yaml setting, else any (component: else residual).
    method: MethodConfig | None = None  # method=mean_diff: only its vectors
    position: PositionConfig | None = None  # position=response_all / position.spec=...: only vectors pooled there
    component: ComponentConfig | None = None
    vector_file: Any = None  # a safetensors vector file or a list of them, instead of the registry
    force: bool = False


@dataclass
class ExportConfig(VectorSourceConfig):
    scale: float = 1.0  # the file holds scale x vector; llama.cpp multiplies by its --control-vector strength
    out: str | None = None  # the .gguf to write (null: outputs/export/<trait>_<layers>.gguf)
