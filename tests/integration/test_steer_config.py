"""The steer stage's config and the pure parts of its pipeline (no model): Hydra composition, validation,
the prompted baseline's system prompt, and re-scoring's per-layer selection rule."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from traitlab.config.steer import SteerConfig
from traitlab.data import load_trait, resolve_trait_dir
from traitlab.errors import ConfigError
from traitlab.pipelines import steer


def compose_steer(*overrides: str) -> SteerConfig:
    from traitlab.cli import bootstrap, conf_path

    bootstrap()
    with initialize_config_dir(config_dir=conf_path(), version_base="1.3"):
        return OmegaConf.to_object(compose("steer", overrides=list(overrides)))


def test_defaults_compose_into_the_typed_config():
    cfg = compose_steer("trait=starter/optimism", "judge=perplexity", "steering.sampler=tpe")
    assert isinstance(cfg, SteerConfig)
    assert cfg.trait.name == "starter/optimism" and cfg.layers == "30%-60%" and cfg.mode == "search"
    s = cfg.steering
    assert (s.threshold, s.up_mult, s.down_mult, s.sampler) == (77.0, 1.3, 0.85, "tpe")
    assert cfg.judge.backend == "hf_local" and cfg.judge.perplexity_combine == "perplexity"
    assert compose_steer("judge=openai").judge.model == "gpt-4.1-mini"


@pytest.mark.parametrize(("overrides", "key", "text"), [
    (("steering.steps=0",), "steering.steps", ">= 1"),
    (("steering.momentum=1.0",), "steering.momentum", "[0, 1)"),
    (("steering.search_space.low=0",), "steering.search_space", "> 0"),
    (("steering.study.grace_period=5",), "steering.study.grace_period", "heartbeat_interval"),
    (("mode=sweep",), "mode", "search, baseline, ablation, rescore"),
    (("layers=10-x",), "layers", "cannot parse '10-x'"),
    (("judge.backend=perplexity",), "judge.backend", "coherence only"),
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
    from traitlab.judge.prompts import resolve_template

    away = tmp_path / "mine" / "calm"
    shutil.copytree(resolve_trait_dir("starter/optimism"), away)
    spec = json.loads((away / "steering.json").read_text())
    (away / "steering.json").write_text(json.dumps({**spec, "direction": "negative"}))
    cfg = compose_steer(f"trait.path={away}", "judge=hf_local", "judge.rubric=axbench")
    with pytest.raises(ConfigError, match=r"judge\.rubric: axbench rewards the concept being present"):
        steer.validate_inputs(cfg)

    trait = load_trait(resolve_trait_dir("starter/optimism"))
    plain = steer.judge_config(compose_steer("trait=starter/optimism", "judge=hf_local").judge)
    # The default rubric keeps the identity it had before rubrics existed, so existing studies resume.
    before = content_hash("judge-id-v1", {k: plain.get(k) for k in steer._JUDGE_SEMANTIC},
                          [resolve_template("trait_score", trait=trait.qualified_name).text,
                           resolve_template("coherence").text], trait.definition or "")
    assert steer.judge_identity(plain, trait) == before
    assert steer.judge_identity({**plain, "rubric": "axbench"}, trait) != before


def test_missing_vectors_error_names_what_exists(mlflow_store):
    cfg = compose_steer("trait=starter/optimism", "judge=hf_local", "method=probe")
    with pytest.raises(ConfigError, match=r"no extracted vectors .*available: none.*launchers/extract.py"):
        steer.validate_inputs(cfg)


def test_prompted_system_prompt_choice(tmp_path):
    trait = load_trait(resolve_trait_dir("starter/optimism"))
    cfg = compose_steer("trait=starter/optimism")
    assert steer._prompted_system(cfg, trait, +1) == trait.positive[0].system_prompt
    assert steer._prompted_system(cfg, trait, -1) == trait.negative[0].system_prompt
    cfg.steering.prompted_system_prompt = "Be upbeat."
    assert steer._prompted_system(cfg, trait, +1) == "Be upbeat."


def _rows(layer, trial, coef, traits, cohs):
    return [{"condition": "steered", "layer": layer, "trial": trial, "coefficient": coef, "study": "s",
             "trait_score": t, "coherence": c} for t, c in zip(traits, cohs, strict=True)]


def test_rescore_selection_rule_matches_the_search():
    rows = (_rows(10, 0, 5.0, [40, 50], [90, 80])     # mean trait 45, coherence 85: coherent
            + _rows(10, 1, 9.0, [80, 90], [70, 60])   # 85 but incoherent: never chosen
            + _rows(10, 2, 7.0, [50, 60], [80, 76])   # 55, coherence 78: coherent, best
            + _rows(12, 0, 4.0, [None, None], [90, 90]))  # unscorable trait: not a candidate
    layers = steer.layers_from_rows(rows, base_trait=30.0, direction=1, threshold=77.0)
    assert layers[10].best["coefficient"] == 7.0 and layers[10].best["delta"] == pytest.approx(25.0)
    assert [t["feasible"] for t in layers[10].trials] == [True, False, True]
    assert layers[12].best is None and layers[12].trials[0]["state"] == "FAIL"
    # a "lower the trait" direction flips the delta: the lowest coherent trait score wins
    down = steer.layers_from_rows(rows, base_trait=30.0, direction=-1, threshold=77.0)
    assert down[10].best["coefficient"] == 5.0 and down[10].best["delta"] == pytest.approx(-15.0)


def test_summary_table_shows_steering_beside_asking():
    res = steer.SteerResult("r", False, "starter/optimism", "search", [10], threshold=77.0,
                            baselines={"unsteered": {"trait": 30.0, "coherence": 95.0},
                                       "prompted": {"trait": 62.5, "coherence": 93.0}})
    res.per_layer = steer.layers_from_rows(_rows(10, 0, 7.0, [50, 60], [80, 90]), 30.0, 1, 77.0)
    res.per_layer[10].base_coefficient = 148.0
    table = res.summary_table()
    assert res.prompted_delta == pytest.approx(32.5) and res.best_layer == 10
    assert "| 10 | 148.0 | 1 | 1 | 7.0 | 55.0 | 85.0 | 25.0 | 32.5 |" in table
