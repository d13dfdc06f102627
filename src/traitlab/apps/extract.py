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
    best = res.best_layer  # a sweeper maximises the held-out accuracy there (cross-validated when cv is on)
    if best is None:
        return float("nan")
    m = res.metrics[best]
    return float(m.get("cv_accuracy", m.get("val_accuracy", float("nan"))))
