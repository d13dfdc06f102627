"""A steering configuration on disk: which model (by identity), which vectors at which layers, the
coefficient of each, the mode. JSON plus one safetensors file per vector: nothing executable, so a
served model never unpickles anything.

    steering.json          {"format", "model": ModelSpec fields, "component", "mode", "cap_threshold",
                            "max_new_tokens", "vectors": [{"layer", "file", "coefficient", ...}], "provenance"}
    vectors/layer_NNN.safetensors
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from traitlab.config.serve import SERVE_MODES
from traitlab.errors import ConfigError, DataError
from traitlab.io import atomic_write_json, read_json
from traitlab.models.loading import ModelSpec
from traitlab.tracking.artifacts import load_vector, save_vector

FORMAT = "traitlab-steering-v1"
CONFIG_FILE = "steering.json"


@dataclass
class SteeringBundle:
    model: ModelSpec
    vectors: dict[int, torch.Tensor]
    coefficients: dict[int, float]
    component: str = "residual"
    mode: str = "add"
    cap_threshold: float | None = None
    max_new_tokens: int = 64
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in SERVE_MODES:
            raise ConfigError("mode", f"'{self.mode}' is not one of {', '.join(SERVE_MODES)}")
        if self.mode == "cap" and self.cap_threshold is None:
            raise ConfigError("cap_threshold", "mode=cap needs the projection ceiling (cap_threshold=<number>)")
        if not self.vectors:
            raise ConfigError("layers", "no vectors selected")
        if set(self.coefficients) != set(self.vectors):
            raise ConfigError("coefficient", f"coefficients for layers {sorted(self.coefficients)} but vectors at "
                                             f"{sorted(self.vectors)}")

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)


def write_bundle(directory: str | Path, bundle: SteeringBundle) -> Path:
    directory = Path(directory)
    rows = []
    for layer in bundle.layers:
        rel = f"vectors/layer_{layer:03d}.safetensors"
        save_vector(directory / rel, bundle.vectors[layer], {"layer": layer, "component": bundle.component})
        rows.append({"layer": layer, "file": rel, "coefficient": float(bundle.coefficients[layer])})
    atomic_write_json(directory / CONFIG_FILE, {
        "format": FORMAT, "model": asdict(bundle.model), "component": bundle.component, "mode": bundle.mode,
        "cap_threshold": bundle.cap_threshold, "max_new_tokens": bundle.max_new_tokens, "vectors": rows,
        "provenance": bundle.provenance})
    return directory


def _field(doc: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in doc:
        raise DataError(path, f"missing key {key!r}; expected a {FORMAT} steering configuration")
    return doc[key]


def read_bundle(directory: str | Path) -> SteeringBundle:
    path = Path(directory) / CONFIG_FILE
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(path, f"not a {FORMAT} steering configuration")
    spec = ModelSpec(**_field(doc, "model", path))
    vectors, coefficients = {}, {}
    for row in _field(doc, "vectors", path):
        layer = int(row["layer"])
        vectors[layer] = load_vector(Path(directory) / row["file"])[0]
        coefficients[layer] = float(row["coefficient"])
    return SteeringBundle(spec, vectors, coefficients, component=_field(doc, "component", path),
                          mode=_field(doc, "mode", path), cap_threshold=doc.get("cap_threshold"),
                          max_new_tokens=int(doc.get("max_new_tokens", 64)), provenance=doc.get("provenance", {}))
