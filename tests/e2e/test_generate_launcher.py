"""launchers/generate.py by subprocess: a multirun sweep over coefficients under one parent run (typed as in
bash), and the same job from Python (traitlab.api composes the same config and job key, so it finds the run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from traitlab import api
from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.pipelines.extract import run_extract

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
COMMON = ["vectors=starter/optimism", "layers=10", "prompt=Describe your Monday.", "generation.max_new_tokens=8",
          "tracking.experiment=e2e-gen"]


def _launch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TQDM_DISABLE="1")
    return subprocess.run([sys.executable, str(ROOT / "launchers" / "generate.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_generate_sweep_and_the_api_finding_its_run(mlflow_store, tmp_path, smollm2):
    run_extract(ExtractConfig(trait=TraitConfig(name="starter/optimism"), method=MethodConfig(name="mean_diff"),
                              layers="10", tracking=TrackingConfig(experiment="e2e-gen")), lm=smollm2)
    sweep = _launch("-m", *COMMON, "coefficient=0,16", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert sweep.stdout.count("unsteered:") == 2
    assert re.search(r"starter/optimism L10: .* shift .* \(n=1\)", sweep.stdout)
    parent = re.search(r"MLflow parent run: ([0-9a-f]{32})", sweep.stdout).group(1)
    client = MlflowClient(mlflow_store)
    kids = client.search_runs([client.get_run(parent).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    by_coef = {r.data.params["coefficient"]: r for r in kids}
    assert sorted(by_coef) == ["0", "16"]
    zero = by_coef["0"].info.run_id
    table = client.load_table(experiment_id=by_coef["0"].info.experiment_id, artifact_file="tables/side_by_side.json",
                              run_ids=[zero])
    assert list(table["unsteered"]) == list(table["steered"])  # coefficient 0 changes nothing
    assert [m.value for m in client.get_metric_history(zero, "layer/shift/starter/optimism")] == [0.0]
    sweep_table = json.loads(Path(client.download_artifacts(parent, "tables/generate_sweep.json")).read_text())
    rows = [dict(zip(sweep_table["columns"], r, strict=True)) for r in sweep_table["data"]]
    assert sorted((r["coefficient"], r["trait"], r["layer"]) for r in rows) == [
        ("0", "starter/optimism", 10), ("16", "starter/optimism", 10)]
    assert next(r["shift"] for r in rows if r["coefficient"] == "0") == 0.0

    # the same job from Python: the notebook composes the CLI's config exactly, so it finds that run
    same = api.generate(vectors="starter/optimism", layers=10, prompt="Describe your Monday.", coefficient=16,
                        generation={"max_new_tokens": 8}, tracking={"experiment": "e2e-gen"}, lm=smollm2)
    assert same.skipped and same.run_id == by_coef["16"].info.run_id
