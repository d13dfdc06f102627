"""`traitlab export`: vectors from the registry (or vector files) -> a llama.cpp control-vector GGUF.

The layer and scale conventions are documented in traitlab.models.control_vector. The file is written
where `out=` says and logged to an MLflow run (stage `export`) so the exported artifact is tracked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlab.config.export import ExportConfig
from traitlab.errors import ConfigError
from traitlab.io import content_hash
from traitlab.models.control_vector import write_control_vector
from traitlab.models.identity import model_tags
from traitlab.paths import outputs_dir
from traitlab.pipelines.common import source_vector
from traitlab.tracking.artifacts import slug
from traitlab.tracking.runs import stage_run

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    path: Path
    run_id: str
    layers: list[int]
    provenance: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


def _default_out(trait: str | None, layers: list[int]) -> Path:
    span = f"{layers[0]}" if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"
    return outputs_dir() / "export" / f"{slug(trait or 'vectors')}_L{span}.gguf"


def _require_residual(component: str) -> None:
    if component != "residual":
        raise ConfigError("component", f"'{component}': llama.cpp adds control vectors to the residual stream after "
                                       "each decoder block; export residual vectors")


def run_export(cfg: ExportConfig, parent_run_id: str | None = None) -> ExportResult:
    if cfg.component is not None:
        _require_residual(cfg.component.name)
    vector, conf = source_vector(cfg)
    _require_residual(vector.component)  # the trait's extraction setting may name another component
    out = Path(cfg.out).expanduser() if cfg.out else _default_out(vector.trait, vector.layers)
    names = model_tags(cfg.model)  # model (identity key), model_name, vectors_model: as every run's tags
    meta = {**names, "model_id": cfg.model.id, "layers": vector.layers, "layer_convention":
            "direction.<k> is added to the output of decoder block k (traitlab layer k, residual)"}
    write_control_vector(out, vector, scale=cfg.scale, model_hint=str(getattr(conf, "model_type", "")),
                         metadata=meta, n_layers=conf.num_hidden_layers)
    log.info("wrote %s (layers %s, scale %g)", out, vector.layers, cfg.scale)
    digest = content_hash("export-v2", {k: v.tolist() for k, v in vector.directions.items()}, cfg.scale, names,
                          cfg.model.id)
    trait = vector.trait or ""
    tags = {"traitlab.stage": "export", "trait": trait, **names, "component": vector.component,
            "layers": ",".join(map(str, vector.layers)), "export.format": "gguf"}
    provenance = {**vector.provenance(), **meta}
    with stage_run(cfg, job_key=digest, run_name=f"export-{slug(trait or 'vectors')}", tags=tags,
                   parent_run_id=parent_run_id) as run:
        if not run.skipped:
            run.log_artifact(out, "export")
            run.log_dict(provenance, "export/provenance.json")
            run.log_metrics({"n_layers_exported": len(vector.layers), "scale": cfg.scale})
    return ExportResult(out, run.run_id, vector.layers, provenance, run.skipped)
