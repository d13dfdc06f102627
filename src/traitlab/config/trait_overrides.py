"""Apply a trait's extraction.yaml settings to the extract config, below the command line.

Precedence, highest first: command line > trait's extraction.yaml > category's > global (datasets/traits/)
> config defaults (conf/, experiment presets). The cascade of files is merged in data/traits.py; this module
decides what wins against the config and checks each value's type against the config schema, naming the
file and line that set a bad one.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from traitlab.config.schema import ExtractConfig
from traitlab.data import TraitDataset
from traitlab.data.traits import OVERRIDE_KEYS
from traitlab.errors import DataError


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


def _settings(trait: TraitDataset) -> dict[str, Any]:
    """The trait's settings as {config key: value}."""
    out: dict[str, Any] = {}
    for key, value in trait.overrides.items():
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
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf = OmegaConf.structured(cfg)
    kept_by = "command line" if command_line is not None else "caller"
    if command_line is None:
        defaults = OmegaConf.structured(ExtractConfig())
        command_line = [k for k in _settings(trait)
                        if OmegaConf.select(conf, k) != OmegaConf.select(defaults, k)]
    explicit = set(command_line)
    report: dict[str, dict[str, Any]] = {}
    for key, value in _settings(trait).items():
        source = trait.override_sources.get(key, str(trait.path))
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
