"""Structured config of the generate stage (conf/generate.yaml) and of chat (conf/chat.yaml).

Both steer with the same keys: `vectors=starter/optimism coefficient=8 mode=add`, `vectors=[a,b] weights=[1,0.5]`,
`coefficient=best` (the steering study's best coherent coefficient), and monitor traits per token with
`monitor=[starter/refusal] monitor_layers=best`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from traitlab.config.infer import MassiveConfig
from traitlab.config.schema import GenerationConfig, TrackingConfig
from traitlab.models.loading import ModelSpec


@dataclass
class CapConfig:
    quantile: float = 0.95  # mode=cap: clamp <h, v̂> at this quantile of the training projections onto v̂
    side: str = "ceiling"  # ceiling (at most the quantile) | floor (at least)


@dataclass
class UseConfig:
    """What is applied and what is watched: shared by generate and chat."""

    model: ModelSpec = field(default_factory=ModelSpec)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    vectors: Any = "starter/optimism"  # trait | run:<id> | file.safetensors; several: [a,b] (or the string 'a,b')
    layers: Any = "best"  # layer DSL for registry vectors (best = the registry's best vector)
    method: str | None = None  # registry filters (null: the trait's extraction setting, else the best vector's)
    position: str | None = None
    component: str | None = None  # null: the trait's extraction setting, else residual
    weights: Any = None  # one weight per vector (null: 1 each); the delta is sum_i weight_i * coef_i * v_i
    coefficient: Any = 8.0  # a number, or best: each layer's best coherent coefficient from the steering study
    mode: str = "add"  # add | add_response | ablate | cap
    cap: CapConfig = field(default_factory=CapConfig)
    monitor: Any = None  # traits watched per token (null: the steered traits); [cat/a, ...] (or 'a,b')
    monitor_layers: Any = "best"  # layer DSL of the monitored vectors
    score_mode: str = "normalized"  # raw | normalized | cosine (views and mean shifts)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    seed: int = 42


@dataclass
class GenerateConfig(UseConfig):
    clean_massive: bool = False  # zero the massive-activation dims of the monitored vectors before projecting
    calibration: str = "passive"  # passive: the model's stored calibration (else one on these prompts) | neutral
    massive: MassiveConfig = field(default_factory=MassiveConfig)  # ratio, max_tokens, set (as inference.massive)
    prompt: str | None = None  # one prompt (instead of the prompt set)
    system_prompt: str | None = None  # with prompt=
    prompt_set: str = "starter"  # datasets/inference/<name>.json or a path
    conversations: str | None = None  # .jsonl of multi-turn conversations (instead of the prompt set)
    max_prompts: int | None = None  # first N prompts / conversations (null: all)
    force: bool = False


@dataclass
class ChatConfig(UseConfig):
    show_scores: bool = True  # colour tokens by the first monitored trait's live score
