"""Every experiment traitlab writes to lands on the classic run table with traitlab's columns and a description."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from traitlab.tracking.dashboard import main, view_state
from traitlab.tracking.store import ensure_store


def test_ensure_store_gives_the_experiment_kind_view_and_description(mlflow_store):
    _, exp_id = ensure_store(experiment="dash")
    client = MlflowClient(mlflow_store)
    tags = client.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.traitlab"])
    # the envelope MLflow 3.17's saved views read: a string name, a numeric createdAt, the state as a string
    assert view["name"] == "traitlab: verdicts" and isinstance(view["createdAt"], int)
    assert json.loads(view["state"]) == view_state()
    assert tags["mlflow.note.content"].startswith("**dash**: traitlab runs")

    # a description a person wrote survives; an outdated view is replaced, a current one is left alone
    client.set_experiment_tag(exp_id, "mlflow.note.content", "my notes")
    client.set_experiment_tag(exp_id, "mlflow.sharedViewState.traitlab", json.dumps({"name": "old", "state": "{}"}))
    ensure_store(experiment="dash")
    tags = client.get_experiment(exp_id).tags
    assert tags["mlflow.note.content"] == "my notes"
    assert json.loads(json.loads(tags["mlflow.sharedViewState.traitlab"])["state"]) == view_state()
    before = tags["mlflow.sharedViewState.traitlab"]
    ensure_store(experiment="dash")
    assert client.get_experiment(exp_id).tags["mlflow.sharedViewState.traitlab"] == before


def test_dashboard_command_prepares_older_experiments_and_prints_their_run_tables(mlflow_store, capsys):
    client = MlflowClient(mlflow_store)
    ensure_store(experiment="first")
    old = client.create_experiment("made-elsewhere")  # e.g. an experiment created before this version
    assert main(["--base", "http://127.0.0.1:5055"]) == 0
    out = capsys.readouterr().out
    assert f"made-elsewhere: http://127.0.0.1:5055/#/experiments/{old}/runs?workflowType=machine_learning" in out
    tags = client.get_experiment(old).tags
    assert "mlflow.sharedViewState.traitlab" in tags and tags["mlflow.note.content"]
