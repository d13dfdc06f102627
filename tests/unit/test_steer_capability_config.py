"""steering.capability and steering.max_capability_drop are checked before the model loads, naming the key."""

from __future__ import annotations

import pytest

from traitlab.config.steer import CapabilityConfig, SteerConfig, SteeringConfig
from traitlab.errors import ConfigError
from traitlab.pipelines.steer import _settings_key
from traitlab.steering.prepare import validate_inputs


@pytest.mark.parametrize(("steering", "key", "says"), [
    (SteeringConfig(max_capability_drop=0.1), "steering.max_capability_drop", "needs capability measured"),
    (SteeringConfig(capability=CapabilityConfig(set="starter"), max_capability_drop=5), "steering.max_capability_drop",
     "not in 0..1"),
    (SteeringConfig(capability=CapabilityConfig(set="starter", scoring="cloze")), "steering.capability.scoring",
     "not one of letter, text"),
    (SteeringConfig(capability=CapabilityConfig(path="x.csv", n_items=0)), "steering.capability.n_items", ">= 1"),
])
def test_capability_settings_are_checked_first(steering, key, says):
    with pytest.raises(ConfigError, match=says) as e:
        validate_inputs(SteerConfig(steering=steering))
    assert e.value.key == key


def test_capability_off_leaves_the_job_key_settings_as_before():
    off = _settings_key(SteeringConfig())
    assert "capability" not in off and "max_capability_drop" not in off
    on = _settings_key(SteeringConfig(capability=CapabilityConfig(set="starter"), max_capability_drop=0.1))
    assert on["capability"]["set"] == "starter" and on["max_capability_drop"] == 0.1
