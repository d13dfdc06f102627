"""The trait x trait entanglement matrix from steer runs' rows: order, values and noise cells."""

from __future__ import annotations

import numpy as np

from traitlab.tracking import steer_report as R


def row(steered, measured, delta, half=0.1, n=6):
    return {"steered": steered, "measured": measured, "layer": 10, "coefficient": 5.0, "delta": delta,
            "low": delta - half, "high": delta + half, "n": n, "unsteered": 0.0, "steered_value": delta}


def test_matrix_order_and_noise_cells():
    m = R.entanglement_matrix([row("a", "a", 1.0), row("a", "b", 0.05), row("b", "a", -0.5)])
    assert m.traits == ["a", "b"]
    assert m.delta[0].tolist() == [1.0, 0.05] and m.delta[1, 0] == -0.5 and np.isnan(m.delta[1, 1])
    assert m.excludes_zero().tolist() == [[True, False], [True, False]]
