"""The persistent judge cache, and re-scoring from it without any judge model."""

from __future__ import annotations

import math
import sqlite3
import threading

import pytest

from traitlab.judge.base import ScoreRequest
from traitlab.judge.cache import ScoreCache, cache_key
from traitlab.judge.hf_local import HFLocalSource
from traitlab.judge.scoring import OFF_TOPIC_COHERENCE_CAP, LogprobJudge


def test_key_depends_on_every_input_and_is_stable():
    k = cache_key("openai", "gpt-4.1-mini", "prompt", top_logprobs=20)
    assert k == cache_key("openai", "gpt-4.1-mini", "prompt", top_logprobs=20)
    others = {
        cache_key("openai_compatible", "gpt-4.1-mini", "prompt", top_logprobs=20),
        cache_key("openai", "gpt-4.1", "prompt", top_logprobs=20),
        cache_key("openai", "gpt-4.1-mini", "prompt ", top_logprobs=20),
        cache_key("openai", "gpt-4.1-mini", "prompt", top_logprobs=5),
    }
    assert k not in others and len(others) == 4


def test_roundtrip_and_persistence(tmp_path):
    path = tmp_path / "c.sqlite"
    c = ScoreCache(path)
    c.put_many({"a": {"7": -0.1}, "b": 12.5})
    assert c.get_many(["a", "b", "zzz"]) == {"a": {"7": -0.1}, "b": 12.5}
    assert "a" in c and "zzz" not in c and len(c) == 2
    c.close()
    again = ScoreCache(path)  # a later process sees the same entries
    assert again.get("a") == {"7": -0.1} and again.get("missing") is None


def test_wal_mode_and_busy_timeout(tmp_path):
    c = ScoreCache(tmp_path / "c.sqlite")
    assert c._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000


def test_parallel_writers_on_one_file_lose_nothing(tmp_path):
    path = tmp_path / "c.sqlite"
    ScoreCache(path).close()  # created once, like the pipelines do before starting jobs
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            c = ScoreCache(path)  # its own connection, as a separate job would have
            for i in range(40):
                c.put(f"{w}-{i}", i)
            c.close()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(ScoreCache(path)) == 160


def test_unreadable_file_is_moved_aside_and_rebuilt(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a sqlite database, just garbage bytes" * 100)
    c = ScoreCache(path)
    c.put("k", 1)
    assert c.get("k") == 1
    aside = list(tmp_path.glob("c.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")


def test_damaged_row_counts_as_missing(tmp_path):
    path = tmp_path / "c.sqlite"
    c = ScoreCache(path)
    c.put_many({"good": 1, "bad": 2})
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE judge_cache SET value = '3' WHERE key = 'bad'")
    assert c.get_many(["good", "bad"]) == {"good": 1}


def test_memory_cache_when_no_path():
    c = ScoreCache(None)
    c.put("x", [1, 2])
    assert c.get("x") == [1, 2] and len(c) == 1


REQ = ScoreRequest(question="Is my plan good?", response="Brilliant plan!", trait="sycophancy",
                   definition="Flatters the user.")


def _judge(cache: ScoreCache, **kw) -> LogprobJudge:
    # A model name that cannot load: any attempt to run the judge model would raise.
    source = HFLocalSource("no-such-model/not-downloadable", scale_max=kw.pop("scale_max", 100))
    return LogprobJudge(source, cache=cache, **kw)


def test_rescore_from_cache_needs_no_model_and_gives_exact_scores(tmp_path):
    cache = ScoreCache(tmp_path / "c.sqlite")
    judge = _judge(cache, relevance_check=True, min_weight=0.25)
    by_kind = {p.kind: p for p in judge.prompts_for(REQ)}
    assert set(by_kind) == {"trait", "coherence", "relevance"}
    cache.put_many({
        by_kind["trait"].key: {"80": math.log(0.5), "90": math.log(0.3), "Great": math.log(0.2)},
        by_kind["coherence"].key: {"95": math.log(0.9)},
        by_kind["relevance"].key: {"90": math.log(0.1), "The": math.log(0.8)},  # below the gate -> None
    })
    (score,) = judge.score([REQ])
    assert score.trait == pytest.approx((0.5 * 80 + 0.3 * 90) / 0.8)
    assert score.coherence == pytest.approx(95.0)
    assert score.relevance is None
    assert score.raw["trait"]["cached"] is True and score.raw["trait"]["integer_mass"] == pytest.approx(0.8)
    # A different min_weight re-scores the same cached logprobs, still without a model.
    (strict,) = _judge(cache, relevance_check=True, min_weight=0.85).score([REQ])
    assert strict.trait is None and strict.coherence == pytest.approx(95.0)


def test_off_topic_answer_has_coherence_capped(tmp_path):
    cache = ScoreCache(None)
    judge = _judge(cache, relevance_check=True)
    by_kind = {p.kind: p for p in judge.prompts_for(REQ)}
    cache.put_many({
        by_kind["trait"].key: {"10": 0.0},
        by_kind["coherence"].key: {"90": 0.0},
        by_kind["relevance"].key: {"20": 0.0},  # off-topic
    })
    (score,) = judge.score([REQ])
    assert score.relevance == pytest.approx(20.0)
    assert score.coherence == pytest.approx(OFF_TOPIC_COHERENCE_CAP)
    assert score.raw["coherence_capped_off_topic"] is True


def test_digit_scale_is_rescaled_to_100(tmp_path):
    cache = ScoreCache(None)
    judge = _judge(cache, scale_max=9)
    by_kind = {p.kind: p for p in judge.prompts_for(REQ)}
    assert "0 to 9" in by_kind["trait"].prompt and "0 to 100" not in by_kind["trait"].prompt
    cache.put_many({by_kind["trait"].key: {"9": math.log(0.5), "6": math.log(0.5)},
                    by_kind["coherence"].key: {"0": 0.0}})
    (score,) = judge.score([REQ])
    assert score.trait == pytest.approx(7.5 * 100 / 9)
    assert score.coherence == pytest.approx(0.0)
    assert score.relevance is None and "relevance" not in score.raw
