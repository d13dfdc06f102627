"""Registering a served model points MLflow's fluent API at the store for that block only: afterwards the
process follows MLFLOW_TRACKING_URI again (a pinned URI would send a later job's runs to the old store)."""

from __future__ import annotations

import mlflow

from traitlab.serving.register import _mlflow_uri


def test_the_block_leaves_the_environment_in_charge(tmp_path, monkeypatch):
    first, second = (f"sqlite:///{tmp_path / n / 'mlflow.db'}" for n in ("a", "b"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", first)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", first)
    with _mlflow_uri(f"sqlite:///{tmp_path / 'served.db'}"):
        assert mlflow.get_tracking_uri().endswith("served.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", second)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", second)
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (second, second)
