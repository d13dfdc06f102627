"""Hydra callback: one MLflow parent run per multirun; jobs find its id in a file in the sweep dir.

A file (not MLFLOW_RUN_ID, not a global) carries the id because jobs may run in other processes or on
other machines (joblib, submitit) that share only the filesystem.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from traitlab.io import atomic_write_text

log = logging.getLogger(__name__)
PARENT_FILE = "mlflow_parent_run_id"


def parent_run_id_from_hydra() -> str | None:
    """The parent run id of the current multirun job, or None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    f = Path(hc.sweep.dir) / PARENT_FILE
    return f.read_text().strip() if f.is_file() else None


class MLflowSweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from traitlab.tracking.runs import git_commit
        from traitlab.tracking.store import ensure_store

        tracking = config.get("tracking", {})
        client, exp_id = ensure_store(tracking.get("uri"), tracking.get("experiment", "traitlab"))
        stage = config.hydra.job.name
        sweep_dir = Path(config.hydra.sweep.dir)
        run = client.create_run(
            exp_id,
            run_name=f"{stage}-sweep-{sweep_dir.name}",
            tags={"traitlab.stage": f"{stage}_sweep", "traitlab.sweep_dir": str(sweep_dir), "git_commit": git_commit(),
                  "traitlab.overrides": " ".join(config.hydra.overrides.task)[:5000]},
        )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sweep_dir / PARENT_FILE, run.info.run_id)
        from traitlab import cli

        cli.open_parent_runs.append((client, run.info.run_id))
        log.info("MLflow parent run %s", run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from traitlab.tracking.store import ensure_store
        from traitlab.tracking.summary import summarize_sweep

        f = Path(config.hydra.sweep.dir) / PARENT_FILE
        if not f.is_file():
            return
        run_id = f.read_text().strip()
        tracking = config.get("tracking", {})
        client, exp_id = ensure_store(tracking.get("uri"), tracking.get("experiment", "traitlab"))
        from traitlab import cli

        cli.open_parent_runs[:] = [(c, r) for c, r in cli.open_parent_runs if r != run_id]
        try:
            summarize_sweep(client, exp_id, run_id)
            client.set_terminated(run_id, status="FINISHED")
        except Exception:
            client.set_terminated(run_id, status="FAILED")
            raise
        print(f"MLflow parent run: {run_id}")
