"""A steer run on the real SmolLM2 with capability measured and the capability constraint on: the unsteered
accuracy equals a direct multiple-choice scoring, every trial's feasibility obeys both constraints, the
metrics follow the dashboard names, and the run's report holds every response in full and its verdict;
headless Chromium sorts the browser's table inside the page."""

from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from browser import WebDriver, mlflow_server, require_chromedriver, require_chromium
from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.config.steer import CapabilityConfig, PropensityConfig, SteerConfig, SteeringConfig
from traitlab.data.multiple_choice import load_choice_set
from traitlab.models.multiple_choice import score_choices
from traitlab.pipelines.extract import run_extract
from traitlab.pipelines.steer import run_steer

pytestmark = pytest.mark.slow
TRAIT = "starter/optimism"
N_ITEMS = 4


@pytest.fixture(scope="module")
def steered(smollm2, tmp_path_factory):
    root = tmp_path_factory.mktemp("steer_report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
        mp.setenv("TRAITLAB_OUTPUTS", str(root / "outputs"))
        run_extract(ExtractConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"), layers="10",
                                  tracking=TrackingConfig(experiment="report")), lm=smollm2)
        # max_capability_drop=0.25: a trial that loses more than one of the 4 items is infeasible, whatever its
        # coherence
        cfg = SteerConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"), layers="10",
                          steering=SteeringConfig(n_questions=2, steps=3, max_new_tokens=10, start_mult=0.5,
                                                  propensity=PropensityConfig(max_pairs=4),
                                                  capability=CapabilityConfig(set="starter", n_items=N_ITEMS),
                                                  max_capability_drop=0.25,
                                                  entanglement=["starter/formality"]),
                          tracking=TrackingConfig(experiment="report"))
        yield run_steer(cfg, lm=smollm2), MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def test_capability_is_measured_and_constrains_the_search(steered, smollm2):
    res, _ = steered
    items = load_choice_set("starter").items[:N_ITEMS]
    direct = score_choices(smollm2, items, [None], scoring="text")[0]
    assert res.baselines["unsteered"].capability.correct == direct.correct
    trials = res.per_layer[10].trials
    assert len(trials) == 3
    for t in trials:
        cap = t["capability"]
        assert cap["n"] == N_ITEMS and cap["delta"] == pytest.approx(cap["accuracy"] - direct.accuracy)
        assert t["feasible"] == (t["coherence"] >= res.threshold and cap["delta"] >= -0.25)


def test_entanglement_row_measures_the_steered_trait_as_the_search_did(steered):
    res, client = steered
    best = res.per_layer[10].best
    assert best is not None, "no feasible trial: the entanglement row is only measured at a chosen coefficient"
    rows = {r["measured"]: r for r in res.entanglement}
    assert list(rows) == ["starter/optimism", "starter/formality"]
    # the diagonal is the steered trait's own propensity shift on the same held-out pairs, measured again in a
    # different batch: it equals the search's delta (optimism steers toward the trait, direction +1)
    d = best["deltas"]["propensity"]
    assert rows["starter/optimism"]["n"] == d["n"] == 4
    assert rows["starter/optimism"]["delta"] == pytest.approx(d["delta"], abs=1e-3)
    assert rows["starter/formality"]["n"] == 4 and rows["starter/formality"]["coefficient"] == best["coefficient"]
    m = client.get_run(res.run_id).data.metrics
    assert m["entanglement/starter/formality_delta"] == pytest.approx(rows["starter/formality"]["delta"], rel=1e-3)
    assert "Propensity shift at the chosen coefficient" in client.get_run(res.run_id).data.tags["mlflow.note.content"]


def test_metrics_note_and_report(steered):
    res, client = steered
    run = client.get_run(res.run_id)
    m = run.data.metrics
    assert m["unsteered/n_capability"] == N_ITEMS
    assert m["unsteered/capability_accuracy"] == pytest.approx(res.baselines["unsteered"].capability.accuracy)
    assert "prompted/capability_delta" in m and "prompted/capability_delta_lo" in m
    best = res.per_layer[10].best
    if best is not None:
        hist = client.get_metric_history(res.run_id, "layer/capability_accuracy")
        assert [(h.step, h.value) for h in hist] == [(10, pytest.approx(best["capability"]["accuracy"], abs=1e-4))]
        assert m["best/capability_delta"] == pytest.approx(best["capability"]["delta"], abs=1e-4)
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(("Best layer 10", "No coherent coefficient")) and "Sample sizes: 2 questions" in note
    assert "Capability (4 items): unsteered" in note
    files = {f.path for f in client.list_artifacts(res.run_id, "figures")}
    assert {"figures/steering_layer_010.png", "figures/objective_vs_coherence.png", "figures/frontier_layer_010.png",
            "figures/propensity_layer_010.png"} <= files
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(client.download_artifacts(res.run_id, "report/steering.html", tmp)).read_text()
    for r in res.rows:  # every response, in full
        assert html.escape(r["response"], quote=True) in page
    assert page.count("<tr data-question=") == len(res.rows) == 2 * (2 + 3)


def test_report_sorts_and_filters_inside_the_mlflow_frame(steered, tmp_path):
    res, client = steered
    exp_id = client.get_run(res.run_id).info.experiment_id
    with mlflow_server(os.environ["MLFLOW_TRACKING_URI"], tmp_path) as base, \
            WebDriver(require_chromedriver(), require_chromium()) as wd:
        wd.get(f"{base}/#/experiments/{exp_id}/runs/{res.run_id}/artifacts/report/steering.html"
               "?workflowType=machine_learning")
        wd.frame(wd.wait("iframe", timeout=90))
        wd.wait("#conditions th")
        coherence_header = wd.find_all("#conditions th")[4]
        wd.click(coherence_header)
        wd.click(coherence_header)  # second click: descending
        shown = wd.execute("return Array.from(document.querySelectorAll('#conditions tbody tr'))"
                           ".map(function (r) { return Number(r.cells[4].getAttribute('data-v')); });")
        assert len(shown) == 2 + 3 and shown == sorted(shown, reverse=True)
        wd.execute("var s = document.getElementById('f-question'); s.value = '1';"
                   "s.dispatchEvent(new Event('change'));")
        assert wd.text(wd.wait("#n-shown")) == str(2 + 3)
        visible = wd.execute("return Array.from(document.querySelectorAll('#responses tbody tr'))"
                             ".filter(function (r) { return r.style.display !== 'none'; })"
                             ".map(function (r) { return r.cells[8].textContent; });")
        assert sorted(visible) == sorted(r["response"] for r in res.rows if r["question_index"] == 1)
        wd.frame(None)
        assert wd.find_all("iframe"), "the artifact frame is gone"
