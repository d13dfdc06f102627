"""A Hydra launcher for tests: compose each job of a multirun and record its config, run nothing.

It lets a test run a README multirun command verbatim (real argv handling, real sweeper, real composition
against the structured configs) without running a model once per job.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf


class ComposeOnlyLauncher(Launcher):
    def __init__(self, out: str) -> None:
        self.out = out
        self.config: Any = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = []
        with open(self.out, "a", encoding="utf-8") as f:
            for overrides in job_overrides:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                body = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
                f.write(json.dumps({"overrides": list(overrides), "config": body}) + "\n")
                ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
                ret.return_value = None
                returns.append(ret)
        return returns
