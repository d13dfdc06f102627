"""make_judge: config keys, backend choices, and what each backend builds."""

from __future__ import annotations

import pytest

from traitlab.errors import ConfigError
from traitlab.judge import BACKENDS, make_judge
from traitlab.judge.cheap import (
    CombinedScorer,
    PerplexityCoherence,
    combine_coherence,
    perplexity_to_coherence,
)
from traitlab.judge.scoring import LogprobJudge


def test_unknown_backend_lists_choices():
    with pytest.raises(ConfigError) as e:
        make_judge({"backend": "anthropic"})
    msg = str(e.value)
    assert msg.startswith("config judge.backend: 'anthropic'") and all(b in msg for b in BACKENDS)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"judge\.max_retry: unknown key; valid keys: .*max_retries"):
        make_judge({"backend": "hf_local", "max_retry": 3})


def test_hydra_bookkeeping_keys_are_ignored():
    assert isinstance(make_judge({"backend": "hf_local", "name": "local", "cache_path": None}), LogprobJudge)


def test_bad_values_fail_at_construction():
    with pytest.raises(ConfigError, match="judge.min_weight"):
        make_judge({"backend": "hf_local", "min_weight": 2, "cache_path": None})
    with pytest.raises(ConfigError, match="judge.top_logprobs"):
        make_judge({"backend": "hf_local", "top_logprobs": 50, "cache_path": None})
    with pytest.raises(ConfigError, match="judge.base_url"):
        make_judge({"backend": "openai_compatible", "cache_path": None})
    with pytest.raises(ConfigError, match="judge.scale_max"):
        make_judge({"backend": "openai", "scale_max": 10, "cache_path": None})


def test_backends_build_the_right_scorer(tmp_path):
    judge = make_judge({"backend": "openai", "cache_path": str(tmp_path / "c.sqlite")})
    assert isinstance(judge, LogprobJudge) and judge.source.model_id == "gpt-4.1-mini"
    assert judge.cache.path == tmp_path / "c.sqlite"
    assert isinstance(make_judge({"backend": "perplexity", "cache_path": None}), PerplexityCoherence)
    both = make_judge({"backend": "hf_local", "perplexity_combine": "mean", "cache_path": None})
    assert isinstance(both, CombinedScorer) and both.mode == "mean"


def test_default_cache_lives_under_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITLAB_CACHE", str(tmp_path))
    judge = make_judge({"backend": "hf_local"})
    assert judge.cache.path == tmp_path / "judge_cache.sqlite"


def test_perplexity_mapping_is_log_linear_and_clamped():
    assert perplexity_to_coherence(5.0) == pytest.approx(100.0)
    assert perplexity_to_coherence(1.2) == pytest.approx(100.0)
    assert perplexity_to_coherence(3000.0) == pytest.approx(0.0)
    assert perplexity_to_coherence(1e6) == pytest.approx(0.0)
    # geometric midpoint of [5, 3000] maps to 50
    assert perplexity_to_coherence((5.0 * 3000.0) ** 0.5) == pytest.approx(50.0)
    assert perplexity_to_coherence(10.0, ppl_min=1.0, ppl_max=100.0) == pytest.approx(50.0)
    with pytest.raises(ConfigError):
        perplexity_to_coherence(10.0, ppl_min=50.0, ppl_max=10.0)


def test_combine_coherence():
    assert combine_coherence(80.0, 40.0, "min") == 40.0
    assert combine_coherence(80.0, 40.0, "mean") == 60.0
    assert combine_coherence(None, 40.0) == 40.0 and combine_coherence(80.0, None) == 80.0
    assert combine_coherence(None, None) is None
    with pytest.raises(ConfigError, match="min or mean"):
        combine_coherence(1.0, 2.0, "max")
