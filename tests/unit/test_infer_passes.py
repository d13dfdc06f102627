"""The inference passes on the tiny Llama: hook scores == manual projections of the hidden states ==
re-projected captures, per text, whatever the padding; plus config composition and early validation."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from traitlab.config.infer import InferConfig
from traitlab.core.analysis import project_tokens
from traitlab.core.components import get_module
from traitlab.core.massive import MaxAbsTracker
from traitlab.errors import ConfigError, DataError
from traitlab.models.encoding import Encoded
from traitlab.pipelines.infer import (
    Scored,
    TextItem,
    build_record,
    calibrate_encoded,
    capture_encoded,
    load_response_items,
    project_encoded,
    trait_list,
    validate,
    view_record,
)

D = 32


def _encoded() -> list[Encoded]:
    g = torch.Generator().manual_seed(7)
    lengths, prompts = [5, 9, 3, 9], [2, 4, 1, 9]
    return [
        Encoded(torch.randint(3, 128, (n,), generator=g).tolist(), p)
        for n, p in zip(lengths, prompts, strict=True)
    ]


def _vectors() -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {1: torch.randn(3, D, generator=g), 3: torch.randn(2, D, generator=g) * 5}


def _hidden(model, ids: list[int]) -> dict[int, torch.Tensor]:
    """Outputs of every decoder layer for one unpadded text, recorded by plain torch hooks.

    (Not output_hidden_states: its last entry is after the final norm.)
    """
    seen: dict[int, torch.Tensor] = {}
    handles = [
        get_module(model, layer).register_forward_hook(
            lambda m, a, o, layer=layer: seen.__setitem__(
                layer, (o[0] if isinstance(o, tuple) else o)[0].detach()
            )
        )
        for layer in range(4)
    ]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return seen


def test_hook_scores_match_manual_projection_per_text(tiny_llama):
    enc, vecs = _encoded(), _vectors()
    scored = project_encoded(tiny_llama, enc, vecs, batch_size=3, pad_id=0)  # mixed lengths -> left padding
    assert [s.token_ids for s in scored] == [e.ids for e in enc]
    for e, s in zip(enc, scored, strict=True):
        hs = _hidden(tiny_llama, e.ids)
        for layer, mat in vecs.items():
            want, want_norms = project_tokens(hs[layer], mat)
            assert s.scores[layer].shape == (len(e.ids), mat.shape[0])
            torch.testing.assert_close(s.scores[layer], want, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(s.norms[layer], want_norms, atol=1e-4, rtol=1e-4)


def test_capture_then_reproject_equals_hook_scores(tiny_llama):
    enc, vecs = _encoded(), _vectors()
    captured: dict[int, dict[int, torch.Tensor]] = {}
    capture_encoded(
        tiny_llama, enc, [1, 3], lambda i, acts: captured.__setitem__(i, acts), batch_size=3, pad_id=0
    )
    scored = project_encoded(tiny_llama, enc, vecs, batch_size=3, pad_id=0)
    assert sorted(captured) == [0, 1, 2, 3]
    for i, s in enumerate(scored):
        assert captured[i][1].shape == (len(enc[i].ids), D)
        for layer, mat in vecs.items():
            again, norms = project_tokens(captured[i][layer], mat)
            torch.testing.assert_close(again, s.scores[layer], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(norms, s.norms[layer], atol=1e-5, rtol=1e-5)


def test_calibration_listens_in_on_the_scoring_pass(tiny_llama):
    enc = _encoded()
    tracker = MaxAbsTracker(range(4), max_tokens=10_000)
    project_encoded(tiny_llama, enc, _vectors(), batch_size=2, pad_id=0, tracker=tracker)
    assert tracker.n_tokens == sum(len(e.ids) for e in enc)
    want = torch.stack([_hidden(tiny_llama, e.ids)[2].abs().amax(0) for e in enc]).amax(0)
    torch.testing.assert_close(tracker.max_abs()[2], want, atol=1e-5, rtol=1e-5)


def test_calibration_only_pass_stops_at_the_token_budget(tiny_llama):
    enc = _encoded()  # lengths 5, 9, 3, 9; batches of 2, longest first: [9, 9] then [5, 3]
    tracker = MaxAbsTracker(range(4), max_tokens=10)
    calibrate_encoded(tiny_llama, enc, tracker, batch_size=2, pad_id=0)
    assert tracker.n_tokens == 18  # the first batch filled the budget: the second never ran
    want = torch.stack([_hidden(tiny_llama, enc[i].ids)[1].abs().amax(0) for i in (1, 3)]).amax(0)
    torch.testing.assert_close(tracker.max_abs()[1], want, atol=1e-5, rtol=1e-5)


def test_build_record_modes_and_view_slice():
    class Ref:
        run_id, method, component, position = "r1", "probe", "residual", "response[:]"

    from traitlab.pipelines.infer import TraitVector

    tv = TraitVector("cat/a", 2, Ref(), torch.ones(D), baseline=1.0, selection="val_effect_size")
    scored = Scored(
        [5, 6, 7], 1, {2: torch.tensor([[9.0], [3.0], [5.0]])}, {2: torch.tensor([90.0, 2.0, 6.0])}
    )
    rec = build_record(
        TextItem("p", "hi", response="yo"),
        ["a", "b", "c"],
        scored,
        [tv],
        {0: 0},
        model="m",
        source="s",
        score_mode="normalized",
        centered=True,
        clean_massive=False,
    )
    layer = rec["traits"]["cat/a"]["layers"]["2"]
    assert layer["raw"] == [8.0, 2.0, 4.0]
    assert layer["scores"] == layer["normalized"] == pytest.approx([2.0, 0.5, 1.0])  # ÷ response mean norm 4
    assert layer["cosine"] == pytest.approx([8 / 90, 1.0, 4 / 6])
    assert rec["norms"]["2"] == [90.0, 2.0, 6.0] and rec["n_prompt_tokens"] == 1
    slim = view_record(rec)
    # the page keeps the selected mode, and the vector's provenance and baseline for its header
    assert set(slim["traits"]["cat/a"]["layers"]["2"]) == {"scores", "mode", "vector", "baseline"}
    assert slim["traits"]["cat/a"]["layers"]["2"]["vector"]["selection"] == "val_effect_size" and "norms" not in slim
    json.dumps(rec)  # plain JSON


def _compose(name: str, overrides: list[str]):
    from traitlab.cli import bootstrap, conf_path

    bootstrap()
    with initialize_config_dir(config_dir=conf_path(), version_base="1.3"):
        return OmegaConf.to_object(compose(name, overrides=overrides))


def test_configs_compose_with_groups_and_overrides():
    cfg = _compose(
        "infer",
        [
            "prompt_set=smoke",
            "traits=[starter/optimism]",
            "layers=[best,best+5]",
            "inference.score_mode=cosine",
            "mode=capture",
        ],
    )
    assert isinstance(cfg, InferConfig)
    assert (cfg.traits, cfg.layers, cfg.inference.score_mode, cfg.inference.generation.max_new_tokens) == (
        ["starter/optimism"],
        ["best", "best+5"],
        "cosine",
        50,
    )
    a = _compose("analyze", ["analysis=model_diff", "variant_b.lora=adapter", "variant_b.name=lora"])
    assert (a.analysis.name, a.variant_a.lora, a.variant_b.lora, a.variant_b.name) == (
        "model_diff",
        None,
        "adapter",
        "lora",
    )
    with pytest.raises(Exception, match="top_spans"):  # a typo lists the valid analyses
        _compose("analyze", ["analysis=top_span"])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"mode": "stream2"}, "mode: 'stream2' is not one of stream, capture, reproject, from_responses"),
        ({"mode": "from_responses"}, "responses"),
        ({"layers": "best+x"}, "cannot parse"),
        ({"prompt_set": "nope"}, "available: .*smoke"),
        ({"traits": 3}, "traits"),
    ],
)
def test_validate_fails_before_the_model_loads(override, match):
    cfg = InferConfig(prompt_set="smoke")
    for k, v in override.items():
        setattr(cfg, k, v)
    with pytest.raises((ConfigError, ValueError), match=match):
        validate(cfg)


def test_responses_file_errors_name_file_and_line(tmp_path):
    good = tmp_path / "r.json"
    good.write_text(
        json.dumps({"items": [{"prompt": "p", "response": "r"}, {"id": "x", "prompt": "q", "response": "s"}]})
    )
    items = load_response_items(good)
    assert [(i.id, i.response) for i in items] == [("0", "r"), ("x", "s")]
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"prompt": "p", "response": "r"},\n  {"prompt": "q"}\n]\n')
    with pytest.raises(DataError, match=r"bad.json:3: item 1: \"response\" must be a non-empty string"):
        load_response_items(bad)
    assert trait_list("a/b, c/d") == ["a/b", "c/d"] and trait_list(None) is None
