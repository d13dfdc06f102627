"""Every stage from Python with plain keyword arguments, composing the same Hydra config as the command line.

    from traitlab import api
    api.extract(trait="starter/optimism", method="mean_diff", layers="10,12")
    res = api.generate(vectors="starter/optimism", coefficient=8, prompt="Describe your Monday.",
                       generation={"max_new_tokens": 32})

A keyword is a Hydra override: ``method="mean_diff"`` is ``method=mean_diff``, a dict is a nested key
(``generation={"max_new_tokens": 32}`` is ``generation.max_new_tokens=32``), a list is a list, None is null.
``overrides=["inference.max_prompts=2"]`` passes override strings as typed on the command line. Because the
config is the CLI's, a notebook run logs the same params and has the same job key as the equivalent command
(running the command afterwards finds the notebook's run and skips it). ``lm=`` reuses a loaded model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["analyze", "chat", "compose_config", "extract", "generate", "infer", "overrides_of", "steer"]

_BARE = re.compile(r"[A-Za-z0-9_./\-]+")  # values Hydra's grammar takes unquoted with the same meaning


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{v!r} cannot be a config value")
        return repr(v)
    if isinstance(v, str):
        if _BARE.fullmatch(v) and v.lower() not in ("null", "true", "false", "none") and not _looks_numeric(v):
            return v
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(v, Sequence):
        return "[" + ",".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot pass a {type(v).__name__} as a config value")


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def overrides_of(kwargs: Mapping[str, Any], prefix: str = "") -> list[str]:
    """{'method': 'probe', 'generation': {'max_new_tokens': 8}} -> ['method=probe', 'generation.max_new_tokens=8']."""
    out = []
    for key, v in kwargs.items():
        if isinstance(v, Mapping):
            out += overrides_of(v, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={_value(v)}")
    return out


def compose_config(stage: str, overrides: Sequence[str] = (), **kwargs: Any) -> Any:
    """The typed config of ``stage`` (conf/<stage>.yaml + overrides), checked like the launchers check it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from traitlab.cli import SUBCOMMANDS, bootstrap, conf_path, quote_dsl_overrides, reject_unknown_keys

    if stage not in SUBCOMMANDS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(SUBCOMMANDS)}")
    bootstrap()
    with initialize_config_dir(config_dir=conf_path(), version_base="1.3", job_name=stage):
        # quoted as the launcher quotes them: layers=10 is the DSL string '10' either way, so both compose one job key
        cfg = compose(config_name=stage, overrides=quote_dsl_overrides([*overrides, *overrides_of(kwargs)]))
    reject_unknown_keys(cfg)
    return OmegaConf.to_object(cfg)


def _command_line(overrides: Sequence[str], kwargs: Mapping[str, Any]) -> set[str]:
    """The config keys these arguments set, as the launcher reads them from the command line (a trait's
    extraction.yaml fills only the others)."""
    from traitlab.config.trait_overrides import command_line_keys

    return command_line_keys([*overrides, *overrides_of(kwargs)])


def extract(overrides: Sequence[str] = (), *, lm: Any = None, **kwargs: Any) -> Any:
    from traitlab.pipelines.extract import run_extract

    return run_extract(compose_config("extract", overrides, **kwargs), lm=lm,
                       command_line=_command_line(overrides, kwargs))


def steer(overrides: Sequence[str] = (), *, lm: Any = None, judge: Any = None, **kwargs: Any) -> Any:
    """A SteerResult; with traits=[...] a {trait: SteerResult} of the traits searched together."""
    from traitlab.pipelines.steer import run_steer, run_steer_traits

    cfg = compose_config("steer", overrides, **kwargs)
    run = run_steer_traits if cfg.traits else run_steer
    return run(cfg, lm=lm, judge=judge, command_line=_command_line(overrides, kwargs))


def infer(overrides: Sequence[str] = (), *, lm: Any = None, **kwargs: Any) -> Any:
    from traitlab.pipelines.infer import run_infer

    return run_infer(compose_config("infer", overrides, **kwargs), lm=lm)


def analyze(overrides: Sequence[str] = (), *, lm: Any = None, **kwargs: Any) -> Any:
    from traitlab.pipelines.analyze import run_analyze

    return run_analyze(compose_config("analyze", overrides, **kwargs), lm=lm)


def generate(overrides: Sequence[str] = (), *, lm: Any = None, **kwargs: Any) -> Any:
    from traitlab.pipelines.generate import run_generate

    return run_generate(compose_config("generate", overrides, **kwargs), lm=lm)


def chat(overrides: Sequence[str] = (), *, lm: Any = None, **kwargs: Any) -> Any:
    """The interactive chat in this terminal (reads stdin)."""
    from traitlab.pipelines.chat import run_chat

    return run_chat(compose_config("chat", overrides, **kwargs), lm=lm)
