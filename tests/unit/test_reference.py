"""Reference sets for positive-only traits (neutral set, the other traits of a category, a path) and the shipped
positive-only example category, through the real loaders."""

from __future__ import annotations

from pathlib import Path

import pytest

from traitlab.config.schema import ExtractConfig, ExtractionConfig, TraitConfig
from traitlab.data import list_traits, load_trait
from traitlab.data.reference import category_reference, load_neutral_set, reference_note, with_reference
from traitlab.errors import ConfigError
from traitlab.pipelines.trait_data import load_trait_for

ROOT = Path(__file__).resolve().parents[2]
TRAITS = ROOT / "datasets" / "traits"
EMOTIONS = ("anger", "fear", "joy", "sadness")


def test_the_neutral_set_is_plain_everyday_text_with_responses():
    ref = load_neutral_set("neutral")
    assert ref.name == "neutral:default" and len(ref.examples) >= 60
    assert all(e.response and not e.system_prompt for e in ref.examples)
    assert len({e.prompt for e in ref.examples}) == len(ref.examples)


def test_unknown_reference_lists_the_sets():
    with pytest.raises(ConfigError, match=r"extraction.reference.*available: default"):
        load_neutral_set("no_such_set")


def test_a_path_reference_reads_a_file(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("first prompt\n\nsecond prompt\n")
    ref = load_neutral_set(str(f))
    assert [e.prompt for e in ref.examples] == ["first prompt", "second prompt"]


def test_emotions_are_a_positive_only_category_sharing_prompts():
    assert [t for t in list_traits(TRAITS) if t.startswith("emotions/")] == [f"emotions/{e}" for e in EMOTIONS]
    sets = {e: load_trait(TRAITS / "emotions" / e, root=TRAITS) for e in EMOTIONS}
    prompts = [e.prompt for e in sets["joy"].positive]
    neutral = {e.prompt for e in load_neutral_set("neutral").examples}
    for name, t in sets.items():
        assert not t.negative and not t.paired and len(t.positive) >= 40
        assert all(e.response for e in t.positive)
        assert [e.prompt for e in t.positive] == prompts  # the same scenarios in every emotion: only the feeling differs
        assert t.definition and t.steering is not None and len(t.steering.questions) >= 10
        assert not set(t.steering.questions) & set(prompts)
        openings = [e.response.split()[0].lower().strip(",.!") for e in t.positive]
        assert max(openings.count(w) for w in set(openings)) <= len(openings) // 3, name
    assert set(prompts) <= neutral  # the neutral set answers the same scenarios plainly
    responses = [e.response for t in sets.values() for e in t.positive]
    assert len(set(responses)) == len(responses)


def test_category_reference_is_the_other_traits_each_weighted_the_same(tmp_path):
    joy = load_trait(TRAITS / "emotions" / "joy", root=TRAITS)
    ref = category_reference(joy, seed=0, root=TRAITS)
    assert ref.name == "category:emotions" and ref.traits == ("emotions/anger", "emotions/fear", "emotions/sadness")
    assert len(ref.examples) == 3 * 42
    assert not {e.response for e in ref.examples} & {e.response for e in joy.positive}
    # unequal sizes: every trait is subsampled (seeded) to the smallest one's size
    for name, n in (("a", 6), ("b", 4), ("c", 5)):
        d = tmp_path / "cat" / name
        d.mkdir(parents=True)
        (d / "positive.txt").write_text("".join(f"{name} prompt {i}\n" for i in range(n)))
    c = load_trait(tmp_path / "cat" / "c", root=tmp_path)
    ref = category_reference(c, seed=3, root=tmp_path)
    counts = {k: sum(e.prompt.startswith(k) for e in ref.examples) for k in "ab"}
    assert counts == {"a": 4, "b": 4}
    assert [e.prompt for e in category_reference(c, seed=3, root=tmp_path).examples] == [e.prompt for e in ref.examples]


def test_category_reference_needs_another_trait(tmp_path):
    d = tmp_path / "solo" / "only"
    d.mkdir(parents=True)
    (d / "positive.txt").write_text("a prompt\n")
    with pytest.raises(ConfigError, match="holds no trait but only"):
        category_reference(load_trait(d, root=tmp_path), seed=0, root=tmp_path)


def test_reference_replaces_negatives_as_an_unpaired_class_and_says_what_the_metrics_mean():
    joy = load_trait(TRAITS / "emotions" / "joy", root=TRAITS)
    ref = load_neutral_set("neutral")
    t = with_reference(joy, ref)
    assert t.negative == ref.examples and not t.paired and t.positive == joy.positive
    note = reference_note(ref, joy)
    assert "no negatives" in note and "pair agreement is undefined" in note and "neutral:default" in note


def test_positive_only_trait_without_a_reference_fails_before_the_model_naming_the_key():
    with pytest.raises(ConfigError, match=r"extraction.reference.*neutral\|category"):
        load_trait_for(ExtractConfig(trait=TraitConfig(name="emotions/joy")))
    t, ref = load_trait_for(ExtractConfig(trait=TraitConfig(name="emotions/joy"),
                                          extraction=ExtractionConfig(reference="category")))
    assert ref is not None and len(t.negative) == 126
