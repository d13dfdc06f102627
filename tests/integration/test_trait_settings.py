"""A trait's extraction.yaml reaches the run: the logged config holds the effective values and says where
each came from (real SmolLM2, real MLflow store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pair_trait import write_pair_trait

from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.pipelines.extract import run_extract

pytestmark = pytest.mark.slow

def test_trait_settings_are_applied_and_logged(tmp_path, mlflow_store, smollm2):
    trait = write_pair_trait(tmp_path / "mine" / "cheer", "position: 'response[:2]'\nlayers: '3,5'\nval_split: 0.34\n")
    cfg = ExtractConfig(trait=TraitConfig(path=str(trait)), method=MethodConfig(name="mean_diff"),
                        tracking=TrackingConfig(experiment="settings"))
    res = run_extract(cfg, lm=smollm2, command_line={"extraction.val_split"})
    assert res.layers == [3, 5]
    run = MlflowClient(mlflow_store).get_run(res.run_id)
    assert run.data.params["position.spec"] == "response[:2]" and run.data.tags["position"] == "response[:2]"
    assert run.data.params["layers"] == "3,5"
    assert run.data.params["extraction.val_split"] == "0.1"  # set on the command line: kept
    report = json.loads(Path(MlflowClient(mlflow_store).download_artifacts(
        res.run_id, "config/trait_overrides.json", str(tmp_path))).read_text())
    assert report["position.spec"] == {"value": "response[:2]", "source": f"{trait / 'extraction.yaml'}:1",
                                       "applied": True}
    assert report["extraction.val_split"]["applied"] is False
