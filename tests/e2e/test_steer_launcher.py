"""Extract, then steer, through the launchers, offline on SmolLM2 (in-process judge), into a temp MLflow store."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from traitlab.models.identity import identity_of
from traitlab.models.loading import ModelSpec
from traitlab.tracking.artifacts import slug
from traitlab.tracking.registry import best_vector, steering_results

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
EXP = "e2e-steer"
STEER = ("trait=starter/optimism", "method=mean_diff", "judge=hf_local", "judge.perplexity_combine=perplexity",
         "steering.scorer=sentiment", "steering.propensity.max_pairs=6", "layers='10,12'", "steering.n_questions=2",
         "steering.steps=2", "steering.max_new_tokens=16", f"tracking.experiment={EXP}")


def launch(stage: str, *overrides: str, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TQDM_DISABLE="1")
    return subprocess.run([sys.executable, str(ROOT / "launchers" / f"{stage}.py"), *overrides,
                           f"hydra.run.dir={tmp / 'hydra' / stage}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def artifacts(client: MlflowClient, run_id: str) -> set[str]:
    out, stack = set(), [None]
    while stack:
        for f in client.list_artifacts(run_id, stack.pop()):
            (stack.append(f.path) if f.is_dir else out.add(f.path))
    return out


def table(client: MlflowClient, run_id: str, path: str, tmp: Path) -> list[dict]:
    doc = json.loads(Path(client.download_artifacts(run_id, path, str(tmp))).read_text())
    return [dict(zip(doc["columns"], row, strict=True)) for row in doc["data"]]


def test_extract_then_steer_end_to_end(mlflow_store, tmp_path):
    ex = launch("extract", "trait=starter/optimism", "method=mean_diff", "layers='10,12'",
                f"tracking.experiment={EXP}", tmp=tmp_path)
    assert ex.returncode == 0, ex.stderr[-3000:]
    proc = launch("steer", *STEER, tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| layer | coef (x base) | coherence | propensity delta [95% CI] |" in proc.stdout  # the table

    client = MlflowClient(mlflow_store)
    exp = client.get_experiment_by_name(EXP)
    runs = client.search_runs([exp.experiment_id], "tags.`traitlab.stage` = 'steer'")
    assert len(runs) == 1
    run = runs[0]
    extract_run = client.search_runs([exp.experiment_id], "tags.`traitlab.stage` = 'extract'")[0]
    tags = run.data.tags
    assert run.info.status == "FINISHED"
    assert {k: tags[k] for k in ("trait", "model", "method", "component", "position", "traitlab.vector_run_id",
                                 "traitlab.objective", "traitlab.threshold")} == {
        "trait": "starter/optimism", "model": identity_of(ModelSpec()).key, "method": "mean_diff",
        "component": "residual", "position": "response[:]", "traitlab.vector_run_id": extract_run.info.run_id,
        "traitlab.objective": "propensity", "traitlab.threshold": "90.0"}  # coherence from perplexity alone
    assert run.data.params["judge.backend"] == "hf_local"

    # per-layer metrics with step = layer, baselines and the prompted delta beside them
    for name in ("layer/activation_norm", "layer/base_coefficient", "layer/n_trials"):
        assert {m.step for m in client.get_metric_history(run.info.run_id, name)} == {10, 12}, name
    assert {"unsteered/propensity", "unsteered/trait", "unsteered/sentiment", "prompted/propensity_delta_lo",
            "prompted/trait_delta"} <= set(run.data.metrics)
    best = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "layer/objective_delta")}
    low = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "layer/objective_delta_lo")}
    assert best, "no layer had a coherent trial"
    for name in ("layer/coherence", "layer/coefficient", "layer/trait_delta", "layer/sentiment_delta",
                 "layer/steerability"):
        assert {m.step for m in client.get_metric_history(run.info.run_id, name)} == set(best), name
    assert all(m.value >= 90.0 for m in client.get_metric_history(run.info.run_id, "layer/coherence"))

    files = artifacts(client, run.info.run_id)
    assert {"tables/responses.json", "tables/optuna_trials.json", "tables/steering_summary.json",
            "optuna/studies.json", "figures/steering_layer_010.png", "figures/steering_layer_012.png",
            "figures/propensity_layer_010.png", "steering_table.md", "config/resolved.yaml"} <= files
    rows = table(client, run.info.run_id, "tables/responses.json", tmp_path)
    steered = [r for r in rows if r["condition"] == "steered"]
    assert len(rows) == 2 + 2 + len(steered) and len(steered) == 2 * 2 * 2  # baselines + layers x steps x questions
    assert {int(r["layer"]) for r in steered} == {10, 12}
    assert all(isinstance(r["response"], str) and r["coherence"] is not None and r["scorer"] is not None
               for r in rows)
    trials = table(client, run.info.run_id, "tables/optuna_trials.json", tmp_path)
    assert len(trials) == 4 and "user_attrs_responses" not in trials[0] and "user_attrs_margins" not in trials[0]

    # the Optuna studies are on disk, one per layer, and hold exactly the trials that were logged
    studies = Path(os.environ.get("TRAITLAB_OUTPUTS", "")) / "studies"
    db = studies / slug(identity_of(ModelSpec()).key) / "starter" / "optimism.db"
    with sqlite3.connect(db) as conn:
        per_study = dict(conn.execute("SELECT s.study_name, COUNT(t.trial_id) FROM studies s JOIN trials t "
                                      "ON s.study_id = t.study_id GROUP BY s.study_name").fetchall())
    assert sorted(per_study.values()) == [2, 2] and all(".L010." in n or ".L012." in n for n in per_study)

    # the registry now prefers the steering result (interval above zero) over the extraction metrics
    assert {r["layer"] for r in steering_results("starter/optimism", "smollm2_135m", experiment=EXP)} == set(best)
    trusted = {lyr: d for lyr, d in best.items() if low.get(lyr, -1) > 0}
    assert trusted, f"no interval above zero: {best} {low}"
    ref = best_vector("starter/optimism", "smollm2_135m", experiment=EXP)
    assert ref.source == "steering_delta" and ref.layer == max(trusted, key=trusted.get)
    assert ref.score == pytest.approx(trusted[ref.layer])

    # the same command again finds the finished run and skips it
    again = launch("steer", *STEER, tmp=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already done: skipped" in again.stdout
    assert len(client.search_runs([exp.experiment_id], "tags.`traitlab.stage` = 'steer'")) == 1
