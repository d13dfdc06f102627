"""Structured config of stage 3 (inference): conf/infer.yaml + the `inference/` group.

Top-level keys are what a researcher types most: `prompt_set=starter`, `traits=[starter/optimism]`,
`layers='best,best+5'`, `mode=capture`; the `inference.*` group holds the knobs of scoring and views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from traitlab.config.schema import GenerationConfig, TrackingConfig
from traitlab.models.loading import ModelSpec

MODES = ("stream", "capture", "reproject", "from_responses")
CALIBRATIONS = ("passive", "neutral")


@dataclass
class MassiveConfig:
    ratio: float = 100.0  # a dim is massive when its max |h| > ratio x the median dim's max |h|
    max_tokens: int = 5000  # prefill tokens a calibration looks at
    set: str = "neutral"  # calibration=neutral: datasets/neutral/<name>, a prompt set name, or a file
    max_new_tokens: int = 48  # responses the neutral set lacks: greedy, this long (fixed, so one calibration per set)


@dataclass
class InferenceConfig:
    """conf/inference/default.yaml."""

    score_mode: str = "normalized"  # raw | normalized (÷ mean ‖h‖ of the response) | cosine (÷ ‖h‖)
    centered: bool = True  # subtract the vector's baseline (training centroid projection): 0 = neutral
    clean_massive: bool = False  # zero the massive dims of the vectors before projecting
    # passive: dims recorded from the texts scored by the first run on a model; neutral: from an explicit
    # calibration on massive.set, stored per model identity (analysis=calibration runs it on its own)
    calibration: str = "passive"
    massive: MassiveConfig = field(default_factory=MassiveConfig)
    component: str = "residual"  # vectors of this component are projected
    method: str | None = None  # only vectors of this method (null: the trait's extraction setting, else any)
    position: str | None = None  # only vectors extracted here (null: the trait's extraction setting, else any)
    batch_size: Any = 8  # prefill batch (length-sorted, halves on OOM); auto: measured once per job
    max_length: int = 1024
    max_prompts: int | None = None  # first N prompts of the set (null: all)
    max_figure_prompts: int = 40  # PNG figures for the first N prompts (HTML + JSON for all)
    capture_dir: str | None = (
        None  # mode=capture/reproject: where the activations live (null: outputs/captures/<key>)
    )
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=50))


@dataclass
class InferConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    prompt_set: str = "starter"  # a name under datasets/inference/, or a path to a .json file
    traits: Any = None  # null: every trait with vectors for this model; or a list / "a,b"
    layers: Any = "best"  # layer DSL string or list; best = the trait's best vector layer
    mode: str = "stream"  # stream | capture | reproject | from_responses
    responses: str | None = None  # mode=from_responses: JSON file of {prompt, response} items
    seed: int = 42
    force: bool = False
