"""Hydra task of `traitlab export`: vectors -> llama.cpp control-vector GGUF."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from traitlab.config.export import ExportConfig
from traitlab.pipelines.export import run_export


def task(cfg: DictConfig) -> None:
    typed: ExportConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    res = run_export(typed)
    print(f"wrote {res.path} (layers {','.join(map(str, res.layers))}, scale {typed.scale:g}); "
          f"MLflow run: {res.run_id}")
    print(f"llama.cpp: --control-vector-scaled {res.path}:<coefficient> (direction.<k> = traitlab layer k)")
