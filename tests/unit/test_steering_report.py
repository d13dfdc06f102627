"""The steer run's report: the verdict note (against the prompted baseline, capability, sample sizes), the
response browser's data and page (self-contained, escaped, sortable, no navigation), and the figures on fixed
axes that draw the unsteered point at coefficient 0. Hand-built results, no model."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from matplotlib.collections import PathCollection

from traitlab.core.proportions import paired_accuracy_difference
from traitlab.models.multiple_choice import ChoiceScores
from traitlab.steering.measures import Sample, capability_summary, paired_delta
from traitlab.steering.results import LayerResult, SteerResult, capability_metrics, trial_row
from traitlab.tracking import steer_report as R
from traitlab.viz.steering import item_delta_figure, objective_curve_figure, trait_coherence_figure
from traitlab.viz.steering_report import _CSP, _SCRIPT, render_steering_report

BASE_M = [0.1, -0.2, 0.3, 0.0]
PROMPT_M = [0.3, 0.0, 0.5, 0.2]          # prompted = unsteered + 0.2 on every pair
BEST_M = [0.6, 0.3, 0.8, 0.5]            # chosen trial = unsteered + 0.5 = prompted + 0.3 on every pair


def choices(correct: list[bool]) -> ChoiceScores:
    """Items whose answer is option 0; a correct item has option 0 on top."""
    return ChoiceScores([[0.0, -1.0, -1.0, -1.0] if ok else [-2.0, -1.0, -3.0, -3.0] for ok in correct],
                        [0] * len(correct))


BASE_CAP = choices([True] * 6 + [False] * 4)        # 6 / 10
STEER_CAP = choices([True] * 4 + [False] * 6)       # 4 / 10, the same items: two lost


def result() -> SteerResult:
    unsteered = Sample(["plain 0", "plain 1"], [95.0, 93.0], margins=BASE_M, capability=BASE_CAP)
    prompted = Sample(["asked 0", "asked 1"], [94.0, 92.0], margins=PROMPT_M, capability=choices([True] * 6 + [False] * 4))
    res = SteerResult("r", False, "starter/optimism", "search", [10], measures=["propensity"], threshold=90.0,
                      n_pairs={"val": 4})
    res.baselines = {"unsteered": unsteered, "prompted": prompted}
    res.prompted = {"propensity": paired_delta(PROMPT_M, BASE_M, 1, seed=0, n_boot=200)}
    lr = LayerResult(10, "study", 100.0, 20.0, 6.0)
    small = paired_delta([m + 0.1 for m in BASE_M], BASE_M, 1, seed=0, n_boot=200)
    best = paired_delta(BEST_M, BASE_M, 1, seed=0, n_boot=200)
    far = paired_delta([m + 2 for m in BASE_M], BASE_M, 1, seed=0, n_boot=200)
    for num, coef, coh, d, margins in ((0, 6.0, 94.0, small, [m + 0.1 for m in BASE_M]),
                                       (1, 12.0, 91.0, best, BEST_M),
                                       (2, 30.0, 50.0, far, [m + 2 for m in BASE_M])):
        row = trial_row(num, coef, coh, d.interval.mean, coh >= 90, "COMPLETE", {"propensity": d.as_dict()}, margins)
        row["capability"] = capability_summary(STEER_CAP, BASE_CAP)
        row["responses"] = [{"question_index": q, "response": f"steered {num}/{q} </script><b>x</b>",
                             "coherence": coh, "trait": None, "scorer": None} for q in (0, 1)]
        lr.trials.append(row)
    lr.best = lr.trials[1]
    res.per_layer = {10: lr}
    res.rows = [{"condition": c, "layer": None, "coefficient": 0.0, "trial": None, "question_index": q,
                 "question": f"question {q}?", "response": s.responses[q], "trait_score": None,
                 "coherence": s.coherence[q], "scorer": None}
                for c, s in (("unsteered", unsteered), ("prompted", prompted)) for q in (0, 1)]
    res.rows += [{"condition": "steered", "layer": 10, "coefficient": t["coefficient"], "trial": t["number"],
                  "question_index": r["question_index"], "question": f"question {r['question_index']}?",
                  "response": r["response"], "trait_score": None, "coherence": r["coherence"], "scorer": None}
                 for t in lr.trials for r in t["responses"]]
    return res


def test_verdict_states_layer_delta_prompted_comparison_capability_and_sizes():
    note = R.verdict_note(result())
    first = note.split("\n\n")[0]
    assert first.startswith("Best layer 10: coefficient 12") and "+0.5 [0.5, 0.5] (n=4)" in first
    # the chosen trial beats the prompted baseline by exactly 0.3 on every pair
    assert "Steered minus prompted, same items: +0.3 [0.3, 0.3] (n=4): steering beats prompting." in note
    assert "Prompted baseline (a system prompt asking for the trait): propensity delta +0.2 [0.2, 0.2] (n=4)" in note
    # capability 6/10 unsteered, 4/10 steered on the same items: Newcombe's paired change, independently computed
    d = paired_accuracy_difference([True] * 4 + [False] * 6, [True] * 6 + [False] * 4)
    assert f"change -20.0 points [{100 * d.low:+.1f}, {100 * d.high:+.1f}]" in note
    assert "Capability (10 items): unsteered 60.0%" in note and "steered 40.0%" in note
    assert "Sample sizes: 2 questions, held-out pairs 4 val, 1 layer(s), 3 trials." in note


def test_versus_prompted_is_not_claimed_when_the_interval_includes_zero():
    res = result()
    res.baselines["prompted"].margins = [m - 0.1 for m in BEST_M][:2] + [m + 0.1 for m in BEST_M][2:]
    vs = R.versus_prompted(res)
    assert vs.mean == pytest.approx(0.0) and vs.low < 0 < vs.high and vs.n == 4
    assert "cannot be told apart" in R.verdict_note(res)


def test_capability_metrics_follow_the_dashboard_names():
    m = capability_metrics("layer/capability", capability_summary(STEER_CAP, BASE_CAP))
    d = paired_accuracy_difference(STEER_CAP.correct, BASE_CAP.correct)
    assert m["layer/capability_accuracy"] == 0.4 and m["layer/n_capability"] == 10
    assert m["layer/capability_delta"] == pytest.approx(-0.2)
    assert m["layer/capability_delta_lo"] == pytest.approx(d.low, abs=1e-4)
    assert m["layer/capability_delta_hi"] == pytest.approx(d.high, abs=1e-4)
    assert m["layer/capability_accuracy_lo"] < 0.4 < m["layer/capability_accuracy_hi"]


def test_report_data_has_every_condition_and_response_with_the_chosen_one_marked():
    data = R.report_data(result(), "t")
    conds = {r["condition"]: r for r in data["conditions"]["rows"]}
    assert list(conds) == ["unsteered", "prompted", "L10 c=+6 #0", "L10 c=+12 #1", "L10 c=+30 #2"]
    assert conds["unsteered"]["delta"] == 0.0 and conds["prompted"]["delta"] == pytest.approx(0.2)
    assert conds["L10 c=+12 #1"]["chosen"] and not conds["L10 c=+6 #0"]["chosen"]
    assert conds["L10 c=+12 #1"]["coef_rel"] == pytest.approx(12.0 / 20.0)
    assert conds["L10 c=+30 #2"]["feasible"] is False and conds["L10 c=+12 #1"]["capability"] == 0.4
    rows = data["responses"]["rows"]
    assert len(rows) == 2 * 5
    steered = [r for r in rows if r["condition"] == "L10 c=+30 #2"]
    assert [r["delta"] for r in steered] == [pytest.approx(2.0)] * 2


def test_page_is_self_contained_escaped_and_never_navigates():
    page = render_steering_report(R.report_data(result(), "optimism <L10>"))
    # every response in full, escaped: a response cannot close the script or inject markup
    assert page.count("steered 1/0 &lt;/script&gt;&lt;b&gt;x&lt;/b&gt;") == 1
    assert "<b>x</b>" not in page and "<title>optimism &lt;L10&gt;</title>" in page
    # inline script and style only; nothing to navigate to or load
    assert not re.search(r"\b(href|src)\s*=", page) and "<link" not in page and "location" not in _SCRIPT
    assert "innerHTML" not in _SCRIPT and "localStorage" not in _SCRIPT
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in _CSP and f"<script>{_SCRIPT}</script>" in page
    # numeric cells carry a sort key; the chosen condition is highlighted
    assert '<tr class="chosen">' in page and 'data-v="12.0"' in page
    assert page.count('data-condition="unsteered"') == 2 and page.count('data-question="1"') == 5


def test_objective_curve_draws_the_unsteered_point_at_zero_on_axes_that_include_it():
    pts = [{"coef": 6.0, "value": 0.1, "coherence": 94, "low": 0.05, "high": 0.15},
           {"coef": 12.0, "value": 0.5, "coherence": 91, "low": 0.4, "high": 0.6}]
    fig = objective_curve_figure(pts, 90, "t", value_label="d", unsteered_coherence=95.0)
    ax, right = fig.axes
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "d")
    assert list(line.get_xdata()) == [0.0, 6.0, 12.0] and list(line.get_ydata()) == pytest.approx([0, 0.1, 0.5])
    unsteered = next(c for c in ax.collections if c.get_label() == "unsteered")
    assert unsteered.get_offsets().tolist() == [[0.0, 0.0]]
    lo, hi = ax.get_xlim()
    assert lo < 0 < 12 < hi
    ylo, yhi = ax.get_ylim()
    assert ylo < 0 and yhi > 0.6                           # 0 and the top of every interval bar
    best = next(c for c in ax.collections if c.get_label().startswith("best coherent"))
    assert best.get_offsets().tolist() == [[12.0, 0.5]]    # the unsteered point is never "best"


def test_trait_coherence_scatter_fixed_axis_threshold_and_baselines():
    trials = [{"value": 0.1, "coherence": 94, "layer": 10}, {"value": 0.5, "coherence": 91, "layer": 10},
              {"value": 2.0, "coherence": 50, "layer": 12}]
    ax = trait_coherence_figure(trials, 90, "t", value_label="d", unsteered_coherence=95,
                                prompted={"delta": 0.2, "coherence": 93}, chosen=1).axes[0]
    assert ax.get_xlim() == (-2, 102)
    (thr,) = [ln for ln in ax.get_lines() if ln.get_label() == "coherence ≥ 90"]
    assert list(thr.get_xdata()) == [90, 90]
    offsets = {c.get_label(): c.get_offsets().tolist() for c in ax.collections if isinstance(c, PathCollection)}
    assert offsets["unsteered"] == [[95, 0]] and offsets["prompted"] == [[93, 0.2]] and offsets["chosen"] == [[91, 0.5]]
    assert offsets["layer 10 (n=2)"] == [[94, 0.1], [91, 0.5]] and offsets["layer 12 (n=1)"] == [[50, 2.0]]


def test_item_spread_is_each_items_steered_minus_unsteered_value():
    spread = R.item_spread(result())
    vals, iv = spread["propensity per pair, steered (n=4)"]
    assert vals == pytest.approx([0.5] * 4) and iv == pytest.approx((0.5, 0.5))
    assert spread["propensity, prompted (n=4)"][0] == pytest.approx([0.2] * 4)
    fig = item_delta_figure({k: v for k, (v, _) in spread.items()}, "t")
    ys = sorted(y for ax in fig.axes for c in ax.collections for _, y in c.get_offsets().tolist())
    assert ys == pytest.approx([0.2] * 4 + [0.5] * 4)
    assert all(ax.get_ylim()[0] < 0 for ax in fig.axes)  # every panel shows zero


def test_figures_cover_every_view_including_the_frontier_when_capability_is_measured():
    names = set(R.figures(result()))
    assert names == {"figures/steering_layer_010.png", "figures/propensity_layer_010.png",
                     "figures/frontier_layer_010.png", "figures/objective_vs_coherence.png",
                     "figures/best_delta_by_layer.png", "figures/item_deltas_chosen.png"}
    res = result()
    res.baselines["unsteered"].capability = None
    assert "figures/frontier_layer_010.png" not in R.figures(res)



def test_best_delta_by_layer_includes_zero_and_the_prompted_band():
    # the old figure autoscaled to its one or two values (0.7-1.1), so noise looked like a trend
    ax = R.figures(result())["figures/best_delta_by_layer.png"].axes[0]
    lo, hi = ax.get_ylim()
    assert lo <= 0 and hi >= 0.5
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert "steered, best coherent (n=4)" in labels and "prompted (n=4)" in labels and "chosen layer 10" in labels


def test_summary_table_gives_the_capability_change_at_the_best_coefficient():
    table = result().summary_table()
    d = paired_accuracy_difference(STEER_CAP.correct, BASE_CAP.correct)
    assert "capability change [95% CI]" in table
    assert f"40.0% (-20.0 points [{100 * d.low:+.1f}, {100 * d.high:+.1f}], n=10)" in table
