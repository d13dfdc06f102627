"""Hydra task of stage 1 (extract)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from traitlab.config.schema import ExtractConfig
from traitlab.config.trait_overrides import command_line_keys
from traitlab.pipelines.extract import run_extract
from traitlab.tracking.callbacks import parent_run_id_from_hydra


def task(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    typed: ExtractConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    explicit = command_line_keys(HydraConfig.get().overrides.task) if HydraConfig.initialized() else set()
    res = run_extract(typed, parent_run_id=parent_run_id_from_hydra(), command_line=explicit)
    print(f"MLflow run: {res.run_id}{' (already done: skipped)' if res.skipped else ''}")
    best = res.best_layer  # a sweeper maximises the held-out accuracy there (cross-validated when cv is on)
    if best is None:
        return float("nan")
    m = res.metrics[best]
    return float(m.get("cv_accuracy", m.get("val_accuracy", float("nan"))))
