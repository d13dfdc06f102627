"""The steering bundle on disk and the hooks each serving mode puts on the model (tiny random Llama; the
expected hidden states are computed by hand from an unhooked forward)."""

from __future__ import annotations

import json

import pytest
import torch

from traitlab.core.components import get_module
from traitlab.errors import ConfigError, DataError
from traitlab.models.loading import LoadedModel, ModelSpec
from traitlab.serving.bundle import SteeringBundle, read_bundle, write_bundle
from traitlab.serving.steered_chat import SteeredChat

D = 32


def _vec(seed: int) -> torch.Tensor:
    return torch.randn(D, generator=torch.Generator().manual_seed(seed))


def _bundle(**kw) -> SteeringBundle:
    args = dict(model=ModelSpec(name="tiny", id="/models/tiny"), vectors={1: _vec(0), 2: _vec(1)},
                coefficients={1: 3.0, 2: -1.5})
    args.update(kw)
    return SteeringBundle(**args)


def test_bundle_round_trip_is_json_and_safetensors_only(tmp_path):
    b = _bundle(mode="cap", cap_threshold=0.25, max_new_tokens=9, provenance={"trait": "starter/optimism"})
    write_bundle(tmp_path, b)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "layer_001.json", "layer_001.safetensors", "layer_002.json", "layer_002.safetensors", "steering.json"]
    doc = json.loads((tmp_path / "steering.json").read_text())
    assert doc["model"]["id"] == "/models/tiny" and doc["mode"] == "cap"
    back = read_bundle(tmp_path)
    assert back.model == b.model and back.coefficients == {1: 3.0, 2: -1.5} and back.cap_threshold == 0.25
    assert all(torch.equal(back.vectors[k], b.vectors[k]) for k in (1, 2))
    assert back.max_new_tokens == 9 and back.provenance == {"trait": "starter/optimism"}


@pytest.mark.parametrize(("kw", "key"), [
    ({"mode": "steer"}, "mode"),
    ({"mode": "cap"}, "cap_threshold"),
    ({"coefficients": {1: 1.0}}, "coefficient"),
    ({"vectors": {}, "coefficients": {}}, "layers"),
])
def test_bad_bundles_fail_naming_the_key(kw, key):
    with pytest.raises(ConfigError, match=f"config {key}"):
        _bundle(**kw)


def test_read_bundle_rejects_other_json(tmp_path):
    (tmp_path / "steering.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="steering.json: not a traitlab-steering-v1"):
        read_bundle(tmp_path)


def _chat(tiny_llama, **kw) -> SteeredChat:
    lm = LoadedModel(tiny_llama, tokenizer=None, spec=ModelSpec(name="tiny"), use_chat_template=False)
    return SteeredChat(lm, _bundle(**kw))


def _layer_outputs(model, ids, layers=(1, 2)):
    seen = {}
    handles = [get_module(model, lyr).register_forward_hook(
        lambda m, a, o, lyr=lyr: seen.__setitem__(lyr, (o[0] if isinstance(o, tuple) else o).detach().clone()))
        for lyr in layers]
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    return seen, logits


def test_modes_edit_the_residual_stream_as_documented(tiny_llama):
    ids = torch.randint(3, 128, (1, 7), generator=torch.Generator().manual_seed(0))
    plain, plain_logits = _layer_outputs(tiny_llama, ids, layers=(1,))
    chat = _chat(tiny_llama, vectors={1: _vec(0)}, coefficients={1: 3.0})
    with chat.hooks({1: 3.0}, prompt_len=4):  # add: every position
        added, _ = _layer_outputs(tiny_llama, ids, layers=(1,))
    assert torch.allclose(added[1], plain[1] + 3.0 * _vec(0), atol=1e-5)

    chat = _chat(tiny_llama, vectors={1: _vec(0)}, coefficients={1: 3.0}, mode="add_response")
    with chat.hooks({1: 3.0}, prompt_len=4):  # only positions >= 4 (the reply)
        resp, _ = _layer_outputs(tiny_llama, ids, layers=(1,))
    assert torch.allclose(resp[1][:, :4], plain[1][:, :4], atol=1e-6)
    assert torch.allclose(resp[1][:, 4:], plain[1][:, 4:] + 3.0 * _vec(0), atol=1e-5)

    chat = _chat(tiny_llama, vectors={1: _vec(0)}, coefficients={1: 0.0}, mode="ablate")
    with chat.hooks({1: 0.0}, prompt_len=4):
        ablated, _ = _layer_outputs(tiny_llama, ids, layers=(1,))
    unit = _vec(0) / _vec(0).norm()
    assert float((ablated[1] @ unit).abs().max()) < 1e-6
    assert float((plain[1] @ unit).abs().max()) > 0.01  # there was something to remove

    tau = float((plain[1] @ unit).median())  # a ceiling some positions exceed
    chat = _chat(tiny_llama, vectors={1: _vec(0)}, coefficients={1: 0.0}, mode="cap", cap_threshold=tau)
    with chat.hooks({1: 0.0}, prompt_len=4):
        capped, _ = _layer_outputs(tiny_llama, ids, layers=(1,))
    assert float((capped[1] @ unit).max()) <= tau + 1e-6 < float((plain[1] @ unit).max()) - 1e-3

    chat = _chat(tiny_llama)  # coefficient 0 in an additive mode: no hook at all, identical logits
    with chat.hooks({1: 0.0, 2: 0.0}, prompt_len=4):
        _, zero_logits = _layer_outputs(tiny_llama, ids)
    assert torch.equal(zero_logits, plain_logits)


def test_request_coefficient_overrides_every_layer_and_is_checked(tiny_llama):
    chat = _chat(tiny_llama)
    assert chat.coefficients() == {1: 3.0, 2: -1.5}
    assert chat.coefficients("4") == {1: 4.0, 2: 4.0}
    with pytest.raises(ConfigError, match="coefficient: must be a number"):
        chat.coefficients("strong")
    with pytest.raises(ConfigError, match="must be finite"):
        chat.coefficients(float("inf"))


def test_vectors_must_fit_the_model(tiny_llama):
    with pytest.raises(ConfigError, match="layer 9 is out of range"):
        _chat(tiny_llama, vectors={9: _vec(0)}, coefficients={9: 1.0})
    with pytest.raises(ConfigError, match="width 5"):
        _chat(tiny_llama, vectors={1: torch.ones(5)}, coefficients={1: 1.0})
