"""Apply a trait's extraction.yaml settings to the extract config, below the command line.

Precedence, highest first: command line > trait's extraction.yaml > category's > global (datasets/traits/)
> config defaults (conf/, experiment presets). The cascade of files is merged in data/traits.py; this module
decides what wins against the config and checks each value's type against the config schema, naming the
file and line that set a bad one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from traitlab.config.schema import ExtractConfig
from traitlab.data import TraitDataset
from traitlab.data.traits import OVERRIDE_KEYS, load_located_overrides, resolve_trait_dir
from traitlab.errors import ConfigError, DataError

C = TypeVar("C")

# The extraction settings that tell one trait's vectors apart in the registry (a run's method, position and
# component tags). Every stage that looks vectors up takes them from the trait's files unless it names them.
LOOKUP_KEYS = ("method", "position", "component")


def command_line_keys(overrides: Collection[str]) -> set[str]:
    """Config keys a list of Hydra overrides sets: `position.spec='x'` -> position.spec, `method=probe` ->
    method (a group: all of method.*), `+extraction.val_split=0.3` -> extraction.val_split."""
    keys = set()
    for o in overrides:
        key, sep, _ = str(o).partition("=")
        key = key.lstrip("+")
        if sep and not key.startswith(("~", "hydra.", "hydra/")):
            keys.add(key.replace("/", "."))
    return keys


def _settings(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A trait's settings (extraction.yaml keys) as {config key: value}."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "generation":
            out.update({f"extraction.generation.{k}": v for k, v in value.items()})
        else:
            out[OVERRIDE_KEYS[key]] = value
    return out


def apply_trait_overrides(cfg: ExtractConfig, trait: TraitDataset, command_line: Collection[str] | None = None
                          ) -> tuple[ExtractConfig, dict[str, dict[str, Any]]]:
    """The effective config, and for each key the trait's files set: its value, the file:line, and whether it
    was applied or the command line kept its own value.

    `command_line`: the keys the user set (the Hydra app passes its overrides' keys). None, for a caller
    from Python: every key whose value differs from the schema default counts as set by the caller.
    """
    return _apply(cfg, _settings(trait.overrides), trait.override_sources, str(trait.path), command_line)


def _apply(cfg: C, settings: dict[str, Any], sources: Mapping[str, str], where: str,
           command_line: Collection[str] | None) -> tuple[C, dict[str, dict[str, Any]]]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf = OmegaConf.structured(cfg)
    kept_by = "command line" if command_line is not None else "caller"
    if command_line is None:
        defaults = OmegaConf.structured(type(cfg)())
        command_line = [k for k in settings if OmegaConf.select(conf, k) != OmegaConf.select(defaults, k)]
    explicit = set(command_line)
    report: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        source = sources.get(key, where)
        if any(key == k or key.startswith(k + ".") for k in explicit):
            report[key] = {"value": value, "source": source, "applied": False, "kept": kept_by}
            continue
        try:
            OmegaConf.update(conf, key, value, merge=False)
        except OmegaConfBaseException as e:
            file, _, line = source.rpartition(":")
            raise DataError(file or source, f"{key}: {str(e).splitlines()[0]}",
                            line=int(line) if line.isdigit() else None) from None
        report[key] = {"value": value, "source": source, "applied": True}
    return OmegaConf.to_object(conf), report  # type: ignore[return-value]


# ------------------------------------------------------------------------------------- vector lookups


def trait_lookup_settings(trait: str | None, path: str | Path | None = None) -> dict[str, str]:
    """The method / position / component a trait's extraction.yaml cascade sets (keys it leaves unset are
    absent). A trait that is not on disk (only its runs are) has no settings; a bad file is a DataError."""
    try:
        trait_dir = resolve_trait_dir(trait, path)
    except ConfigError:
        return {}
    overrides, _ = load_located_overrides(trait_dir)
    return {k: str(overrides[k]) for k in LOOKUP_KEYS if overrides.get(k) is not None}


def lookup_filters(trait: str | None, path: str | Path | None = None, **given: str | None) -> dict[str, str | None]:
    """The registry filters for `trait`'s vectors: each of method / position / component as given (the caller
    named it) or else as the trait's extraction.yaml sets it (how its vectors were extracted), else None."""
    unknown = set(given) - set(LOOKUP_KEYS)
    if unknown:
        raise TypeError(f"lookup_filters: unknown keys {sorted(unknown)}")
    named = {k: given.get(k) for k in LOOKUP_KEYS}
    if all(v is not None for v in named.values()):
        return named
    settings = trait_lookup_settings(trait, path)
    return {k: v if v is not None else settings.get(k) for k, v in named.items()}


def apply_lookup_settings(cfg: C, command_line: Collection[str] | None = None) -> C:
    """A stage config whose vectors come from `cfg.trait` (method / position / component config groups, as
    steer's) with the trait's extraction settings applied below the command line, as extract applies them:
    command line > trait > category > global > the stage's defaults. `command_line` as for
    apply_trait_overrides (None: a Python caller, whose values that differ from the defaults count as set)."""
    trait_dir = resolve_trait_dir(cfg.trait.name, cfg.trait.path)  # type: ignore[attr-defined]
    overrides, sources = load_located_overrides(trait_dir)
    settings = _settings({k: v for k, v in overrides.items() if k in LOOKUP_KEYS})
    return _apply(cfg, settings, sources, str(trait_dir), command_line)[0]
