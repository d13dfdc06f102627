"""The shipped starter traits load through the real loader and meet the size the design promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from traitlab.data import list_traits, load_trait

TRAITS_ROOT = Path(__file__).resolve().parents[2] / "datasets" / "traits"
STARTER = sorted(t for t in list_traits(TRAITS_ROOT) if t.startswith("starter/"))
# Written with explicit system prompts, responses and OOD pairs; the others only need the general checks.
RICH = ("starter/sycophancy", "starter/refusal", "starter/evil")


def test_the_six_starter_traits_are_present():
    expected = {"sycophancy", "refusal", "evil", "optimism", "formality", "hallucination"}
    assert expected <= {t.split("/", 1)[1] for t in STARTER}


@pytest.mark.parametrize("trait", STARTER)
def test_starter_trait_is_complete(trait):
    t = load_trait(TRAITS_ROOT / trait, root=TRAITS_ROOT)
    assert t.qualified_name == trait
    assert t.paired and len(t.positive) == len(t.negative) >= 60
    assert t.definition and len(t.definition.splitlines()) >= 2
    assert t.steering is not None and len(t.steering.questions) >= 10
    assert t.steering.direction in (1, -1)
    assert t.overrides.get("position"), "the global extraction.yaml default should reach every trait"
    # Steering questions must be held out from the extraction prompts, or the judge measures recall.
    assert not set(t.steering.questions) & {e.prompt for e in t.positive}


@pytest.mark.parametrize("trait", RICH)
def test_rich_starter_trait_pairs_share_prompts_and_differ_in_system_prompt(trait):
    t = load_trait(TRAITS_ROOT / trait, root=TRAITS_ROOT)
    assert len(t.positive) >= 64
    assert len(t.ood_positive) == len(t.ood_negative) >= 20
    for pos_set, neg_set in ((t.positive, t.negative), (t.ood_positive, t.ood_negative)):
        for p, n in zip(pos_set, neg_set, strict=True):
            assert p.prompt == n.prompt, p.source
            assert p.system_prompt and n.system_prompt and p.system_prompt != n.system_prompt, p.source
            assert p.response and n.response and p.response != n.response, p.source
    assert len({e.prompt for e in t.positive}) == len(t.positive), "duplicate prompts"
    assert not {e.prompt for e in t.positive} & {e.prompt for e in t.ood_positive}, "OOD must not repeat training"
    # No single opening word may dominate the positive responses, or a probe can learn a template.
    openings = [e.response.split()[0].lower().strip(",.!:'") for e in t.positive]
    assert max(openings.count(w) for w in set(openings)) <= len(openings) // 4
    assert t.steering is not None and t.steering.direction == 1
