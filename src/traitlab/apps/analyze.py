"""Hydra task of the analysis app: `analysis=<name>` runs one analysis and logs it to MLflow."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from traitlab.config.analyze import AnalyzeConfig
from traitlab.pipelines.analyze import run_analyze
from traitlab.tracking.callbacks import parent_run_id_from_hydra


def task(cfg: DictConfig) -> float:
    typed: AnalyzeConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    res = run_analyze(typed, parent_run_id=parent_run_id_from_hydra())
    print(f"MLflow run: {res.run_id} ({res.analysis}){' (already done: skipped)' if res.skipped else ''}")
    return res.headline()
