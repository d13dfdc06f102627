"""SteeringVector on the tiny random Llama: the file round trip (and a plain safetensors read of it), and
``apply`` in every mode checked against the layer's outputs recorded by a raw torch hook."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from traitlab.core.components import get_module
from traitlab.errors import ConfigError, DataError, TraitlabError
from traitlab.steering_vector import SteeringVector, steer
from traitlab.tracking.artifacts import save_vector

D = 32


def _vec(seed: int) -> torch.Tensor:
    v = torch.randn(D, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _ids() -> torch.Tensor:
    return torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(3))


def _layer_out(model, layer: int, ids: torch.Tensor) -> torch.Tensor:
    seen = []
    h = get_module(model, layer).register_forward_hook(
        lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o).detach().clone()))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        h.remove()
    return seen[0]


def _sv(**kw) -> SteeringVector:
    base = dict(directions={1: _vec(1), 2: _vec(2)}, trait="cat/kind", model="tiny", model_id="local:tiny",
                method="mean_diff", position="response[:]", source_run="abc",
                metrics={1: {"val_effect_size": 1.5}}, best_coefficients={2: -3.25})
    return SteeringVector(**{**base, **kw})


def test_save_load_round_trip_and_plain_safetensors(tmp_path):
    v = _sv()
    path = v.save(tmp_path / "kind")
    assert path.name == "kind.safetensors" and path.with_suffix(".json").is_file()
    back = SteeringVector.load(path)
    assert back.layers == [1, 2] and back.provenance() == v.provenance()
    for layer in (1, 2):
        assert torch.equal(back[layer], v[layer])
    # without traitlab: plain safetensors + JSON
    plain = load_file(str(path))
    assert sorted(plain) == ["layer.1", "layer.2"] and torch.equal(plain["layer.2"], v[2])
    with safe_open(str(path), framework="pt") as fh:
        prov = json.loads(fh.metadata()["provenance"])
    assert prov["trait"] == "cat/kind" and prov["best_coefficients"] == {"2": -3.25}
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["layers"] == [1, 2] and side["dim"] == D and side["source_run"] == "abc"


def test_load_reads_an_extraction_vector_file(tmp_path):
    f = tmp_path / "layer_002.safetensors"
    save_vector(f, _vec(5) * 2, {"trait": "cat/x", "model": "tiny", "model_id": "local:tiny", "method": "probe",
                                 "component": "residual", "position": "prompt[-1]", "layer": 2, "dim": D,
                                 "metrics": {"val_accuracy": 0.9}})
    v = SteeringVector.load(f)
    assert v.layers == [2] and v.method == "probe" and v.position == "prompt[-1]"
    assert v.metrics == {2: {"val_accuracy": 0.9}} and torch.equal(v[2], _vec(5) * 2)


def test_load_rejects_other_files(tmp_path):
    from traitlab.io import save_tensors

    save_tensors(tmp_path / "x.safetensors", {"weights": torch.ones(3)})
    with pytest.raises(DataError, match="not a steering vector file"):
        SteeringVector.load(tmp_path / "x.safetensors")


def test_bad_directions_fail_on_construction():
    with pytest.raises(ConfigError, match="different widths"):
        SteeringVector({1: torch.ones(4), 2: torch.ones(5)})
    with pytest.raises(ConfigError, match="NaN"):
        SteeringVector({1: torch.tensor([1.0, float("nan")])})
    with pytest.raises(ConfigError, match="at least one"):
        SteeringVector({})


def test_add_shifts_each_layer_by_its_coefficient_and_restores(tiny_llama):
    ids = _ids()
    v = SteeringVector({2: _vec(1)})
    before = _layer_out(tiny_llama, 2, ids)
    with v.apply(tiny_llama, coefficient=3.0):
        steered = _layer_out(tiny_llama, 2, ids)
    torch.testing.assert_close(steered, before + 3.0 * _vec(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(_layer_out(tiny_llama, 2, ids), before, atol=0, rtol=0)  # restored
    with pytest.raises(RuntimeError, match="boom"), v.apply(tiny_llama, 3.0):
        raise RuntimeError("boom")
    torch.testing.assert_close(_layer_out(tiny_llama, 2, ids), before, atol=0, rtol=0)  # restored on error


def test_composition_sums_weighted_deltas_and_per_layer_coefficients(tiny_llama):
    ids = _ids()
    a, b = SteeringVector({1: _vec(1)}), SteeringVector({1: _vec(2)})
    before = _layer_out(tiny_llama, 1, ids)
    with steer(tiny_llama, [a, b], [2.0, -0.5]):
        got = _layer_out(tiny_llama, 1, ids)
    torch.testing.assert_close(got, before + 2.0 * _vec(1) - 0.5 * _vec(2), atol=1e-5, rtol=0)
    two = SteeringVector({0: _vec(3), 3: _vec(4)})
    with two.apply(tiny_llama, {0: 0.0, 3: 5.0}):  # layer 0 untouched, layer 3 shifted
        l0 = _layer_out(tiny_llama, 0, ids)
    torch.testing.assert_close(l0, _layer_out(tiny_llama, 0, ids), atol=0, rtol=0)
    with pytest.raises(ConfigError, match="no coefficient for layers"):
        two.apply(tiny_llama, {3: 1.0})


def test_add_response_leaves_positions_before_start_alone(tiny_llama):
    ids = _ids()
    v = SteeringVector({2: _vec(1)})
    before = _layer_out(tiny_llama, 2, ids)
    with v.apply(tiny_llama, 4.0, mode="add_response", start=4):
        got = _layer_out(tiny_llama, 2, ids)
    torch.testing.assert_close(got[:, :4], before[:, :4], atol=0, rtol=0)
    torch.testing.assert_close(got[:, 4:], before[:, 4:] + 4.0 * _vec(1), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="start"):
        v.apply(tiny_llama, 4.0, mode="add_response")


def test_ablate_and_cap(tiny_llama):
    ids = _ids()
    u = _vec(7)
    v = SteeringVector({2: u * 3})  # not unit: ablation and capping use the direction only
    before = _layer_out(tiny_llama, 2, ids)
    with v.apply(tiny_llama, mode="ablate"):
        ablated = _layer_out(tiny_llama, 2, ids)
    assert float((ablated @ u).abs().max()) < 1e-4
    torch.testing.assert_close(ablated, before - (before @ u).unsqueeze(-1) * u, atol=1e-5, rtol=0)
    coords = before @ u
    tau = float(coords.median())
    with v.apply(tiny_llama, mode="cap", thresholds={2: tau}):
        capped = _layer_out(tiny_llama, 2, ids)
    want = torch.minimum(coords, torch.tensor(tau))
    torch.testing.assert_close(capped @ u, want, atol=1e-4, rtol=0)
    with v.apply(tiny_llama, mode="cap", thresholds={2: tau}, cap="floor"):
        floored = _layer_out(tiny_llama, 2, ids)
    torch.testing.assert_close(floored @ u, torch.maximum(coords, torch.tensor(tau)), atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="thresholds"):
        v.apply(tiny_llama, mode="cap")


def test_bad_mode_and_width_fail_before_any_hook(tiny_llama):
    # Any earlier call with output_hidden_states=True (test_hooks does it on this session-wide model) makes
    # transformers install its own, permanent, output-capturing hooks on every decoder layer: make that
    # happen here so this test sees the same model whatever ran before it.
    with torch.no_grad():
        tiny_llama(input_ids=_ids(), output_hidden_states=True)
    hooks = _hook_snapshot(tiny_llama)
    before = _layer_out(tiny_llama, 1, _ids())
    with pytest.raises(ConfigError, match="not one of"):
        SteeringVector({1: _vec(1)}).apply(tiny_llama, 1.0, mode="multiply")
    with pytest.raises(TraitlabError, match="dims"):
        SteeringVector({1: torch.ones(D + 1)}).apply(tiny_llama, 1.0)
    assert _hook_snapshot(tiny_llama) == hooks  # nothing of ours left registered
    torch.testing.assert_close(_layer_out(tiny_llama, 1, _ids()), before, atol=0, rtol=0)


def _hook_snapshot(model) -> dict[str, tuple]:
    """Every module's registered hook ids (transformers' own capturing hooks included)."""
    return {name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._forward_hooks_with_kwargs))
            for name, m in model.named_modules()}


def test_select_keeps_provenance():
    v = _sv().select([2])
    assert v.layers == [2] and v.best_coefficients == {2: -3.25} and v.metrics == {} and v.trait == "cat/kind"
    with pytest.raises(ConfigError, match="no direction at layers"):
        v.select([5])
