"""launchers/infer.py and launchers/analyze.py end to end by subprocess, on the smoke prompt set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.pipelines.extract import run_extract

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run_launcher(
    stage: str, *overrides: str, env: dict[str, str], timeout: int = 900
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "launchers" / f"{stage}.py"), *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_infer_launcher_on_smoke_set(mlflow_store, tmp_path, smollm2):
    run_extract(
        ExtractConfig(
            trait=TraitConfig(name="starter/optimism"),
            method=MethodConfig(name="mean_diff"),
            layers="10,12",
            tracking=TrackingConfig(experiment="e2e"),
        ),
        lm=smollm2,
    )
    env = dict(os.environ, TQDM_DISABLE="1")
    common = [
        "prompt_set=smoke",
        "inference.max_prompts=2",
        "inference.generation.max_new_tokens=16",
        "tracking.experiment=e2e",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    proc = run_launcher("infer", *common, "layers='best,10'", "inference.score_mode=cosine", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = re.search(r"MLflow run: ([0-9a-f]{32})", proc.stdout).group(1)
    page = re.search(r"first view: (\S+)\s+\((\S+)\)", proc.stdout)
    assert page.group(1) == "views/prompts/s01.html"
    html = Path(page.group(2).removeprefix("file://"))
    assert html.is_file() and "data-score" in html.read_text()

    client = MlflowClient(mlflow_store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["traits"] == "starter/optimism" and run.data.tags["score_mode"] == "cosine"
    best = run.data.tags["layers"].split(",")
    assert "10" in best and set(best) <= {"10", "12"}
    assert run.data.params["inference.score_mode"] == "cosine" and run.data.params["prompt_set"] == "smoke"
    assert {f.path for f in client.list_artifacts(run_id, "views")} == {"views/index.html", "views/prompts"}

    # the same command skips; an error is one line with exit code 2
    again = run_launcher("infer", *common, "layers='best,10'", "inference.score_mode=cosine", env=env)
    assert again.returncode == 0 and "already done: skipped" in again.stdout
    assert f"MLflow run: {run_id}" in again.stdout and "first view: views/prompts/s01.html" in again.stdout
    bad = run_launcher("infer", *common, "mode=streem", env=env)
    assert bad.returncode == 2
    err = bad.stderr.strip().splitlines()
    assert (
        len(err) == 1 and "mode: 'streem' is not one of stream, capture, reproject, from_responses" in err[0]
    )

    # the analysis launcher reads the same store
    ana = run_launcher(
        "analyze",
        "analysis=top_spans",
        f"analysis.source_run={run_id}",
        "analysis.window=3",
        "tracking.experiment=e2e",
        f"hydra.run.dir={tmp_path / 'hydra2'}",
        env=env,
    )
    assert ana.returncode == 0, ana.stderr[-3000:]
    ana_id = re.search(r"MLflow run: ([0-9a-f]{32}) \(top_spans\)", ana.stdout).group(1)
    assert client.get_run(ana_id).data.tags["source_run"] == run_id

    # clauses over a list of runs (Hydra list syntax); a bad unit is one line, before anything runs
    clauses = run_launcher(
        "analyze", "analysis=top_spans", "analysis.unit=clause", f"analysis.source_run=[{run_id}]",
        "tracking.experiment=e2e", f"hydra.run.dir={tmp_path / 'hydra3'}", env=env,
    )
    assert clauses.returncode == 0, clauses.stderr[-3000:]
    cl_id = re.search(r"MLflow run: ([0-9a-f]{32}) \(top_spans\)", clauses.stdout).group(1)
    assert client.get_run(cl_id).data.params["analysis.unit"] == "clause"
    assert "tables/top_spans_by_source.json" in {f.path for f in client.list_artifacts(cl_id, "tables")}
    bad = run_launcher("analyze", "analysis=top_spans", "analysis.unit=sentence", "tracking.experiment=e2e",
                       f"hydra.run.dir={tmp_path / 'hydra4'}", env=env)
    err = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(err) == 1 and "analysis.unit: 'sentence' is not one of window, clause" in err[0]
