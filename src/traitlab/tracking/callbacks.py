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

from traitlab.cli import redact_override
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
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        _protect_secrets(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from traitlab.tracking.runs import git_commit

        _protect_secrets(config)
        from traitlab.tracking.store import ensure_store

        tracking = config.get("tracking", {})
        client, exp_id = ensure_store(tracking.get("uri"), tracking.get("experiment", "traitlab"))
        stage = config.hydra.job.name
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = [redact_override(str(o)) for o in config.hydra.overrides.task]
        run = client.create_run(
            exp_id,
            run_name=sweep_run_name(stage, overrides, sweep_dir.name),
            tags={"traitlab.stage": f"{stage}_sweep", "traitlab.sweep_dir": str(sweep_dir), "git_commit": git_commit(),
                  "traitlab.overrides": " ".join(overrides)[:5000]},
        )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sweep_dir / PARENT_FILE, run.info.run_id)
        from traitlab import cli

        cli.open_parent_runs.append((client, run.info.run_id))
        log.info("MLflow parent run %s", run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from traitlab.tracking.store import ensure_store
        from traitlab.tracking.summary import summarize_sweep

        _protect_secrets(config)
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


def sweep_run_name(stage: str, overrides: list[str], fallback: str) -> str:
    """'extract-sweep method=mean_diff,probe': a parent is named by what it sweeps (the overrides with several
    values), not by the clock; the sweep directory's name when nothing is swept."""
    swept = []
    for o in overrides:
        key, _, value = o.partition("=")
        if "," not in value or value[:1] in "'\"[({" or key.startswith("hydra."):
            continue  # one value (a quoted list, a DSL string) or Hydra's own settings
        if key.lstrip("+~") == "trait":  # starter/optimism,starter/refusal -> optimism,refusal
            value = ",".join(v.rsplit("/", 1)[-1] for v in value.split(","))
        swept.append(f"{key}={value}")
    return (f"{stage}-sweep " + " ".join(swept) if swept else f"{stage}-sweep-{fallback}")[:250]


def _protect_secrets(config: DictConfig) -> None:
    """Hydra saves the composed config and the raw overrides (.hydra/*.yaml, multirun.yaml) before any job
    code runs, and its launchers log each job's overrides: redact secret values (of a `*_token` key, of a
    secret env var) in those files as soon as they exist, and in every log record from now on."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from traitlab.tracking.params import config_secrets, install_log_scrubber, scrub_yaml_file, secret_values

    task = OmegaConf.to_container(config, resolve=False)
    task.pop("hydra", None)
    overrides = [str(o) for o in config.hydra.overrides.task] if "hydra" in config else []
    secrets = config_secrets(task) + secret_values()
    secrets += [o.split("=", 1)[1] for o in overrides
                if "=" in o and is_secret_override(o) and len(o.split("=", 1)[1]) >= 4]
    if not secrets:
        return
    install_log_scrubber(secrets)
    hc = HydraConfig.get() if HydraConfig.initialized() else config.hydra
    files: list[Path] = []
    out, sub = OmegaConf.select(hc, "runtime.output_dir"), OmegaConf.select(hc, "output_subdir")
    if out and sub:
        files += sorted((Path(str(out)) / str(sub)).glob("*.yaml"))
    sweep = OmegaConf.select(hc, "sweep.dir")
    if sweep:
        files.append(Path(str(sweep)) / "multirun.yaml")
    for f in files:
        scrub_yaml_file(f, secrets)


def is_secret_override(override: str) -> bool:
    from traitlab.tracking.params import is_secret_key

    return is_secret_key(override.split("=", 1)[0].lstrip("+~"))
