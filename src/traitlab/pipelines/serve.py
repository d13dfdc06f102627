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
from traitlab.models.identity import model_tags, vectors_key
from traitlab.pipelines.common import source_vectors
from traitlab.serving.bundle import SteeringBundle
from traitlab.serving.register import register_steering_model
from traitlab.tracking.artifacts import slug
from traitlab.tracking.registry import steering_results
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


def best_coefficients(cfg: ServeConfig, prov: dict) -> dict[int, float]:
    """Per layer, the steering stage's best coherent coefficient for this very vector (same extraction
    run, method, component, position); a layer without one is a ConfigError naming `coefficient`."""
    found = {}
    if prov["source"] == "registry":
        for s in steering_results(prov["trait"], vectors_key(cfg.model), experiment=cfg.tracking.experiment,
                                  uri=cfg.tracking.uri):
            for v in prov["vectors"]:  # a steer run may have used vectors of several extraction runs
                same = v["run_id"] in str(s["vector_run_id"]).split(",") and (
                    s["method"], s["component"], s["position"], s["layer"]) == (
                    v["method"], v["component"], v["position"], v["layer"])
                if same and "best_coefficient" in s:
                    found[v["layer"]] = float(s["best_coefficient"])
    missing = [lyr for lyr in prov["layers"] if lyr not in found]
    if missing:
        raise ConfigError("coefficient", f"no steering result gives a best coherent coefficient for layers "
                                         f"{missing}; run launchers/steer.py on them or give coefficient=<number>")
    return found


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
    vectors, prov, _ = source_vectors(cfg)
    if cfg.coefficient is not None:
        coefficients = dict.fromkeys(vectors, float(cfg.coefficient))
    elif cfg.mode in ("add", "add_response"):
        coefficients = best_coefficients(cfg, prov)
    else:
        coefficients = dict.fromkeys(vectors, 0.0)  # ablate and cap take no coefficient
    bundle = SteeringBundle(cfg.model, vectors, coefficients, component=cfg.component.name, mode=cfg.mode,
                            cap_threshold=cfg.cap_threshold, max_new_tokens=cfg.max_new_tokens, provenance=prov)
    trait = prov.get("trait") or "vectors"
    name = cfg.name or f"traitlab-{slug(trait.split('/')[-1].split(',')[0])}"
    uri = tracking_uri(cfg.tracking.uri)
    key = content_hash("serve-v1", name, {k: v.tolist() for k, v in sorted(vectors.items())}, coefficients,
                       cfg.mode, cfg.cap_threshold, cfg.max_new_tokens, cfg.component.name, vars(cfg.model))
    layers = ",".join(map(str, bundle.layers))
    tags = {"traitlab.stage": "serve", "trait": trait, **model_tags(cfg.model), "component": cfg.component.name,
            "layers": layers, "serve.mode": cfg.mode, "serve.registered_model": name}
    with stage_run(cfg, job_key=key, run_name=f"serve-{name}", tags=tags, parent_run_id=parent_run_id) as run:
        if run.skipped:
            version = _existing_version(uri, name, run.run_id)
        else:
            version = register_steering_model(
                bundle, name=name, run_id=run.run_id, uri=uri,
                tags={"trait": trait, "model": cfg.model.name, "model_id": cfg.model.id, "layers": layers,
                      "coefficients": ",".join(f"{k}:{v:g}" for k, v in sorted(coefficients.items())),
                      "mode": cfg.mode})
            log.info("registered %s version %s (run %s)", name, version, run.run_id)
    return ServeResult(name, version, run.run_id, uri, bundle.layers, coefficients, run.skipped)
