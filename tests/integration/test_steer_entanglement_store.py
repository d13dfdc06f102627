"""Entanglement rows of steer runs become the model's trait x trait matrix: this run's row plus the newest
stored row of every other steered trait on the same model, in a real MLflow store."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from traitlab.tracking import steer_report as R
from traitlab.tracking.runs import job_run

MODEL = "smollm2-test"


def row(steered, measured, delta, half=0.1, n=6):
    return {"steered": steered, "measured": measured, "layer": 10, "coefficient": 5.0, "delta": delta,
            "low": delta - half, "high": delta + half, "n": n, "unsteered": 0.0, "steered_value": delta}


def steer_run(key: str, trait: str, rows: list[dict]):
    tags = {"traitlab.stage": "steer", "trait": trait, "model": MODEL}
    return job_run(experiment="ent", job_key=key, run_name=key, config={}, tags=tags)


def test_matrix_holds_this_run_and_the_newest_row_of_every_other_trait(mlflow_store):
    old = [row("starter/formality", "starter/formality", 9.0), row("starter/formality", "starter/optimism", 9.0)]
    new = [row("starter/formality", "starter/formality", 0.8), row("starter/formality", "starter/optimism", 0.05)]
    for key, rows in (("old", old), ("new", new)):
        with steer_run(key, "starter/formality", rows) as run:
            R.log_entanglement(run, SimpleNamespace(entanglement=rows, trait="starter/formality"))
    mine = [row("starter/optimism", "starter/optimism", 0.6), row("starter/optimism", "starter/formality", -0.3)]
    with steer_run("mine", "starter/optimism", mine) as run:
        R.log_entanglement(run, SimpleNamespace(entanglement=mine, trait="starter/optimism"))
        client, run_id = run.client, run.run_id
    metrics = client.get_run(run_id).data.metrics
    assert metrics["entanglement/starter/formality_delta"] == pytest.approx(-0.3)
    assert metrics["entanglement/starter/formality_delta_hi"] == pytest.approx(-0.2)
    assert metrics["entanglement/n_starter/optimism"] == 6
    with tempfile.TemporaryDirectory() as tmp:
        doc = json.loads(Path(client.download_artifacts(run_id, "tables/entanglement_matrix.json", tmp)).read_text())
    cells = {(r[0], r[1]): r[2] for r in doc["data"]}
    # this run's row, and formality's NEWEST run (0.8 / 0.05), never the older 9.0
    assert cells == {("starter/optimism", "starter/optimism"): 0.6, ("starter/optimism", "starter/formality"): -0.3,
                     ("starter/formality", "starter/formality"): 0.8, ("starter/formality", "starter/optimism"): 0.05}
    assert "figures/entanglement_matrix.png" in {f.path for f in client.list_artifacts(run_id, "figures")}
