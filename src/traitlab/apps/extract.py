"""Hydra task of stage 1 (extract)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from traitlab.config.schema import ExtractConfig
from traitlab.pipelines.extract import run_extract
from traitlab.tracking.callbacks import parent_run_id_from_hydra


def task(cfg: DictConfig) -> float:
    typed: ExtractConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    res = run_extract(typed, parent_run_id=parent_run_id_from_hydra())
    print(f"MLflow run: {res.run_id}{' (already done: skipped)' if res.skipped else ''}")
    best = res.best_layer
    return float(res.metrics[best].get("val_accuracy", float("nan"))) if best is not None else float("nan")
