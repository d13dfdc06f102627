"""Hydra task of stage 2 (steer): coefficient search, baselines, ablation or re-scoring, logged to MLflow."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from traitlab.config.steer import SteerConfig
from traitlab.config.trait_overrides import command_line_keys
from traitlab.pipelines.steer import run_steer, run_steer_traits
from traitlab.tracking.callbacks import parent_run_id_from_hydra


def task(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    typed: SteerConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    explicit = command_line_keys(HydraConfig.get().overrides.task) if HydraConfig.initialized() else set()
    if typed.traits:  # several traits searched together: one run per trait under a parent
        results = run_steer_traits(typed, parent_run_id=parent_run_id_from_hydra(), command_line=explicit)
        for name, r in results.items():
            print(f"{name}: MLflow run {r.run_id}{' (already done: skipped)' if r.skipped else ''}")
            if not r.skipped:
                print(r.summary_table())
        return float("nan")  # no one number for several traits
    res = run_steer(typed, parent_run_id=parent_run_id_from_hydra(), command_line=explicit)
    print(f"MLflow run: {res.run_id}{' (already done: skipped)' if res.skipped else ''}")
    if res.skipped:
        return float("nan")
    print(res.summary_table())
    best = res.best_layer
    if best is not None:  # what a sweeper maximises: the best coherent objective delta
        return float(res.per_layer[best].best["value"])
    return float("nan")
