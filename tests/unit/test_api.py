"""traitlab.api: keyword arguments become the Hydra overrides a person would type, and compose the same
typed config the launchers build."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from traitlab.api import compose_config, overrides_of
from traitlab.cli import bootstrap, conf_path, quote_dsl_overrides
from traitlab.errors import ConfigError


def test_keywords_render_as_overrides():
    got = overrides_of({"trait": "starter/optimism", "layers": "10,12", "position": {"spec": "response[:5]"},
                        "coefficient": 8.0, "force": True, "monitor": ["starter/a", "starter/b"], "prompt": None,
                        "vectors": "run:0a1b", "weights": "1", "text": "it's"})
    assert got == ["trait=starter/optimism", "layers='10,12'", "position.spec='response[:5]'", "coefficient=8.0",
                   "force=true", "monitor=[starter/a,starter/b]", "prompt=null", "vectors='run:0a1b'",
                   "weights='1'", "text='it\\'s'"]


@pytest.mark.parametrize("stage, kwargs, cli", [
    ("extract", {"trait": "starter/optimism", "method": "mean_diff", "layers": "10,12"},
     ["trait=starter/optimism", "method=mean_diff", "layers='10,12'"]),
    ("generate", {"vectors": "starter/optimism", "coefficient": "best", "generation": {"max_new_tokens": 8},
                  "prompt": "Hi there, how is it going?"},
     ["vectors=starter/optimism", "coefficient=best", "generation.max_new_tokens=8",
      "prompt='Hi there, how is it going?'"]),
    ("infer", {"traits": ["starter/optimism"], "layers": "best,best+2"},
     ["traits=[starter/optimism]", "layers='best,best+2'"]),
])
def test_api_config_equals_the_cli_composition(stage, kwargs, cli):
    bootstrap()
    with initialize_config_dir(config_dir=conf_path(), version_base="1.3"):
        want = OmegaConf.to_object(compose(config_name=stage, overrides=cli))
    assert compose_config(stage, **kwargs) == want


def test_typos_fail_like_on_the_command_line():
    with pytest.raises(Exception, match="coeficient"):
        compose_config("generate", coeficient=3)
    with pytest.raises(ConfigError, match="unknown key"):
        compose_config("generate", ["+cap.quantil=0.5"])


@pytest.mark.parametrize("stage, kwargs, typed", [
    ("generate", {"vectors": "starter/optimism", "layers": 10}, ["vectors=starter/optimism", "layers=10"]),
    ("generate", {"vectors": "starter/optimism", "layers": 10, "monitor_layers": 12},
     ["vectors=starter/optimism", "layers=10", "monitor_layers=12"]),
])
def test_numbers_for_dsl_keys_compose_like_the_launcher(stage, kwargs, typed):
    """The launcher quotes DSL values (`layers=10` is the string '10'); a Python int must land the same, or the
    two compose different job keys and the notebook never finds the command line's run."""
    bootstrap()
    with initialize_config_dir(config_dir=conf_path(), version_base="1.3"):
        want = OmegaConf.to_object(compose(config_name=stage, overrides=quote_dsl_overrides(typed)))
    got = compose_config(stage, **kwargs)
    assert got == want
    assert got.layers == "10"
