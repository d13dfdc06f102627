"""Hydra task of stage 3 (inference): per-token trait scores and their views in MLflow."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from traitlab.config.infer import InferConfig
from traitlab.pipelines.infer import run_infer
from traitlab.tracking.artifacts import INDEX_PAGE
from traitlab.tracking.callbacks import parent_run_id_from_hydra


def task(cfg: DictConfig) -> float:
    typed: InferConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    res = run_infer(typed, parent_run_id=parent_run_id_from_hydra())
    print(f"MLflow run: {res.run_id}{' (already done: skipped)' if res.skipped else ''}")
    if res.capture_dir and res.mode == "capture":
        print(f"activations: {res.capture_dir}  (score them later with mode=reproject)")
    if res.first_page:
        print(f"first view: {res.first_page}  ({res.first_page_uri}); browse it with `make ui`")
        print(f"every prompt in one page: {INDEX_PAGE} (opens inside the MLflow UI's artifact viewer)")
    return res.mean_score()
