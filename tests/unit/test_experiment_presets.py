"""Experiment presets stay in step with the data they sweep."""

from __future__ import annotations

from pathlib import Path

import yaml

from traitlab.data import list_traits

ROOT = Path(__file__).resolve().parents[2]
TRAITS = ROOT / "datasets" / "traits"


def test_starter_sweep_preset_covers_every_starter_trait_and_both_methods():
    preset = yaml.safe_load((ROOT / "conf" / "experiment" / "starter_sweep.yaml").read_text())
    params = preset["hydra"]["sweeper"]["params"]
    assert preset["hydra"]["mode"] == "MULTIRUN"
    assert sorted(params["trait"].split(",")) == [t for t in list_traits(TRAITS) if t.startswith("starter/")]
    assert params["method"].split(",") == ["mean_diff", "probe"]
    assert {"override /component": "residual"} in preset["defaults"]
