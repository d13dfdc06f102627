"""The vetting drop rule on known judge scores: per-polarity thresholds, pairs dropped together, provided
responses and unscorable ones kept."""

from __future__ import annotations

import logging

import pytest

from traitlab.errors import ConfigError
from traitlab.judge.vetting import _WARNED, check_thresholds, vet_scores, vetting_enabled


def test_paired_failure_drops_the_pair_and_counts_each_reason():
    pos = [80.0, 30.0, 90.0, None, 70.0, 65.0]
    neg = [10.0, 20.0, 60.0, 5.0, 45.0, 40.0]
    out = vet_scores(pos, neg, pos_judged=[True] * 6, neg_judged=[True] * 6, paired=True,
                     positive_min=60.0, negative_max=40.0)
    # pos 1 (30 < 60) fails; neg 2 (60 > 40) and neg 4 (45 > 40) fail; 40 <= 40 and 65 >= 60 pass; None is kept
    assert out.keep_pos == out.keep_neg == [0, 3, 5]
    assert out.counts == {"n_vetted_pos": 6, "n_vetted_unscored_pos": 1, "n_vetted_failed_pos": 1,
                          "n_vetted_dropped_pos": 3, "n_vetted_kept_pos": 3,
                          "n_vetted_neg": 6, "n_vetted_unscored_neg": 0, "n_vetted_failed_neg": 2,
                          "n_vetted_dropped_neg": 3, "n_vetted_kept_neg": 3}
    dropped = {(r["polarity"], r["row"]): (r["score"], r["reason"]) for r in out.dropped}
    assert dropped == {("positive", 1): (30.0, "score below positive_min"),
                       ("positive", 2): (90.0, "its pair was dropped"),
                       ("positive", 4): (70.0, "its pair was dropped"),
                       ("negative", 1): (20.0, "its pair was dropped"),
                       ("negative", 2): (60.0, "score above negative_max"),
                       ("negative", 4): (45.0, "score above negative_max")}


def test_unpaired_rows_are_dropped_alone():
    out = vet_scores([10.0, 90.0], [95.0, 5.0, 50.0], pos_judged=[True, True], neg_judged=[True] * 3,
                     paired=False, positive_min=50.0, negative_max=50.0)
    assert out.keep_pos == [1] and out.keep_neg == [1, 2]


def test_provided_responses_are_kept_whatever_their_score():
    out = vet_scores([0.0, 0.0], [100.0, 100.0], pos_judged=[False, True], neg_judged=[False, False],
                     paired=True, positive_min=60.0, negative_max=40.0)
    assert out.keep_pos == out.keep_neg == [0]  # only the generated positive (row 1) was judged, and failed
    assert out.counts["n_vetted_pos"] == 1 and out.counts["n_vetted_neg"] == 0


def test_auto_is_on_only_with_a_real_judge(caplog):
    assert vetting_enabled("auto", "openai") and vetting_enabled("auto", "openai_compatible")
    assert not vetting_enabled("auto", "hf_local")
    _WARNED.clear()
    with caplog.at_level(logging.WARNING):
        assert vetting_enabled(True, "hf_local") and vetting_enabled(True, "hf_local")
    assert caplog.text.count("cannot tell whether a response shows a trait") == 1
    assert not vetting_enabled(False, "openai")
    with pytest.raises(ConfigError, match="extraction.vetting.enabled"):
        vetting_enabled("sometimes", "openai")


def test_thresholds_outside_the_scale_fail():
    with pytest.raises(ConfigError, match="extraction.vetting.negative_max"):
        check_thresholds(60.0, 140.0)


def test_a_judge_without_trait_scores_cannot_vet():
    """judge=perplexity scores coherence only: vetting with it would keep every response as unscored."""
    from traitlab.config.schema import ExtractConfig, JudgeConfig, TraitConfig, VettingConfig
    from traitlab.pipelines.extract import validate_inputs

    cfg = ExtractConfig(trait=TraitConfig(name="starter/optimism"), judge=JudgeConfig(backend="perplexity"))
    cfg.extraction.vetting = VettingConfig(enabled=True)
    with pytest.raises(ConfigError, match=r"extraction\.vetting: .*perplexity"):
        validate_inputs(cfg)
    cfg.extraction.vetting = VettingConfig(enabled="auto")  # auto: off with a judge that cannot see traits
    validate_inputs(cfg)
