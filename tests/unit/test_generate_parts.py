"""Pieces of the generate stage on tiny inputs: records of replies whose last token was never fed (NaN
scores), conversations files and the steering setup's arithmetic."""

from __future__ import annotations

import json
import math

import pytest
import torch

from traitlab.data.texts import TextItem, load_conversations
from traitlab.errors import ConfigError, DataError
from traitlab.monitor.records import build_record, response_scores
from traitlab.monitor.scoring import Scored
from traitlab.monitor.vectors import TraitVector
from traitlab.steering_vector import SteeringSetup, SteeringVector


class _Ref:
    run_id, method, component, position = "r", "mean_diff", "residual", "response[:]"


def test_record_with_an_unfed_last_token_keeps_the_other_scores_finite():
    tv = TraitVector("cat/a", 1, _Ref(), torch.ones(4), float("nan"), "layer")
    nan = float("nan")
    # 2 prompt tokens, 3 response tokens; the last response token was never fed (NaN score and norm)
    scored = Scored([5, 6, 7, 8, 9], 2, {1: torch.tensor([[1.0], [2.0], [3.0], [6.0], [nan]])},
                    {1: torch.tensor([10.0, 10.0, 2.0, 4.0, nan])})
    rec = build_record(TextItem("p", "hi", response="a b c"), list("abcde"), scored, [tv], {0: 0}, model="m",
                       source="s", score_mode="normalized", centered=False, clean_massive=False)
    entry = rec["traits"]["cat/a"]["layers"]["1"]
    # normalized = raw / mean norm of the scored response tokens (2 and 4 -> 3)
    assert entry["normalized"][:4] == pytest.approx([1 / 3, 2 / 3, 1.0, 2.0])
    assert entry["normalized"][4] is None and entry["cosine"][4] is None and rec["norms"]["1"][4] is None
    json.dumps(rec, allow_nan=False)  # valid JSON: no NaN literals
    r = response_scores(rec, "cat/a", 1)
    assert r[:2].tolist() == pytest.approx([1.0, 2.0]) and math.isnan(float(r[2]))


def test_conversations_file_and_its_errors(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"id": "a", "messages": [{"role": "system", "content": "S"},
                                                     {"role": "user", "content": "U1"},
                                                     {"role": "assistant", "content": "A1"},
                                                     {"role": "user", "content": "U2"}]}) + "\n\n"
                 + json.dumps({"messages": [{"role": "user", "content": "only"}]}) + "\n")
    convs = load_conversations(f)
    assert [c.id for c in convs] == ["a", "1"] and convs[0].prompt == "U2" and convs[0].system_prompt == "S"
    assert len(convs[0].messages) == 4 and convs[1].system_prompt is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n"
                   + json.dumps({"messages": [{"role": "user", "content": "x"},
                                              {"role": "assistant", "content": "y"}]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: the last message is 'assistant'"):
        load_conversations(bad)
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"},
                                            {"role": "user", "content": "z"}]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: message 1: role 'system'"):
        load_conversations(bad)
    with pytest.raises(ConfigError, match="conversations"):
        load_conversations(tmp_path / "missing.jsonl")


def test_setup_coefficients_weights_and_best():
    a = SteeringVector({10: torch.ones(4), 12: torch.ones(4)}, trait="c/a", best_coefficients={10: 3.0, 12: -2.0})
    b = SteeringVector({10: torch.ones(4)}, trait="c/b")
    s = SteeringSetup([a, b], [1.0, 0.5], "8", "add")
    assert s.coefficients() == [8.0, 4.0] and "weight 0.5" in s.describe()
    best = SteeringSetup([a], [2.0], "best", "add_response")
    assert best.coefficients() == [{10: 6.0, 12: -4.0}]
    with pytest.raises(ConfigError, match=r"coefficient=best: c/b L10 has no steering result at layers \[10\]"):
        SteeringSetup([b], None, "best", "add")
    assert SteeringSetup([b], None, "best", "ablate").describe() == "c/b L10 (ablated)"  # ablation needs none
    with pytest.raises(ConfigError, match="weights"):
        SteeringSetup([a, b], [1.0], 1.0)
    with pytest.raises(ConfigError, match="not a number or best"):
        SteeringSetup([a], None, "lots")
