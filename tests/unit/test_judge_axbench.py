"""AxBench-style rubric: harmonic-mean arithmetic, prompt resolution, and the judge scoring from cached
judge replies (no model: the source names a model that cannot load)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from traitlab.errors import ConfigError, DataError
from traitlab.judge import ScoreRequest, make_judge
from traitlab.judge.axbench import AxBenchJudge, harmonic_mean
from traitlab.judge.cache import ScoreCache
from traitlab.judge.factory import prompt_texts
from traitlab.judge.hf_local import HFLocalSource
from traitlab.judge.prompts import AXBENCH_KINDS, default_prompts_dir, parse_template, resolve_template

REQ = ScoreRequest(question="Describe your weekend.", response="It was wonderful and full of hope!",
                   trait="optimism", definition="Expects good outcomes.")


def test_harmonic_mean_arithmetic():
    assert harmonic_mean([100.0, 100.0, 100.0]) == 100.0
    assert harmonic_mean([90.0, 60.0, 30.0]) == pytest.approx(3 / (1 / 90 + 1 / 60 + 1 / 30))  # 49.09
    assert harmonic_mean([90.0, 60.0, 30.0]) == pytest.approx(49.0909, abs=1e-4)
    assert harmonic_mean([80.0, 0.0, 90.0]) == 0.0  # any zero sinks it: all three must hold
    assert harmonic_mean([80.0, None, 90.0]) is None
    assert harmonic_mean([]) is None
    # Lower than the arithmetic mean whenever the three disagree: a one-sided answer is punished.
    assert harmonic_mean([100.0, 10.0, 100.0]) < (100 + 10 + 100) / 3 / 2
    with pytest.raises(ValueError):
        harmonic_mean([-1.0, 50.0, 50.0])


def test_default_prompts_resolve_and_render():
    values = dict(trait="optimism", definition="Expects good outcomes.", question="Describe your weekend.",
                  answer="It was wonderful!", max_score=9)
    concept = resolve_template("concept").render(**values)
    assert "optimism" in concept and "Expects good outcomes." in concept and "It was wonderful!" in concept
    assert "Describe your weekend." not in concept  # the concept is judged on the text alone, as in AxBench
    instruction = resolve_template("instruction").render(**values)
    assert "Describe your weekend." in instruction and "optimism" not in instruction
    fluency = resolve_template("fluency").render(**values)
    assert "It was wonderful!" in fluency and "optimism" not in fluency and "Describe" not in fluency
    for kind in AXBENCH_KINDS:
        tpl = resolve_template(kind)
        assert Path(tpl.source) == default_prompts_dir(kind) / kind / "default.txt"
        text = tpl.render(**values)
        assert "0 to 9" in text and "100" not in text and "{" not in text
        assert text.rstrip().endswith("and nothing else.")


def test_prompt_requirements_and_overrides(tmp_path):
    with pytest.raises(DataError, match=r"concept\.txt.*lacks the placeholder\(s\) \{trait\}"):
        parse_template("concept", "Is {answer} about it?", "concept.txt")
    with pytest.raises(DataError, match=r"\{question\}"):
        parse_template("instruction", "Rate {answer}", "instruction.txt")
    (tmp_path / "fluency").mkdir()
    (tmp_path / "fluency" / "default.txt").write_text("FLUENT? {answer} 0-{max_score}")
    assert resolve_template("fluency", prompts_dir=tmp_path).render(answer="x") == "FLUENT? x 0-100"
    # A prompts_dir without the other kinds fails naming the missing file, before any model loads.
    with pytest.raises(DataError, match=r"concept/default\.txt: concept judge prompt file not found"):
        make_judge({"backend": "hf_local", "rubric": "axbench", "prompts_dir": str(tmp_path), "cache_path": None})


def test_datasets_dir_without_axbench_prompts_falls_back_per_kind(tmp_path, monkeypatch):
    own = tmp_path / "llm_judge" / "trait_score"
    own.mkdir(parents=True)
    (own / "default.txt").write_text("MINE {answer}")
    monkeypatch.setenv("TRAITLAB_DATASETS", str(tmp_path))
    assert resolve_template("trait_score").text == "MINE {answer}"
    assert resolve_template("fluency").source.endswith("datasets/llm_judge/fluency/default.txt")
    assert not resolve_template("fluency").source.startswith(str(tmp_path))


def test_factory_choices_and_conflicts():
    judge = make_judge({"backend": "hf_local", "rubric": "axbench", "cache_path": None})
    assert isinstance(judge, AxBenchJudge)
    with pytest.raises(ConfigError, match=r"judge\.rubric: 'axbnech' is not one of trait, axbench"):
        make_judge({"backend": "hf_local", "rubric": "axbnech"})
    with pytest.raises(ConfigError, match=r"judge\.rubric: axbench needs an LLM judge"):
        make_judge({"backend": "perplexity", "rubric": "axbench"})
    with pytest.raises(ConfigError, match=r"judge\.relevance_check: applies to rubric=trait only"):
        make_judge({"backend": "hf_local", "rubric": "axbench", "relevance_check": True})


def test_prompt_texts_follow_the_rubric():
    trait = prompt_texts({"backend": "hf_local"})
    ax = prompt_texts({"backend": "hf_local", "rubric": "axbench"})
    assert ax == [resolve_template(k).text for k in AXBENCH_KINDS]
    assert trait == [resolve_template("trait_score").text, resolve_template("coherence").text]
    assert prompt_texts({"backend": "hf_local"}, eval_prompt="INLINE {answer}")[0] == "INLINE {answer}"


def _judge(cache: ScoreCache, **kw) -> AxBenchJudge:
    # A model name that cannot load: any attempt to run the judge model would raise.
    source = HFLocalSource("no-such-model/not-downloadable", scale_max=kw.pop("scale_max", 100))
    return AxBenchJudge(source, cache=cache, **kw)


def test_scores_each_part_separately_and_combines_by_harmonic_mean():
    cache = ScoreCache(None)
    judge = _judge(cache)
    by_kind = {p.kind: p for p in judge.prompts_for(REQ)}
    assert set(by_kind) == set(AXBENCH_KINDS)
    assert "optimism" in by_kind["concept"].prompt and "Describe your weekend." in by_kind["instruction"].prompt
    cache.put_many({
        by_kind["concept"].key: {"80": math.log(0.5), "100": math.log(0.5)},   # 90
        by_kind["instruction"].key: {"60": math.log(0.9), "Sure": math.log(0.1)},  # 60
        by_kind["fluency"].key: {"30": math.log(0.8)},                              # 30
    })
    (score,) = judge.score([REQ])
    assert score.raw["axbench"]["concept"] == pytest.approx(90.0)
    assert score.raw["axbench"]["instruction"] == pytest.approx(60.0)
    assert score.raw["axbench"]["fluency"] == pytest.approx(30.0)
    assert score.trait == pytest.approx(3 / (1 / 90 + 1 / 60 + 1 / 30))
    assert score.raw["axbench"]["harmonic_mean"] == score.trait
    assert (score.coherence, score.relevance) == (pytest.approx(30.0), pytest.approx(60.0))
    assert score.raw["fluency"]["cached"] is True


def test_an_unscorable_part_makes_the_combination_unscorable_and_a_zero_makes_it_zero():
    cache = ScoreCache(None)
    judge = _judge(cache, scale_max=9, min_weight=0.25)
    reqs = [REQ, ScoreRequest("Hi?", "the the the the", "optimism", "Expects good outcomes.")]
    keys = [{p.kind: p.key for p in judge.prompts_for(r, 9)} for r in reqs]
    cache.put_many({
        keys[0]["concept"]: {"9": 0.0}, keys[0]["instruction"]: {"9": 0.0},
        keys[0]["fluency"]: {"7": math.log(0.1), "I": math.log(0.9)},   # 0.1 on digits < min_weight -> None
        keys[1]["concept"]: {"5": 0.0}, keys[1]["instruction"]: {"9": 0.0}, keys[1]["fluency"]: {"0": 0.0},
    })
    first, second = judge.score(reqs)
    assert first.raw["axbench"]["fluency"] is None and first.trait is None and first.coherence is None
    assert second.raw["axbench"]["concept"] == pytest.approx(5 * 100 / 9)  # digit scale rescaled to 0-100
    assert second.trait == 0.0 and second.coherence == 0.0
