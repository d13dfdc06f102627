"""`traitlab serve`: a steering configuration (model identity, vectors, layers, coefficients, mode) ->
a registered MLflow model that `mlflow models serve` answers chat requests with (traitlab.serving)."""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from traitlab.config.serve import SERVE_MODES, ServeConfig
from traitlab.errors import ConfigError
from traitlab.io import content_hash
from traitlab.models.identity import model_tags
from traitlab.pipelines.common import source_vector
from traitlab.serving.bundle import SteeringBundle
from traitlab.serving.register import register_steering_model
from traitlab.steering_vector import SteeringSetup, SteeringVector
from traitlab.tracking.artifacts import slug
from traitlab.tracking.runs import stage_run
from traitlab.tracking.store import tracking_uri

log = logging.getLogger(__name__)


@dataclass
class ServeResult:
    name: str
    version: str
    run_id: str
    uri: str
    layers: list[int] = field(default_factory=list)
    coefficients: dict[int, float] = field(default_factory=dict)
    skipped: bool = False

    def serve_args(self, host: str = "127.0.0.1", port: int = 5001) -> list[str]:
        return ["models", "serve", "-m", f"models:/{self.name}/{self.version}", "--env-manager", "local",
                "--host", host, "--port", str(port), "--workers", "1"]

    @property
    def serve_command(self) -> str:
        return f"MLFLOW_TRACKING_URI={shlex.quote(self.uri)} mlflow {shlex.join(self.serve_args())}"

    def exec_server(self, host: str, port: int) -> None:
        """Replace this process with `mlflow models serve` (Ctrl-C stops it)."""
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        # mlflow starts `uvicorn` by name: the interpreter's bin dir first on PATH finds this environment's.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        os.execve(sys.executable, [sys.executable, "-m", "mlflow", *self.serve_args(host, port)],
                  dict(os.environ, MLFLOW_TRACKING_URI=self.uri, PATH=path))


def serve_coefficients(cfg: ServeConfig, vector: SteeringVector) -> dict[int, float]:
    """Per layer, the coefficient to register: ``coefficient`` (a number), or null / best: the steering study's
    best coherent coefficient of this very vector (``vector.best_coefficients``, as generate and chat read
    it). Ablate and cap take none (0)."""
    if cfg.mode not in ("add", "add_response"):
        return dict.fromkeys(vector.layers, 0.0)
    best = cfg.coefficient is None or str(cfg.coefficient).strip().lower() == "best"
    setup = SteeringSetup([vector], coefficient="best" if best else cfg.coefficient, mode=cfg.mode)
    (coefficients,) = setup.coefficients()
    return coefficients if isinstance(coefficients, dict) else dict.fromkeys(vector.layers, float(coefficients))


def _existing_version(uri: str, name: str, run_id: str) -> str:
    from mlflow import MlflowClient

    versions = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(
        f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        raise ConfigError("force", f"run {run_id} registered {name!r} before but that version is gone; "
                                   "register again with force=true")
    return str(max(int(v.version) for v in versions))


def run_serve(cfg: ServeConfig, parent_run_id: str | None = None) -> ServeResult:
    if cfg.mode not in SERVE_MODES:
        raise ConfigError("mode", f"'{cfg.mode}' is not one of {', '.join(SERVE_MODES)}")
    vector, _ = source_vector(cfg)
    coefficients = serve_coefficients(cfg, vector)
    bundle = SteeringBundle(cfg.model, dict(vector.directions), coefficients, component=vector.component,
                            mode=cfg.mode, cap_threshold=cfg.cap_threshold, max_new_tokens=cfg.max_new_tokens,
                            provenance=vector.provenance())
    trait = vector.trait or "vectors"
    name = cfg.name or f"traitlab-{slug(trait.split('/')[-1].split(',')[0])}"
    uri = tracking_uri(cfg.tracking.uri)
    key = content_hash("serve-v1", name, {k: v.tolist() for k, v in sorted(bundle.vectors.items())}, coefficients,
                       cfg.mode, cfg.cap_threshold, cfg.max_new_tokens, bundle.component, vars(cfg.model))
    layers = ",".join(map(str, bundle.layers))
    names = model_tags(cfg.model)
    tags = {"traitlab.stage": "serve", "trait": trait, **names, "component": bundle.component,
            "layers": layers, "serve.mode": cfg.mode, "serve.registered_model": name}
    with stage_run(cfg, job_key=key, run_name=f"serve-{name}", tags=tags, parent_run_id=parent_run_id) as run:
        if run.skipped:
            version = _existing_version(uri, name, run.run_id)
        else:
            version = register_steering_model(
                bundle, name=name, run_id=run.run_id, uri=uri,
                tags={"trait": trait, **names, "model_id": cfg.model.id, "layers": layers,
                      "coefficients": ",".join(f"{k}:{v:g}" for k, v in sorted(coefficients.items())),
                      "mode": cfg.mode})
            log.info("registered %s version %s (run %s)", name, version, run.run_id)
    return ServeResult(name, version, run.run_id, uri, bundle.layers, coefficients, run.skipped)
