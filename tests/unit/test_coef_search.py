"""The coefficient search's Optuna machinery on deterministic objectives (no model): the adaptive sampler's
sequence, resumption from storage, recovery of a killed round, fan-out, TPE/grid and the constraint."""

from __future__ import annotations

import math

import pytest
from optuna.trial import TrialState

from traitlab.errors import ConfigError
from traitlab.steering.coef_search import (
    COEF,
    START_ATTR,
    AdaptiveSampler,
    Outcome,
    SearchStudy,
    best_trial,
    fan,
    finished_trials,
    geometric_grid,
    is_feasible,
    make_sampler,
    open_storage,
    open_study,
    recover_stale,
    run_search,
)

CLIFF = 1.0        # coherent up to this coefficient
THRESHOLD = 77.0


def cliff(candidates):
    """Trait grows with the coefficient; coherence falls off a cliff past CLIFF."""
    return [Outcome(value=10.0 * c.coefficient, coherence=90.0 if c.coefficient <= CLIFF else 40.0)
            for c in candidates]


def adaptive_study(path, name="s", start=0.4, momentum=0.5, target=7, low=0.01, high=100.0, **storage_kw):
    storage = open_storage(path, **storage_kw)
    sampler = AdaptiveSampler(up_mult=1.3, down_mult=0.85, momentum=momentum, seed=0)
    study = open_study(storage, name, sampler, {START_ATTR: start})
    return SearchStudy("k", 10, study, target=target, low=low, high=high)


def coefs(study):
    return [t.params[COEF] for t in finished_trials(study)]


def test_adaptive_sequence_without_momentum(tmp_path):
    s = adaptive_study(tmp_path / "a.db", momentum=0.0, target=7)
    run_search([s], cliff, per_step=1, threshold=THRESHOLD)
    # 0.4 -> x1.3 while coherent (0.4, 0.52, 0.676, 0.8788), 1.14244 is past the cliff -> x0.85 ...
    expected = [0.4, 0.4 * 1.3, 0.4 * 1.3**2, 0.4 * 1.3**3, 0.4 * 1.3**4, 0.4 * 1.3**4 * 0.85,
                0.4 * 1.3**4 * 0.85 * 1.3]
    assert coefs(s.study) == pytest.approx(expected, rel=1e-9)


def test_adaptive_sequence_with_momentum(tmp_path):
    s = adaptive_study(tmp_path / "a.db", momentum=0.5, target=7)
    run_search([s], cliff, per_step=1, threshold=THRESHOLD)
    u, d = 1.3, 0.85
    c = [0.4]
    c.append(c[-1] * u)              # coherent: log step log(u)
    c.append(c[-1] * u**1.5)         # coherent again: + 0.5 * previous step
    c.append(c[-1] * u**1.75)        # 1.2202: past the cliff
    c.append(c[-1] * d)              # direction reversed: momentum resets
    c.append(c[-1] * d**1.5)         # still incoherent (1.037): accelerates down -> 0.8127
    c.append(c[-1] * u)              # coherent again: reset
    assert coefs(s.study) == pytest.approx(c, rel=1e-9)
    assert c[3] > CLIFF and c[4] > CLIFF and c[5] < CLIFF  # the sequence really crosses the cliff twice
    best = best_trial(s.study)
    assert best.params[COEF] == pytest.approx(c[5])        # largest coherent coefficient tried
    assert best.value == pytest.approx(10 * c[5])


def test_adaptive_clips_to_bounds(tmp_path):
    s = adaptive_study(tmp_path / "a.db", momentum=0.0, target=4, start=0.5, high=0.7)
    run_search([s], cliff, per_step=1, threshold=THRESHOLD)
    assert coefs(s.study) == pytest.approx([0.5, 0.65, 0.7, 0.7])


def test_new_sampler_on_same_storage_continues_the_sequence(tmp_path):
    whole = adaptive_study(tmp_path / "whole.db", target=8)
    run_search([whole], cliff, per_step=1, threshold=THRESHOLD)

    first = adaptive_study(tmp_path / "split.db", target=3)
    run_search([first], cliff, per_step=1, threshold=THRESHOLD)
    assert len(coefs(first.study)) == 3
    again = adaptive_study(tmp_path / "split.db", target=8)  # new storage object, new sampler, same file
    rounds = run_search([again], cliff, per_step=1, threshold=THRESHOLD)
    assert rounds == 5
    assert coefs(again.study) == pytest.approx(coefs(whole.study), rel=1e-12)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test asks by hand, as a dying job did
def test_killed_round_is_retried_once_and_nothing_is_lost(tmp_path):
    path = tmp_path / "k.db"
    k = adaptive_study(path, name="killed", target=5, momentum=0.0, heartbeat_interval=1, grace_period=1)
    run_search([k], cliff, per_step=1, threshold=THRESHOLD)  # 5 finished

    def die(candidates):
        raise KeyboardInterrupt

    # A job asked round 6, then died before telling it.
    trial = k.study.ask()
    k.study._storage.record_heartbeat(trial._trial_id)
    dead_coef = trial.suggest_float(COEF, k.low, k.high, log=True)
    assert trial.number == 5
    # ...the process is gone: its trial stays RUNNING with a heartbeat that stops.
    resumed = adaptive_study(path, name="killed", target=7, momentum=0.0, heartbeat_interval=1, grace_period=1)
    assert recover_stale([resumed.study], grace_period=1, heartbeat_interval=1) == 1
    states = [t.state for t in resumed.study.get_trials()]
    assert states[5] == TrialState.FAIL and states[6] == TrialState.WAITING
    run_search([resumed], cliff, per_step=1, threshold=THRESHOLD)
    done = finished_trials(resumed.study)
    assert len(done) == 7 and all(t.state == TrialState.COMPLETE for t in done)
    # the retry re-ran exactly the dead trial's coefficient, once; the sequence is the uninterrupted one
    assert [t.params[COEF] for t in done].count(dead_coef) == 1
    whole7 = adaptive_study(path, name="uninterrupted", target=7, momentum=0.0)
    run_search([whole7], cliff, per_step=1, threshold=THRESHOLD)
    assert [t.params[COEF] for t in done] == pytest.approx(coefs(whole7.study), rel=1e-12)

    # an error inside evaluate fails the asked trials and re-queues them at once (no waiting)
    resumed.target = 8
    with pytest.raises(KeyboardInterrupt):
        run_search([resumed], die, per_step=1, threshold=THRESHOLD)
    waiting = resumed.study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and len(finished_trials(resumed.study)) == 7


def test_fan_out_rounds(tmp_path):
    assert [fan(j, 1.3, 0.85) for j in range(5)] == pytest.approx([1, 1.3, 0.85, 1.3**2, 0.85**2])
    s = adaptive_study(tmp_path / "f.db", momentum=0.0, target=6, start=0.5)
    run_search([s], cliff, per_step=3, threshold=THRESHOLD)
    got = coefs(s.study)
    # round 1 around 0.5: all coherent -> next centre = largest coherent (0.65) x 1.3
    assert got[:3] == pytest.approx([0.5, 0.65, 0.425])
    assert got[3:] == pytest.approx([0.845, 0.845 * 1.3, 0.845 * 0.85])


def test_several_studies_share_one_evaluate_call_per_round(tmp_path):
    storage_path = tmp_path / "m.db"
    studies = [adaptive_study(storage_path, name=f"L{i}", start=0.2 * (i + 1), target=3) for i in range(3)]
    calls = []

    def evaluate(candidates):
        calls.append(sorted(c.key for c in candidates))
        return cliff(candidates)

    for i, s in enumerate(studies):
        s.key = f"L{i}"
    assert run_search(studies, evaluate, per_step=1, threshold=THRESHOLD) == 3
    assert calls == [["L0", "L1", "L2"]] * 3


def test_tpe_respects_the_constraint(tmp_path):
    storage = open_storage(tmp_path / "t.db")
    study = open_study(storage, "tpe", make_sampler("tpe", seed=3, tpe_startup_trials=4), {START_ATTR: 0.3},
                       enqueue={COEF: 0.3})
    s = SearchStudy("k", 5, study, target=12, low=0.05, high=3.0)
    run_search([s], cliff, per_step=2, threshold=THRESHOLD)
    trials = finished_trials(study)
    assert len(trials) == 12 and trials[0].params[COEF] == pytest.approx(0.3)
    assert any(t.params[COEF] > CLIFF for t in trials)  # it did try past the cliff...
    best = best_trial(study)
    assert best.params[COEF] <= CLIFF                   # ...but never selects an infeasible trial
    assert best.params[COEF] == max(t.params[COEF] for t in trials if t.params[COEF] <= CLIFF)


def test_grid_visits_every_point_once(tmp_path):
    grid = geometric_grid(0.1, 2.0, 5)
    assert grid[0] == pytest.approx(0.1) and grid[-1] == pytest.approx(2.0)
    assert grid[2] == pytest.approx(math.sqrt(0.2))
    study = open_study(open_storage(tmp_path / "g.db"), "grid", make_sampler("grid", seed=0, grid=grid))
    s = SearchStudy("k", 5, study, target=5, low=min(grid), high=max(grid))
    run_search([s], cliff, per_step=5, threshold=THRESHOLD)
    assert sorted(coefs(study)) == pytest.approx(sorted(grid))
    assert best_trial(study).params[COEF] == pytest.approx(grid[3])  # 0.946: the largest <= 1.0


def test_negative_direction_flips_the_coefficient_sign(tmp_path):
    s = adaptive_study(tmp_path / "n.db", momentum=0.0, target=2)
    s.direction = -1
    seen = []

    def evaluate(candidates):  # the caller orients the delta: the trait went DOWN by 10 per unit
        seen.extend(c.coefficient for c in candidates)
        return [Outcome(value=-1 * (10 * c.coefficient), coherence=90.0) for c in candidates]

    run_search([s], evaluate, per_step=1, threshold=THRESHOLD)
    assert seen == pytest.approx([-0.4, -0.52])
    assert [t.value for t in finished_trials(s.study)] == pytest.approx([4.0, 5.2])
    assert [t.user_attrs["coefficient_signed"] for t in finished_trials(s.study)] == pytest.approx([-0.4, -0.52])


def test_bad_sampler_settings_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="steering.up_mult"):
        AdaptiveSampler(up_mult=0.9)
    with pytest.raises(ConfigError, match="steering.down_mult"):
        AdaptiveSampler(down_mult=1.2)
    with pytest.raises(ConfigError, match="adaptive, tpe, grid"):
        make_sampler("cmaes", seed=0)


def test_tpe_startup_scales_to_the_budget(caplog):
    # The default search (steps 5 x trials_per_step 1) has 5 trials per layer. A fixed 4 start-up trials (plus
    # the enqueued start coefficient) left 1 trial to TPE's model; scaled to the budget it gets most of them.
    from traitlab.config.steer import SteeringConfig

    s = SteeringConfig()
    budget = s.steps * s.trials_per_step
    with caplog.at_level("WARNING"):
        sampler = make_sampler("tpe", seed=0, tpe_startup_trials=s.tpe_startup_trials, budget=budget)
    assert sampler._n_startup_trials == 1                      # a third of 5, at least 1
    assert "only 4 of 5 trials" in caplog.text                 # and a plain warning that 4 is still few
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert make_sampler("tpe", seed=0, tpe_startup_trials="auto", budget=30)._n_startup_trials == 10
    assert caplog.text == ""
    with caplog.at_level("WARNING"):
        make_sampler("tpe", seed=0, tpe_startup_trials=4, budget=5)   # an explicit int is kept, with a warning
    assert "only 1 of 5 trials" in caplog.text


def test_capability_constraint_beside_coherence_makes_a_coherent_trial_infeasible(tmp_path):
    # coherent up to CLIFF = 1.0, but capability drops by 0.3 per unit of coefficient: with a 0.15 maximum
    # drop, only coefficients <= 0.5 pass both constraints
    def evaluate(candidates):
        return [Outcome(10.0 * c.coefficient, 90.0 if c.coefficient <= CLIFF else 40.0,
                        constraints={"capability": 0.3 * c.coefficient - 0.15}) for c in candidates]

    s = adaptive_study(tmp_path / "c.db", start=0.2, momentum=0.0, target=8)
    run_search([s], evaluate, per_step=1, threshold=THRESHOLD)
    trials = finished_trials(s.study)
    assert all(set(t.constraints) == {"coherence", "capability"} for t in trials)
    coherent_but_costly = [t for t in trials if 0.5 < t.params[COEF] <= CLIFF]
    assert coherent_but_costly and not any(is_feasible(t) for t in coherent_but_costly)
    best = best_trial(s.study)
    assert best.params[COEF] <= 0.5
    assert best.params[COEF] == max(t.params[COEF] for t in trials if t.params[COEF] <= 0.5)
    # the adaptive sampler walks back from a capability violation as from an incoherent one: no trial past
    # 0.5 * 1.3 (the first step beyond the limit), unlike the coherence-only search that reaches past 1.0
    assert max(coefs(s.study)) <= 0.5 * 1.3


def test_an_unmeasurable_extra_constraint_counts_as_infeasible(tmp_path):
    s = adaptive_study(tmp_path / "n.db", target=1)
    run_search([s], lambda cs: [Outcome(1.0, 95.0, constraints={"capability": math.nan}) for _ in cs],
               per_step=1, threshold=THRESHOLD)
    assert not is_feasible(finished_trials(s.study)[0]) and best_trial(s.study) is None
