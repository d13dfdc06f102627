"""The steer stage's config and the pure parts of its pipeline (no model): Hydra composition, validation,
the prompted baseline's system prompt, re-scoring's per-layer selection rule and the summary table."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from traitlab.config.steer import SteerConfig
from traitlab.core.stats import Interval
from traitlab.data import load_trait, resolve_trait_dir
from traitlab.errors import ConfigError
from traitlab.pipelines import steer
from traitlab.steering import modes as steer_modes
from traitlab.steering import prepare as steer_prepare
from traitlab.steering.measures import Delta, Sample
from traitlab.steering.results import LayerResult, SteerResult, trial_row


def compose_steer(*overrides: str) -> SteerConfig:
    from traitlab.cli import bootstrap, conf_path

    bootstrap()
    with initialize_config_dir(config_dir=conf_path(), version_base="1.3"):
        return OmegaConf.to_object(compose("steer", overrides=list(overrides)))


def test_defaults_compose_into_the_typed_config():
    cfg = compose_steer("trait=starter/optimism", "steering.sampler=tpe")
    assert isinstance(cfg, SteerConfig)
    assert cfg.trait.name == "starter/optimism" and cfg.layers == "30%-60%" and cfg.mode == "search"
    s = cfg.steering
    assert (s.threshold, s.up_mult, s.down_mult, s.sampler) == (None, 1.3, 0.85, "tpe")
    # the embedded default needs no key and sees the effect on a 135M model: propensity, perplexity coherence
    assert s.objective == "propensity" and cfg.judge.backend == "perplexity" and s.tpe_startup_trials == "auto"
    # the coherence threshold follows where coherence comes from: perplexity alone is held to 90, a judge to 77
    assert steer_prepare.coherence_threshold(cfg) == 90.0
    assert steer_prepare.coherence_threshold(compose_steer("judge=hf_local")) == 77.0
    assert steer_prepare.coherence_threshold(compose_steer("judge=hf_local", "judge.perplexity_combine=perplexity")) \
        == 90.0
    both = compose_steer("judge=hf_local_perplexity").judge
    assert (both.backend, both.perplexity_combine) == ("hf_local", "perplexity")
    assert steer_prepare.coherence_threshold(compose_steer("steering.threshold=50")) == 50.0
    assert compose_steer("judge=openai").judge.model == "gpt-4.1-mini"
    assert compose_steer("judge=hf_local", "steering.objective=judge").steering.objective == "judge"


@pytest.mark.parametrize(("overrides", "key", "text"), [
    (("steering.steps=0",), "steering.steps", ">= 1"),
    (("steering.momentum=1.0",), "steering.momentum", "[0, 1)"),
    (("steering.search_space.low=0",), "steering.search_space", "> 0"),
    (("steering.study.grace_period=5",), "steering.study.grace_period", "heartbeat_interval"),
    (("mode=sweep",), "mode", "search, baseline, ablation, rescore"),
    (("layers=10-x",), "layers", "cannot parse '10-x'"),
    (("judge=perplexity", "steering.objective=judge"), "steering.objective", "coherence only"),
    (("steering.objective=likes",), "steering.objective", "propensity, judge, scorer"),
    (("steering.objective=scorer",), "steering.scorer", "needs a scorer"),
    (("steering.scorer=sentimental",), "steering.scorer", "sentiment, refusal or a callable"),
    (("steering.propensity.max_pairs=0",), "steering.propensity.max_pairs", "another objective"),
    (("judge=perplexity", "mode=ablation"), "judge", "trait score"),
    (("judge.rubric=axbnech",), "judge.rubric", "not one of trait, axbench"),
])
def test_bad_settings_fail_before_anything_loads(overrides, key, text, mlflow_store):
    cfg = compose_steer("trait=starter/optimism", "judge=hf_local", *overrides)
    with pytest.raises(ConfigError) as err:
        steer.validate_inputs(cfg)
    assert err.value.key == key and text in str(err.value)
    assert "\n" not in str(err.value)


def test_axbench_rubric_refuses_steering_away_and_is_part_of_the_judge_identity(tmp_path, mlflow_store):
    import json
    import shutil

    from traitlab.io import content_hash
    from traitlab.judge.factory import JUDGE_SEMANTIC, judge_identity
    from traitlab.judge.prompts import resolve_template

    away = tmp_path / "mine" / "calm"
    shutil.copytree(resolve_trait_dir("starter/optimism"), away)
    spec = json.loads((away / "steering.json").read_text())
    (away / "steering.json").write_text(json.dumps({**spec, "direction": "negative"}))
    cfg = compose_steer(f"trait.path={away}", "judge=hf_local", "judge.rubric=axbench")
    with pytest.raises(ConfigError, match=r"judge\.rubric: axbench rewards the concept being present"):
        steer.validate_inputs(cfg)

    trait = load_trait(resolve_trait_dir("starter/optimism"))
    plain = steer_prepare.judge_config(compose_steer("trait=starter/optimism", "judge=hf_local").judge)
    # The default rubric keeps the identity it had before rubrics existed, so existing studies resume.
    before = content_hash("judge-id-v1", {k: plain.get(k) for k in JUDGE_SEMANTIC},
                          [resolve_template("trait_score", trait=trait.qualified_name).text,
                           resolve_template("coherence").text], trait.definition or "")
    assert judge_identity(plain, trait) == before
    assert judge_identity({**plain, "rubric": "axbench"}, trait) != before


def test_missing_vectors_error_names_what_exists(mlflow_store):
    cfg = compose_steer("trait=starter/optimism", "judge=hf_local", "method=probe")
    with pytest.raises(ConfigError, match=r"no extracted vectors .*available: none.*launchers/extract.py"):
        steer.validate_inputs(cfg)


def test_prompted_system_prompt_choice(tmp_path):
    trait = load_trait(resolve_trait_dir("starter/optimism"))
    cfg = compose_steer("trait=starter/optimism")
    assert steer_prepare._prompted_system(cfg, trait, +1) == trait.positive[0].system_prompt
    assert steer_prepare._prompted_system(cfg, trait, -1) == trait.negative[0].system_prompt
    cfg.steering.prompted_system_prompt = "Be upbeat."
    assert steer_prepare._prompted_system(cfg, trait, +1) == "Be upbeat."


def _rows(layer, trial, coef, traits, cohs):
    return [{"condition": "steered", "layer": layer, "trial": trial, "coefficient": coef, "study": "s",
             "question_index": qi, "response": "r", "trait_score": t, "coherence": c}
            for qi, (t, c) in enumerate(zip(traits, cohs, strict=True))]


BASE = Sample(["a", "b"], [95.0, 95.0], [30.0, 30.0])


def test_rescore_selection_rule_matches_the_search():
    rows = (_rows(10, 0, 5.0, [40, 50], [90, 80])     # mean trait 45, coherence 85: coherent
            + _rows(10, 1, 9.0, [80, 90], [70, 60])   # 85 but incoherent: never chosen
            + _rows(10, 2, 7.0, [50, 60], [80, 76])   # 55, coherence 78: coherent, best
            + _rows(12, 0, 4.0, [None, None], [90, 90]))  # unscorable trait: not a candidate
    layers = steer_modes.layers_from_rows(rows, BASE, direction=1, threshold=77.0)
    assert layers[10].best["coefficient"] == 7.0 and layers[10].best["value"] == pytest.approx(25.0)
    assert [t["feasible"] for t in layers[10].trials] == [True, False, True]
    assert layers[12].best is None and layers[12].trials[0]["state"] == "FAIL"
    # a "lower the trait" direction flips the delta: the lowest coherent trait score wins
    down = steer_modes.layers_from_rows(rows, BASE, direction=-1, threshold=77.0)
    assert down[10].best["coefficient"] == 5.0 and down[10].best["value"] == pytest.approx(-15.0)


def test_rescore_compares_only_questions_scored_in_both():
    base = Sample(["a", "b"], [95.0, 95.0], [10.0, 90.0])
    # the judge lost question 0 in this trial: 95 vs 90 on question 1 is +5, not 95 - mean(10, 90) = +45
    layers = steer_modes.layers_from_rows(_rows(10, 0, 5.0, [None, 95], [90, 90]), base, 1, 77.0)
    d = layers[10].trials[0]["deltas"]["trait"]
    assert layers[10].best["value"] == pytest.approx(5.0) and (d["n"], d["lost"]) == (1, 1)


def test_summary_table_shows_steering_beside_asking():
    res = SteerResult("r", False, "starter/optimism", "search", [10], objective="propensity",
                      measures=["propensity", "sentiment"], threshold=77.0, scorer_name="sentiment",
                      n_pairs={"val": 7, "ood": 5})
    res.baselines = {"unsteered": Sample(["a"], [95.0], [], [0.25], [0.1, 0.3]),
                     "prompted": Sample(["b"], [93.0], [], [0.5], [0.2, 0.4])}
    res.prompted = {"propensity": Delta(Interval(0.1, 0.1, 0.1, 2), 0.3, 0.2, 0)}
    lr = LayerResult(10, "s", 150.0, 148.0, 44.4)
    best = trial_row(3, 44.4, 91.5, 0.42, True, "COMPLETE",
                     {"propensity": Delta(Interval(0.42, 0.31, 0.55, 12), 0.6, 0.18, 0).as_dict(),
                      "sentiment": Delta(Interval(0.25, 0.05, 0.45, 3), 0.7, 0.45, 0).as_dict()}, [0.5, 0.7])
    lr.trials, lr.best = [best, trial_row(4, 60.0, 50.0, 0.9, False, "COMPLETE")], best
    res.per_layer = {10: lr}
    table = res.summary_table()
    assert "propensity -" not in table and "held-out pairs: 7 val, 5 ood" in table
    assert ("| 10 | 44.4 (0.30) | 91.5 | +0.42 [0.31, 0.55] (n=12) | +0.1 [0.1, 0.1] (n=2) | "
            "+0.25 [0.05, 0.45] (n=3) | - | - | 1 / 2 |") in table
    assert res.best_layer == 10 and "interval excludes zero" in res.verdict()
    # a re-scored run has no activation norms: the coefficient is shown without its ratio to base
    lr.base_coefficient = float("nan")
    assert "| 10 | 44.4 | 91.5 |" in res.summary_table()
