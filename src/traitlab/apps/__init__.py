"""Hydra task functions, one module per stage: DictConfig -> typed config -> pipeline -> metric.

Each module defines `task(cfg) -> float` (the value a sweeper would optimise); its typed schema lives in
traitlab.config.<stage> (or config.schema for extract) and is registered as `<stage>_schema`.
"""
