"""Ensemble math: members combine per layer (several methods at one layer add up), the projection is the
share-weighted mean of the per-layer unit projections, and CMA-ES is told a penalty for incoherent trials."""

from __future__ import annotations

import math

import pytest
import torch

from traitlab.core.ensemble import combine, layer_shares, project
from traitlab.steering.ensemble import Member, setting, told_value


def test_combine_sums_members_of_one_layer():
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([3.0, 3.0])
    out = combine([(4, a), (4, b), (7, c)], [0.5, 0.25, 2.0])
    assert list(out) == [4, 7]
    assert out[4].tolist() == [0.5, 0.5] and out[7].tolist() == [6.0, 6.0]
    with pytest.raises(ValueError):
        combine([(4, a)], [1.0, 2.0])


def test_projection_is_the_share_weighted_mean_of_unit_projections():
    d = {1: torch.tensor([3.0, 4.0]), 2: torch.tensor([0.0, 1.0])}  # norms 5 and 1: shares 5/6, 1/6
    h = {1: torch.tensor([[1.0, 1.0], [2.0, 0.0]]), 2: torch.tensor([[0.0, 6.0], [1.0, -1.0]])}
    shares = layer_shares(d)
    assert shares == pytest.approx({1: 5 / 6, 2: 1 / 6})
    # by hand: row 0: unit projections 7/5 and 6 -> 5/6*1.4 + 1/6*6 = 13/6; row 1: 6/5 and -1 -> 5/6*1.2 - 1/6 = 5/6
    assert project(h, d).tolist() == pytest.approx([13 / 6, 5 / 6])
    assert math.isnan(float(project({1: torch.ones(2)}, {1: torch.zeros(2)})))
    assert all(math.isnan(v) for v in layer_shares({1: torch.zeros(2)}).values())


def test_told_value_penalises_incoherent_trials_below_every_coherent_one():
    assert told_value(0.8, 95.0, 90.0) == 0.8
    assert told_value(-0.2, 91.0, 90.0) == -0.2
    assert told_value(2.0, 85.0, 90.0) == -5.0       # a big delta bought with incoherence ranks below zero
    assert told_value(-1.0, 80.0, 90.0) == -11.0
    assert told_value(1.0, None, 90.0) == -90.0


def test_setting_scales_each_weight_by_its_base_and_drops_zero_weights():
    v = torch.ones(3)
    members = [Member("mean_diff", 8, v, 10.0, "r1"), Member("probe", 8, v, 2.0, "r2"), Member("mean_diff", 10, v, 5.0, "r3")]
    s = setting(members, [0.5, 0.0, 0.2], direction=-1)
    assert [(layer, c) for layer, _, c in s] == [(8, -5.0), (10, -1.0)]


def test_ensemble_and_traits_settings_fail_before_the_model_loads():
    from traitlab.config.steer import EnsembleConfig, SteerConfig, SteeringConfig
    from traitlab.errors import ConfigError
    from traitlab.pipelines.steer import trait_configs
    from traitlab.steering.prepare import _check_settings

    with pytest.raises(ConfigError, match="steering.ensemble.popsize"):
        _check_settings(SteerConfig(mode="ensemble", steering=SteeringConfig(ensemble=EnsembleConfig(popsize=2))))
    with pytest.raises(ConfigError, match="steering.ensemble.start"):
        _check_settings(SteerConfig(mode="ensemble", steering=SteeringConfig(ensemble=EnsembleConfig(start=2.0))))
    with pytest.raises(ConfigError, match="traits"):
        trait_configs(SteerConfig(traits=["starter/optimism"], mode="ablation"), None)
    with pytest.raises(ConfigError, match="traits"):
        trait_configs(SteerConfig(traits=["starter/optimism", "starter/optimism"]), None)
