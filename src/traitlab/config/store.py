"""Register the schemas with Hydra's ConfigStore so a typo fails at start-up with the valid choices.

Each stage's top-level schema is `<stage>_schema` (conf/<stage>.yaml lists it first in its defaults):
ExtractConfig lives in config.schema, the others in config.<stage> when that stage exists.
Trait options are discovered from datasets/traits/<category>/<trait>/ so `trait=starter/sycophancy`
works for any trait directory a researcher adds, with no YAML to write.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from hydra.core.config_store import ConfigStore

from traitlab.config import schema
from traitlab.paths import datasets_dir

STAGE_SCHEMAS = {"extract": "traitlab.config.schema:ExtractConfig", "steer": "traitlab.config.steer:SteerConfig",
                 "infer": "traitlab.config.infer:InferConfig", "analyze": "traitlab.config.analyze:AnalyzeConfig",
                 "generate": "traitlab.config.generate:GenerateConfig", "chat": "traitlab.config.generate:ChatConfig",
                 "export": "traitlab.config.export:ExportConfig", "serve": "traitlab.config.serve:ServeConfig"}


def trait_names(root: Path | None = None) -> list[str]:
    root = root or datasets_dir() / "traits"
    if not root.is_dir():
        return []
    return sorted({f"{p.parent.parent.name}/{p.parent.name}" for p in root.glob("*/*/positive.*")})


def register_configs() -> None:
    cs = ConfigStore.instance()
    for stage, target in STAGE_SCHEMAS.items():
        module, name = target.split(":")
        try:
            node = getattr(importlib.import_module(module), name)
        except ModuleNotFoundError:
            continue  # stage not built yet
        cs.store(name=f"{stage}_schema", node=node)
    for trait in trait_names():
        category, name = trait.split("/", 1)
        cs.store(group=f"trait/{category}", name=name, node=schema.TraitConfig(name=trait))
