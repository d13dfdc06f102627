"""Judge prompt resolution (inline -> trait file -> default) and placeholder checking."""

from __future__ import annotations

from pathlib import Path

import pytest

from traitlab.errors import ConfigError, DataError
from traitlab.judge.prompts import KINDS, default_prompts_dir, parse_template, resolve_template

VALUES = dict(trait="sycophancy", definition="Flatters the user.", question="Is my plan good?",
              answer="It is brilliant!")


def test_defaults_exist_and_render_every_value():
    for kind in KINDS:
        tpl = resolve_template(kind)
        assert Path(tpl.source) == default_prompts_dir() / kind / "default.txt"
        text = tpl.render(**VALUES)
        assert "It is brilliant!" in text and "Is my plan good?" in text
        assert "0 to 100" in text and "{" not in text
    trait_text = resolve_template("trait_score").render(**VALUES)
    assert "sycophancy" in trait_text and "Flatters the user." in trait_text


def test_scale_placeholder_renders_digit_scale():
    text = resolve_template("coherence").render(**VALUES, max_score=9)
    assert "0 to 9" in text and "100" not in text


def test_override_order_inline_then_trait_file_then_default(tmp_path):
    trait_file = tmp_path / "judge.txt"
    trait_file.write_text("FILE {trait} {answer}")
    inline = "INLINE {question} {answer}"
    assert resolve_template("trait_score", eval_prompt=inline, trait_prompt_path=trait_file).render(**VALUES) \
        == "INLINE Is my plan good? It is brilliant!"
    assert resolve_template("trait_score", trait_prompt_path=trait_file).render(**VALUES) \
        == "FILE sycophancy It is brilliant!"
    assert resolve_template("trait_score", eval_prompt="  ").source.endswith("trait_score/default.txt")
    # Overrides are for the trait score only: coherence keeps its default.
    assert resolve_template("coherence", eval_prompt=inline).source.endswith("coherence/default.txt")


def test_prompts_dir_replaces_defaults(tmp_path):
    (tmp_path / "coherence").mkdir()
    (tmp_path / "coherence" / "default.txt").write_text("Rate {answer} 0-{max_score}")
    assert resolve_template("coherence", prompts_dir=tmp_path).render(**VALUES) == "Rate It is brilliant! 0-100"


def test_unknown_placeholder_names_the_file(tmp_path):
    bad = tmp_path / "typo.txt"
    bad.write_text("Rate {anwser} for {trait}")
    with pytest.raises(DataError) as e:
        resolve_template("trait_score", trait_prompt_path=bad)
    msg = str(e.value)
    assert str(bad) in msg and "{anwser}" in msg and "{answer}" in msg and "\n" not in msg


def test_missing_required_placeholder_names_the_file(tmp_path):
    bad = tmp_path / "noanswer.txt"
    bad.write_text("Rate the {trait}")
    with pytest.raises(DataError, match=r"noanswer\.txt.*lacks the placeholder\(s\) \{answer\}"):
        resolve_template("trait_score", trait_prompt_path=bad)
    with pytest.raises(DataError, match=r"\{question\}"):
        parse_template("relevance", "Is {answer} on topic?", "relevance.txt")


def test_unbalanced_braces_and_literal_braces(tmp_path):
    with pytest.raises(DataError, match=r"steering\.json.*malformed placeholder"):
        resolve_template("trait_score", eval_prompt="Rate the answer: {answer", trait="t")
    ok = parse_template("coherence", 'Reply as JSON {{"score": N}} for {answer}', "x.txt")
    assert ok.render(**VALUES) == 'Reply as JSON {"score": N} for It is brilliant!'


def test_format_spec_and_positional_fields_rejected():
    with pytest.raises(DataError, match=r"\{answer!r\}"):
        parse_template("coherence", "{answer!r}", "x.txt")
    with pytest.raises(DataError, match=r"unknown placeholder \{\}"):
        parse_template("coherence", "{} {answer}", "x.txt")


def test_inline_error_names_the_trait():
    with pytest.raises(DataError, match=r"inline eval_prompt of trait 'refusal'.*\{foo\}"):
        resolve_template("trait_score", eval_prompt="{foo} {answer}", trait="refusal")


def test_fixed_scale_prompt_cannot_serve_a_digit_judge():
    tpl = parse_template("trait_score", "Rate {answer} from 0 to 100", "<inline eval_prompt of trait 'x'>")
    assert tpl.render(**VALUES) == "Rate It is brilliant! from 0 to 100"
    with pytest.raises(ConfigError, match=r"judge\.scale_max.*inline eval_prompt of trait 'x'.*\{max_score\}"):
        tpl.render(**VALUES, max_score=9)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: trait_score judge prompt file not found"):
        resolve_template("trait_score", trait_prompt_path=tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        resolve_template("trait_score", trait_prompt_path=empty)


def test_unknown_kind_lists_choices():
    with pytest.raises(ConfigError, match="trait_score, coherence, relevance"):
        resolve_template("naturalness")


def test_defaults_found_when_datasets_dir_points_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITLAB_DATASETS", str(tmp_path))  # a data dir without llm_judge/
    assert (default_prompts_dir() / "trait_score" / "default.txt").is_file()
    assert "0 to 100" in resolve_template("trait_score").render(**VALUES)


def test_edited_file_is_reloaded(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("A {answer}")
    assert resolve_template("trait_score", trait_prompt_path=f).render(**VALUES) == "A It is brilliant!"
    f.write_text("Bee {answer}")  # different size too, so the change shows even on coarse mtime clocks
    import os

    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10_000_000))
    assert resolve_template("trait_score", trait_prompt_path=f).render(**VALUES) == "Bee It is brilliant!"


def test_judge_rejects_bad_prompt_files_at_construction(tmp_path):
    from traitlab.judge.hf_local import HFLocalSource
    from traitlab.judge.scoring import LogprobJudge

    bad = tmp_path / "trait.txt"
    bad.write_text("{trait} only")
    source = HFLocalSource("no-such-model/never-loaded", scale_max=9)
    with pytest.raises(DataError, match=r"trait\.txt.*\{answer\}"):
        LogprobJudge(source, trait_prompt_path=bad)
    with pytest.raises(DataError, match=r"coherence/default\.txt: coherence judge prompt file not found"):
        LogprobJudge(source, prompts_dir=tmp_path)
    judge = LogprobJudge(source)
    with pytest.raises(DataError, match="inline eval_prompt of trait 'evil'"):
        judge.check_trait_prompt("Rate {trait}", trait="evil")
