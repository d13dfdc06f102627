"""What stage 1 leaves in MLflow for the UI: series worth charting, the trait as a dataset input, a verdict
line, readable figures; and a sweep's parent that compares its children (real SmolLM2, real store)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from traitlab.data import load_trait, resolve_trait_dir
from traitlab.tracking.artifacts import load_vector, vector_path

pytestmark = pytest.mark.slow

LAYERS = {8, 10, 12, 14}


def _files(client, run_id, path=""):
    out, stack = set(), [path]
    while stack:
        for f in client.list_artifacts(run_id, stack.pop() or None):
            (stack.append(f.path) if f.is_dir else out.add(f.path))
    return out


def _table(client, run_id, path, tmp_path):
    local = client.download_artifacts(run_id, path, str(tmp_path))
    t = json.loads(Path(local).read_text())
    return [dict(zip(t["columns"], row, strict=True)) for row in t["data"]]


def test_child_logs_charted_series_dataset_input_verdict_and_figures(extract_sweep, tmp_path):
    client = MlflowClient(extract_sweep.uri)
    trait = load_trait(resolve_trait_dir("starter/optimism", None))
    for run_id in extract_sweep.child_run_ids:
        run = client.get_run(run_id)
        metrics = run.data.metrics
        rows = _table(client, run_id, "tables/metrics_by_layer.json", tmp_path / run_id)
        # a check or setting equal at every layer is not a flat series; its value stays in best/
        flat = {k for k in rows[0] if (k.endswith("_polarity_correct") or k.startswith("method_"))
                and len({json.dumps(r[k]) for r in rows}) == 1}
        assert flat, "expected at least one check equal at every layer on this data"
        for name in flat - {"method_seed"}:
            assert f"layer/{name}" not in metrics and f"best/{name}" in metrics, name
        # records are not metrics; measurements stay series even where constant
        assert not any(k.endswith("method_seed") for k in metrics)
        for name in ("val_accuracy", "cv_effect_size", "cv_effect_size_lo", "ood_accuracy_hi", "baseline"):
            assert {m.step for m in client.get_metric_history(run_id, f"layer/{name}")} == LAYERS, name
        # the trait is the run's dataset input, with its sizes
        (di,) = run.inputs.dataset_inputs
        profile = json.loads(di.dataset.profile)
        assert di.dataset.name == "starter/optimism" and di.dataset.digest == trait.fingerprint()[:8]
        assert (profile["n_pos"], profile["n_neg"]) == (len(trait.positive), len(trait.negative))
        assert (profile["n_ood_pos"], profile["n_ood_neg"]) == (len(trait.ood_positive), len(trait.ood_negative))
        assert profile["n_val_pos"] == metrics["n_val_pos"] and profile["n_train_neg"] == metrics["n_train_neg"]
        assert {t.key: t.value for t in di.tags}["mlflow.data.context"] == "extraction"
        # the description's first line is a plain verdict (what the Description column shows)
        first = run.data.tags["mlflow.note.content"].splitlines()[0]
        best = int(metrics["best/layer"])
        assert first.startswith(f"best layer {best}: cv d {metrics['best/cv_effect_size']:.2f} [")
        assert f"n {int(metrics['n_train_pos'])}+{int(metrics['n_train_neg'])} train" in first and "**" not in first
        files = _files(client, run_id, "figures")
        assert {"figures/accuracy_by_layer.png", "figures/effect_size_by_layer.png",
                "figures/projections_best_layer.png"} <= files
        assert "figures/layer_method_heatmap.png" not in files  # a 1-row strip said nothing


def test_sweep_parent_names_the_winner_and_holds_the_best_of_each_child(extract_sweep, tmp_path):
    client = MlflowClient(extract_sweep.uri)
    parent = client.get_run(extract_sweep.parent_run_id)
    children = {client.get_run(r).data.tags["method"]: client.get_run(r) for r in extract_sweep.child_run_ids}
    pm = parent.data.metrics
    for method, child in children.items():
        cm = child.data.metrics
        for name in ("layer", "cv_effect_size", "cv_effect_size_lo", "cv_effect_size_hi", "val_accuracy"):
            assert pm[f"best/{method}/{name}"] == pytest.approx(cm[f"best/{name}"], abs=1e-4), (method, name)
    ranked = sorted(children, key=lambda m: children[m].data.metrics["best/cv_effect_size"], reverse=True)
    winner, runner = children[ranked[0]], children[ranked[1]]
    wm = winner.data.metrics
    # the parent's own cells are the winner's, so its row lines up with the children's columns
    assert parent.data.tags["method"] == ranked[0] and parent.data.tags["trait"] == "starter/optimism"
    assert parent.data.tags["traitlab.winner_run_id"] == winner.info.run_id
    assert pm["best/cv_effect_size"] == wm["best/cv_effect_size"] and pm["best/layer"] == wm["best/layer"]
    assert pm["n_cv_pos"] == wm["n_cv_pos"]
    note = parent.data.tags["mlflow.note.content"].splitlines()
    overlap = wm["best/cv_effect_size_lo"] <= runner.data.metrics["best/cv_effect_size_hi"]
    # the headline (what the Description cell shows), then both intervals and the n
    assert note[0] == (f"winner {ranked[0]} L{int(wm['best/layer'])} (cv d {wm['best/cv_effect_size']:.2f} vs "
                       f"{ranked[1]} {runner.data.metrics['best/cv_effect_size']:.2f}: intervals "
                       f"{'overlap' if overlap else 'apart'})")
    assert note[2].startswith(f"- cv_effect_size {wm['best/cv_effect_size']:.2f} [{wm['best/cv_effect_size_lo']:.2f}, ")
    assert ("may be noise" in note[2]) == overlap and f"n {int(wm['n_cv_pos'])}+{int(wm['n_cv_neg'])} (cv)" in note[2]
    rows = _table(client, parent.info.run_id, "tables/children.json", tmp_path)
    assert {r["run_id"] for r in rows} == set(extract_sweep.child_run_ids)
    assert {r["method"]: r["best_layer"] for r in rows} == {m: c.data.metrics["best/layer"] for m, c in children.items()}
    (di,) = parent.inputs.dataset_inputs  # both children used the same trait data
    assert di.dataset.name == "starter/optimism"
    # cosine between the methods' vectors per layer, from the vector files themselves
    series = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, "layer/cosine/mean_diff_vs_probe")}
    assert set(series) == LAYERS
    for layer in LAYERS:
        a, b = (load_vector(client.download_artifacts(children[m].info.run_id,
                                                      vector_path("residual", "response[:]", m, layer),
                                                      str(tmp_path / m)))[0] for m in ("mean_diff", "probe"))
        assert series[layer] == pytest.approx(float(a @ b) / float(a.norm() * b.norm()), abs=1e-4)
        assert math.isfinite(series[layer])
    files = _files(client, parent.info.run_id, "figures")
    assert {"figures/val_accuracy_by_layer.png", "figures/ood_accuracy_by_layer.png",
            "figures/cv_effect_size_by_layer.png", "figures/ood_effect_size_by_layer.png",
            "figures/method_cosine_by_layer.png"} <= files
