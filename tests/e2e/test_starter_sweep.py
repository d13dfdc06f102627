"""`experiment=starter_sweep` as the README types it: every starter trait x {mean_diff, probe} as one multirun
(on a reduced layer list), followed by the cross-trait normalisation step over the sweep's traits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from traitlab.data import list_traits

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STARTER = [t for t in list_traits(ROOT / "datasets" / "traits") if t.startswith("starter/")]
FAST = ["layers='2,3'", "extraction.cv_folds=0", "extraction.n_bootstrap=200"]  # the forward stops after layer 3


def readme_command(pattern: str) -> list[str]:
    line = next(x for x in (ROOT / "README.md").read_text().splitlines() if re.match(pattern, x))
    return line.split("#")[0].split()[2:]  # the arguments after `python launchers/extract.py`


def run(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launchers" / "extract.py"), *args], cwd=ROOT,
                          env=dict(os.environ, TQDM_DISABLE="1"), capture_output=True, text=True, timeout=1800)


def test_starter_sweep_then_normalisation(mlflow_store, tmp_path):
    args = readme_command(r"python launchers/extract.py \+experiment=starter_sweep")
    assert args == ["+experiment=starter_sweep"]  # no -m: the preset makes it a multirun
    proc = run(*args, *FAST, "normalize.center=true", "normalize.denoise=neutral", "tracking.experiment=sweep",
               f"hydra.sweep.dir={tmp_path / 'sweep'}", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(mlflow_store)
    exp = client.get_experiment_by_name("sweep")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get("traitlab.stage") == "extract_sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    extracted = [r for r in children if "normalization" not in r.data.tags]
    normalized = [r for r in children if r.data.tags.get("normalization") == "center+denoise"]
    pairs = {(t, m) for t in STARTER for m in ("mean_diff", "probe")}
    assert len(STARTER) == 6 and len(extracted) == 12 == len(normalized)
    for group in (extracted, normalized):
        assert {(r.data.tags["trait"], r.data.tags["method"]) for r in group} == pairs
        assert all(r.info.status == "FINISHED" and r.data.tags["component"] == "residual" for r in group)
        for r in group:
            steps = {m.step for m in client.get_metric_history(r.info.run_id, "layer/val_effect_size")}
            assert steps == {2, 3}
    by_id = {r.info.run_id: r for r in extracted}
    for r in normalized:  # each normalised run names the sweep's own run of its trait and method as its source
        src = by_id[r.data.tags["traitlab.source_run"]]
        assert (src.data.tags["trait"], src.data.tags["method"]) == (r.data.tags["trait"], r.data.tags["method"])
        assert len(r.data.tags["traitlab.source_runs"].split(",")) == 6
        assert r.data.metrics["layer/n_denoise_pcs"] >= 1
    assert int(parents[0].data.tags["traitlab.children"]) == 24
    # the parent's comparison tells each normalised child from the raw child of the same trait and method
    local = client.download_artifacts(parents[0].info.run_id, "tables/children.json", str(tmp_path))
    table = json.loads(Path(local).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert sorted((r["trait"], r["method"], r["normalization"]) for r in rows) == sorted(
        (t, m, n) for t, m in pairs for n in ("raw", "center+denoise"))

    # a bad normalisation setting fails before any model loads, with one line naming the key
    bad = run("-m", "+experiment=starter_sweep", *FAST, "normalize.denoise=no_such_set", "tracking.experiment=sweep",
              f"hydra.sweep.dir={tmp_path / 'bad'}", tmp=tmp_path)
    assert bad.returncode == 2 and "normalize.denoise" in bad.stderr and "Traceback" not in bad.stderr
