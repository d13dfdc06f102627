"""Hydra task of `traitlab serve`: register a steering configuration as an MLflow model, then serve it."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from traitlab.config.serve import ServeConfig
from traitlab.pipelines.serve import run_serve


def task(cfg: DictConfig) -> None:
    typed: ServeConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    res = run_serve(typed)
    coefs = ", ".join(f"L{k}: {v:g}" for k, v in sorted(res.coefficients.items()))
    print(f"registered models:/{res.name}/{res.version} ({coefs}; mode {typed.mode}); MLflow run: {res.run_id}"
          f"{' (already registered)' if res.skipped else ''}")
    print(f"serve it: {res.serve_command}")
    if not typed.register_only:
        print(f"serving on http://{typed.host}:{typed.port}/invocations (Ctrl-C stops)", flush=True)
        res.exec_server(typed.host, typed.port)
