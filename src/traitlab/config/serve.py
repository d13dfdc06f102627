"""Structured config of `traitlab serve` (conf/serve.yaml): a steering configuration registered as an
MLflow model that `mlflow models serve` answers chat requests with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from traitlab.config.export import VectorSourceConfig

SERVE_MODES = ("add", "add_response", "ablate", "cap")


@dataclass
class ServeConfig(VectorSourceConfig):
    coefficient: Any = None  # a number, or best (null too): the steering study's best coherent coefficient per layer
    mode: str = "add"  # add | add_response (response tokens only) | ablate | cap
    cap_threshold: float | None = None  # mode=cap: floor of the projection on the unit vector (raw units)
    name: str | None = None  # registered model name (null: traitlab-<trait>)
    max_new_tokens: int = 64  # default reply length; a request's max_output_tokens overrides it
    register_only: bool = False  # false: start `mlflow models serve` on host:port after registering
    host: str = "127.0.0.1"
    port: int = 5001
