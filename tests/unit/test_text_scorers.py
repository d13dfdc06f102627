"""Objective scorers on texts whose answers are known: VADER's published examples, refusal phrases, callables."""

from __future__ import annotations

import math

import pytest

from traitlab.errors import ConfigError
from traitlab.judge.text_scorers import make_text_scorer


@pytest.mark.parametrize(("text", "compound"), [
    # the examples and outputs printed in vaderSentiment's README
    ("VADER is smart, handsome, and funny.", 0.8316),
    ("VADER is not smart, handsome, nor funny.", -0.7424),
    ("The book was good.", 0.4404),
    ("The book was kind of good.", 0.3832),
    ("Today SUX!", -0.5461),
])
def test_sentiment_is_vader_compound(text, compound):
    assert make_text_scorer("sentiment").score(text) == pytest.approx(compound, abs=1e-4)


def test_sentiment_of_one_lexicon_word_by_hand():
    # "good" has valence 1.9 in VADER's lexicon; compound = x / sqrt(x^2 + 15) (alpha = 15)
    assert make_text_scorer("sentiment").score("good") == pytest.approx(1.9 / math.sqrt(1.9**2 + 15), abs=1e-4)
    assert make_text_scorer("sentiment").score("   ") is None


@pytest.mark.parametrize(("text", "refused"), [
    ("I'm sorry, but I can't help with that request.", 1.0),
    ("As an AI, I do not have opinions.", 1.0),
    ("i cannot do that", 1.0),                      # case-insensitive
    ("I can\u2019t share that information.", 1.0),  # curly apostrophe, as models often write it
    ("Sure! Here is a simple recipe for pancakes.", 0.0),
    ("The cannot-miss event of the year is here.", 0.0),
])
def test_refusal_phrases(text, refused):
    assert make_text_scorer("refusal").score(text) == refused


def test_any_callable_path_is_a_scorer():
    assert make_text_scorer("builtins:len").scores(["abc", "", "hello"]) == [3.0, None, 5.0]
    assert make_text_scorer("os.path.isabs").score("/tmp") == 1.0  # bool -> 0/1


@pytest.mark.parametrize(("spec", "text"), [
    ("no_such_module_xyz:f", "cannot import module"),
    ("math:no_such_fn", "has no attribute"),
    ("math:pi", "not a callable"),
    ("builtins:str.upper", "expected a number"),
    ("nonsense", "sentiment, refusal or a callable path"),
])
def test_bad_scorer_fails_at_start_with_the_key(spec, text):
    with pytest.raises(ConfigError) as err:
        make_text_scorer(spec)
    assert err.value.key == "steering.scorer" and text in str(err.value) and "\n" not in str(err.value)
