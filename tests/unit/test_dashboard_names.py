"""Names the dashboard relies on: which per-layer series are logged, sweep parent names, the run-table URL."""

from __future__ import annotations

import json

from traitlab.tracking.callbacks import sweep_run_name
from traitlab.tracking.dashboard import VIEW_COLUMNS, column_key, run_table_url, view_state
from traitlab.tracking.names import series_names


def test_series_names_drop_flat_checks_settings_and_records_but_keep_flat_measurements():
    per_layer = {
        3: {"val_accuracy": 1.0, "val_polarity_correct": 1.0, "ood_polarity_correct": 1.0, "method_C": 1.0,
            "method_n_iter": 5.0, "method_seed": 11.0, "cv_auroc_hi": 1.0},
        5: {"val_accuracy": 1.0, "val_polarity_correct": 1.0, "ood_polarity_correct": 0.0, "method_C": 1.0,
            "method_n_iter": 7.0, "method_seed": 12.0, "cv_auroc_hi": 1.0},
    }
    assert series_names(per_layer) == {"val_accuracy", "ood_polarity_correct", "method_n_iter", "cv_auroc_hi"}
    # one layer: nothing is "flat", only records are left out
    assert series_names({3: per_layer[3]}) == set(per_layer[3]) - {"method_seed"}


def test_a_check_undefined_somewhere_is_not_called_flat():
    per_layer = {1: {"val_polarity_correct": 1.0}, 2: {"val_polarity_correct": float("nan")}}
    assert series_names(per_layer) == {"val_polarity_correct"}


def test_sweep_parent_is_named_by_what_it_sweeps():
    overrides = ["trait=starter/optimism,starter/refusal", "method=mean_diff,probe", "layers='10,12'",
                 "tracking.experiment=demo", "hydra.sweep.dir=/x"]
    assert sweep_run_name("extract", overrides, "12-00-00") == "extract-sweep trait=optimism,refusal method=mean_diff,probe"
    assert sweep_run_name("extract", ["method=probe"], "12-00-00") == "extract-sweep-12-00-00"


def test_run_table_url_opens_the_classic_view_with_the_saved_columns():
    assert run_table_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=traitlab")
    state = view_state()
    assert state["selectedColumns"] == state["columnOrder"] == [column_key(k, n) for k, n, _ in VIEW_COLUMNS]
    assert "metrics.`best/cv_effect_size`" in state["selectedColumns"]
    assert "attributes.`Description`" in state["selectedColumns"]
    json.dumps(state)  # stored as JSON in an experiment tag
