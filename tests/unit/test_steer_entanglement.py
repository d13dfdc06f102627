"""The trait x trait entanglement matrix from steer runs' rows: order, values and noise cells."""

from __future__ import annotations

import numpy as np
import pytest

from traitlab.tracking import steer_report as R


def row(steered, measured, delta, half=0.1, n=6):
    return {"steered": steered, "measured": measured, "layer": 10, "coefficient": 5.0, "delta": delta,
            "low": delta - half, "high": delta + half, "n": n, "unsteered": 0.0, "steered_value": delta}


def test_matrix_order_and_noise_cells():
    m = R.entanglement_matrix([row("a", "a", 1.0), row("a", "b", 0.05), row("b", "a", -0.5)])
    assert m.traits == ["a", "b"]
    assert m.delta[0].tolist() == [1.0, 0.05] and m.delta[1, 0] == -0.5 and np.isnan(m.delta[1, 1])
    assert m.excludes_zero().tolist() == [[True, False], [True, False]]


def test_every_measured_trait_shares_one_set_of_forward_batches(tiny_lm):
    """Two traits x 2 pairs x (unsteered, steered) x 2 sides = 16 rows: one forward of 16 rows above the steered
    layer, the 8 distinct rows once below it; each trait's shift equals its own propensity calls' (tested
    against plain torch in test_propensity.py)."""
    import torch

    from traitlab.config.steer import SteerConfig
    from traitlab.data import Example
    from traitlab.models.propensity import ResponsePair, propensity
    from traitlab.steering.entangle import measure_entanglement

    cfg = SteerConfig()
    cfg.steering.propensity.batch_size = 16
    ex = {
        "a": [(Example("hi there", response="good day."), Example("hi there", response="go away."), "val"),
              (Example("how are you?", response="fine, thanks!"), Example("how are you?", response="bad."), "val")],
        "b": [(Example("what now?", response="we rest."), Example("what now?", response="we run, fast."), "val"),
              (Example("is it late?", response="yes it is."), Example("is it late?", response="no."), "val")],
    }
    v = torch.randn(32, generator=torch.Generator().manual_seed(7))
    layers = tiny_lm.model.model.layers
    calls = {0: [], 3: []}
    handles = [layers[i].register_forward_pre_hook(
        lambda m, a, k, i=i: calls[i].append((a[0] if a else k["hidden_states"]).shape[0]), with_kwargs=True)
        for i in calls]
    try:
        rows = measure_entanglement(tiny_lm, cfg, ex, "a", 2, v, 3.0)
    finally:
        for h in handles:
            h.remove()
    assert calls == {0: [8], 3: [16]}
    for r, (name, pairs) in zip(rows, ex.items(), strict=True):
        rp = [ResponsePair(p.prompt, p.response, n.response) for p, n, _ in pairs]
        m = propensity(tiny_lm, rp, [None, [(2, v, 3.0)]], share_trunk=False)
        assert r["measured"] == name and r["n"] == 2
        assert r["delta"] == pytest.approx(float((m[1] - m[0]).mean()), abs=1e-5)
        assert r["unsteered"] == pytest.approx(float(m[0].mean()), abs=1e-5)
