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
from traitlab.pipelines.common import source_vectors
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


def _default_out(prov: dict[str, Any]) -> Path:
    layers = prov["layers"]
    span = f"{layers[0]}" if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"
    return outputs_dir() / "export" / f"{slug(prov.get('trait') or 'vectors')}_L{span}.gguf"


def run_export(cfg: ExportConfig, parent_run_id: str | None = None) -> ExportResult:
    if cfg.component.name != "residual":
        raise ConfigError("component", f"'{cfg.component.name}': llama.cpp adds control vectors to the residual "
                                        "stream after each decoder block; export residual vectors")
    vectors, prov, conf = source_vectors(cfg)
    out = Path(cfg.out).expanduser() if cfg.out else _default_out(prov)
    meta = {"trait": prov.get("trait", ""), "model": cfg.model.name, "model_id": cfg.model.id,
            "layers": prov["layers"], "vectors": prov["vectors"], "layer_convention":
            "direction.<k> is added to the output of decoder block k (traitlab layer k, residual)"}
    write_control_vector(out, vectors, scale=cfg.scale, model_hint=str(getattr(conf, "model_type", "")),
                         metadata=meta, n_layers=conf.num_hidden_layers)
    log.info("wrote %s (layers %s, scale %g)", out, prov["layers"], cfg.scale)
    digest = content_hash("export-v1", {k: v.tolist() for k, v in sorted(vectors.items())}, cfg.scale, cfg.model.id)
    tags = {"traitlab.stage": "export", "trait": prov.get("trait", ""), **model_tags(cfg.model),
            "component": cfg.component.name, "layers": ",".join(map(str, prov["layers"])), "export.format": "gguf"}
    with stage_run(cfg, job_key=digest, run_name=f"export-{slug(prov.get('trait') or 'vectors')}", tags=tags,
                   parent_run_id=parent_run_id) as run:
        if not run.skipped:
            run.log_artifact(out, "export")
            run.log_dict(prov, "export/provenance.json")
            run.log_metrics({"n_layers_exported": len(vectors), "scale": cfg.scale})
    return ExportResult(out, run.run_id, prov["layers"], prov, run.skipped)
