"""Hydra launchers on the extract app: basic (jobs share one in-process model), joblib and submitit_local
(jobs in other processes), each multirun giving ONE MLflow parent run with its children; cluster configs
(slurm, ray) compose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from traitlab.tracking.callbacks import PARENT_FILE

ROOT = Path(__file__).resolve().parents[2]
LOADED = "loaded smollm2_135m in"
BASE = ("trait=starter/optimism", "method=mean_diff,probe", "layers='1,3'")


def multirun(tmp_path: Path, experiment: str, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    sweep = tmp_path / f"sweep-{experiment}"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launchers" / "extract.py"), "-m", *BASE, f"tracking.experiment={experiment}",
         f"hydra.sweep.dir={sweep}", *overrides],
        cwd=ROOT, env=dict(os.environ, TQDM_DISABLE="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, sweep


def check_parent_and_children(uri: str, experiment: str, sweep: Path) -> list:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=50)
    parents = [r for r in runs if r.data.tags.get("traitlab.stage") == "extract_sweep"]
    children = [r for r in runs if r.data.tags.get("traitlab.stage") == "extract"]
    assert len(parents) == 1 and len(children) == 2
    parent_id = parents[0].info.run_id
    assert (sweep / PARENT_FILE).read_text().strip() == parent_id
    assert parents[0].info.status == "FINISHED"
    assert all(c.data.tags["mlflow.parentRunId"] == parent_id and c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.tags["method"] for c in children) == ["mean_diff", "probe"]
    return children


def job_logs(sweep: Path) -> dict[int, str]:
    return {int(d.name): (d / "extract.log").read_text() for d in sweep.iterdir()
            if d.name.isdigit() and (d / "extract.log").is_file()}


@pytest.mark.slow
def test_basic_multirun_loads_the_model_once(mlflow_store, tmp_path):
    proc, sweep = multirun(tmp_path, "basic")
    check_parent_and_children(mlflow_store, "basic", sweep)
    logs = job_logs(sweep)
    assert set(logs) == {0, 1}
    # one process, two jobs: the first job loads SmolLM2, the second gets the same object from the cache
    assert LOADED in logs[0] and LOADED not in logs[1]
    assert proc.stderr.count(LOADED) == 1


@pytest.mark.slow
def test_joblib_multirun_one_parent_two_children(mlflow_store, tmp_path):
    proc, sweep = multirun(tmp_path, "joblib", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    children = check_parent_and_children(mlflow_store, "joblib", sweep)
    logs = job_logs(sweep)
    # two worker processes: each loaded its own copy (and wrote its own job log)
    assert set(logs) == {0, 1} and all(LOADED in text for text in logs.values())
    assert {c.data.tags["layers"] for c in children} == {"1,3"}


@pytest.mark.slow
def test_submitit_local_multirun_one_parent_two_children(mlflow_store, tmp_path):
    proc, sweep = multirun(tmp_path, "submitit", "hydra/launcher=local_submitit")
    check_parent_and_children(mlflow_store, "submitit", sweep)
    # submitit ran each job as its own process with its own log files
    job_dirs = [d for d in (sweep / ".submitit").iterdir() if d.is_dir() and d.name.isdigit()]
    assert len(job_dirs) == 2
    assert all(any(d.glob("*_result.pkl")) for d in job_dirs)
    assert all(LOADED in text for text in job_logs(sweep).values())


@pytest.mark.parametrize(("launcher", "target", "keys"), [
    ("local_parallel", "hydra_joblib_launcher.joblib_launcher.JoblibLauncher", {"n_jobs": 2, "backend": "loky"}),
    ("local_submitit", "hydra_submitit_launcher.submitit_launcher.LocalLauncher", {"gpus_per_node": 0}),
    ("slurm", "hydra_submitit_launcher.submitit_launcher.SlurmLauncher", {"gpus_per_node": 1, "max_num_timeout": 0}),
    ("ray_cluster", "hydra_ray_launcher.ray_launcher.RayLauncher", {}),
])
def test_launcher_configs_compose(launcher, target, keys):
    from hydra import compose, initialize_config_dir

    from traitlab.cli import bootstrap, conf_path

    bootstrap()
    with initialize_config_dir(config_dir=conf_path(), version_base="1.3"):
        cfg = compose("extract", overrides=[f"hydra/launcher={launcher}", "hydra.launcher.timeout_min=5"]
                      if "submitit" in target else [f"hydra/launcher={launcher}"], return_hydra_config=True)
    conf = cfg.hydra.launcher
    assert conf._target_ == f"hydra_plugins.{target}"
    assert {k: conf[k] for k in keys} == keys
    if launcher == "ray_cluster":
        assert conf.ray.remote.num_gpus == 1
