"""The extract launcher end to end: a 2x2 Hydra multirun into a temp MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from traitlab.tracking.registry import best_vector, fetch_vector, find_vectors

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run_launcher(stage: str, *overrides: str, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launchers" / f"{stage}.py"), *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_extract_multirun_2x2(mlflow_store, tmp_path):
    env = dict(os.environ, TQDM_DISABLE="1")
    sweep = tmp_path / "sweep"
    proc = run_launcher("extract", "-m", "trait=starter/optimism,starter/formality", "method=mean_diff,probe",
                        "layers='10,12'", "tracking.experiment=e2e", f"hydra.sweep.dir={sweep}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(mlflow_store)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("traitlab.stage") == "extract_sweep"]
    children = [r for r in runs if r.data.tags.get("traitlab.stage") == "extract"]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    assert {(c.data.tags["trait"], c.data.tags["method"]) for c in children} == {
        (t, m) for t in ("starter/optimism", "starter/formality") for m in ("mean_diff", "probe")}
    # per-layer metrics `layer/<metric>` with step = layer and 95% bounds beside them, sample sizes and
    # `best/<metric>` summaries; params are the flattened config
    for c in children:
        for name in ("val_accuracy", "val_accuracy_lo", "val_effect_size_hi", "cv_accuracy", "ood_auroc_lo",
                     "diag_agreement", "diag_length_cos"):
            steps = {m.step for m in client.get_metric_history(c.info.run_id, f"layer/{name}")}
            assert steps == {10, 12}, name
        metrics = c.data.metrics
        assert metrics["n_val_pos"] == 7 and metrics["n_cv_pos"] == metrics["n_train_pos"]
        assert metrics["best/layer"] == int(c.data.tags["best_layer"]) in (10, 12)
        assert metrics["best/val_accuracy_lo"] <= metrics["best/val_accuracy"] <= metrics["best/val_accuracy_hi"]
        assert c.data.tags["traitlab.selection"] == "cv_effect_size"
        assert "val_accuracy" not in metrics  # the old flat per-layer names are gone
        assert c.data.params["layers"] == "10,12" and c.data.params["model.name"] == "smollm2_135m"
        files = {f.path for f in client.list_artifacts(c.info.run_id, f"vectors/residual/response/{c.data.tags['method']}")}
        assert files >= {f"vectors/residual/response/{c.data.tags['method']}/layer_{n:03d}.{ext}"
                         for n in (10, 12) for ext in ("safetensors", "json")}
        # the effective config, and where the trait's extraction.yaml settings (the global file's position) came from
        assert {f.path for f in client.list_artifacts(c.info.run_id, "config")} == {
            "config/resolved.yaml", "config/trait_overrides.json"}
    # the parent is named by what it sweeps and shows its children's curves overlaid, one folder per trait
    parent_files = []
    stack = ["figures"]
    while stack:
        for f in client.list_artifacts(parent.info.run_id, stack.pop()):
            (stack.append(f.path) if f.is_dir else parent_files.append(f.path))
    assert parent.info.run_name == "extract-sweep trait=optimism,formality method=mean_diff,probe"
    assert {p.rsplit("/", 1)[-1] for p in parent_files if "optimism" in p} >= {
        "val_accuracy_by_layer.png", "cv_effect_size_by_layer.png", "method_cosine_by_layer.png"}
    # the registry finds the vectors; the best one loads as a unit vector of the model's width
    refs = find_vectors("starter/optimism", "smollm2_135m", experiment="e2e")
    assert {(r.method, r.layer) for r in refs} == {(m, n) for m in ("mean_diff", "probe") for n in (10, 12)}
    best = best_vector("starter/optimism", "smollm2_135m", experiment="e2e")
    v = fetch_vector(best, experiment="e2e", expected_dim=576)
    assert abs(float(v.norm()) - 1.0) < 1e-4
    assert best.source == "cv_effect_size"  # no steering result yet: the cross-validated choice

    # the same command again skips every finished job (no new child runs)
    proc2 = run_launcher("extract", "-m", "trait=starter/optimism,starter/formality", "method=mean_diff,probe",
                         "layers='10,12'", "tracking.experiment=e2e", f"hydra.sweep.dir={tmp_path / 'sweep2'}", env=env)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert proc2.stdout.count("already done: skipped") == 4
    again = client.search_runs([exp.experiment_id], filter_string="tags.`traitlab.stage` = 'extract'")
    assert len(again) == 4
