"""One MLflow run per job, keyed so a re-run skips finished work and a killed run is marked FAILED.

A job key (content hash of what the job computes) is stored as a tag. While a job runs it holds a file
lock on its key, so a second launch of the same command waits and then sees the finished run instead of
duplicating it, and any RUNNING run found while holding the lock must belong to a dead process.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from traitlab.paths import outputs_dir
from traitlab.tracking.params import flatten, redact
from traitlab.tracking.store import RetryingClient, ensure_store

log = logging.getLogger(__name__)

TAG_KEY = "traitlab.job_key"
TAG_STAGE = "traitlab.stage"
TAG_SWEEP = "traitlab.sweep"
RESOLVED_CONFIG = "config/resolved.yaml"  # the job's config, secrets redacted


@dataclass
class JobRun:
    client: RetryingClient
    run_id: str
    experiment_id: str
    skipped: bool = False

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self.client.log_metric(self.run_id, key, float(value), step=step)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 900):
            self.client.log_batch(self.run_id, metrics=items[i:i + 900])

    def set_tag(self, key: str, value: Any) -> None:
        self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, local: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local), artifact_path)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, figure, artifact_file)
        plt.close(figure)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_table(self, data: Mapping[str, list], artifact_file: str) -> None:
        self.client.log_table(self.run_id, data=dict(data), artifact_file=artifact_file)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _find(client: RetryingClient, experiment_id: str, job_key: str, status: str) -> list[Any]:
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_KEY}` = '{job_key}' and attributes.status = '{status}'",
        max_results=50,
    )


def mark_stale(client: RetryingClient, experiment_id: str, job_key: str) -> int:
    """Mark RUNNING runs of this key FAILED: called only while holding the key's lock, so they are dead."""
    stale = _find(client, experiment_id, job_key, "RUNNING")
    for r in stale:
        client.set_tag(r.info.run_id, "traitlab.interrupted", "true")
        client.set_terminated(r.info.run_id, status="FAILED")
        log.warning("run %s was left RUNNING by an interrupted job: marked FAILED", r.info.run_id)
    return len(stale)


@contextmanager
def job_run(
    *,
    experiment: str,
    job_key: str,
    run_name: str,
    config: Mapping[str, Any],
    tags: Mapping[str, Any],
    parent_run_id: str | None = None,
    force: bool = False,
    uri: str | None = None,
) -> Iterator[JobRun]:
    """Open (or skip) the run of one job. Yields JobRun with skipped=True when a FINISHED run exists."""
    client, exp_id = ensure_store(uri, experiment)
    lock_dir = outputs_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f"{job_key}.lock")):
        mark_stale(client, exp_id, job_key)
        done = _find(client, exp_id, job_key, "FINISHED")
        if done and not force:
            log.info("job already done in run %s (force=true to redo)", done[0].info.run_id)
            if parent_run_id:  # let the sweep's summary include work done by an earlier sweep
                client.set_tag(done[0].info.run_id, f"{TAG_SWEEP}.{parent_run_id}", "1")
            yield JobRun(client, done[0].info.run_id, exp_id, skipped=True)
            return
        all_tags = {str(k): str(v) for k, v in tags.items()}
        all_tags.update({TAG_KEY: job_key, "mlflow.runName": run_name, "git_commit": git_commit()})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, tags=all_tags, run_name=run_name)
        jr = JobRun(client, run.info.run_id, exp_id)
        safe_cfg = redact(dict(config))
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten(safe_cfg).items()]
        for i in range(0, len(params), 100):
            client.log_batch(jr.run_id, params=params[i:i + 100])
        import yaml

        client.log_text(jr.run_id, yaml.safe_dump(safe_cfg, sort_keys=False), RESOLVED_CONFIG)
        try:
            yield jr
        except KeyboardInterrupt:
            client.set_terminated(jr.run_id, status="KILLED")
            raise
        except BaseException:
            client.set_terminated(jr.run_id, status="FAILED")
            raise
        client.set_terminated(jr.run_id, status="FINISHED")


def stage_run(cfg: Any, *, job_key: str, run_name: str, tags: Mapping[str, Any],
              parent_run_id: str | None = None):
    """`job_run` for a stage config (anything with .tracking, .force and dataclass fields)."""
    from dataclasses import asdict

    return job_run(experiment=cfg.tracking.experiment, job_key=job_key, run_name=run_name, config=asdict(cfg),
                   tags=tags, parent_run_id=parent_run_id, force=cfg.force, uri=cfg.tracking.uri)


def run_config(client: RetryingClient, run_id: str) -> dict[str, Any]:
    """The resolved config a job logged (secrets redacted), as a plain dict."""
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, RESOLVED_CONFIG, tmp)
        return yaml.safe_load(Path(path).read_text()) or {}
