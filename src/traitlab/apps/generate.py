"""Hydra task of stage 4 (generate): steered vs unsteered responses with per-token monitoring, in MLflow."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from traitlab.config.generate import GenerateConfig
from traitlab.pipelines.generate import run_generate
from traitlab.tracking.callbacks import parent_run_id_from_hydra


def task(cfg: DictConfig) -> float:
    typed: GenerateConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    res = run_generate(typed, parent_run_id=parent_run_id_from_hydra())
    print(f"MLflow run: {res.run_id}{' (already done: skipped)' if res.skipped else ''}")
    for p in res.pairs[:3]:
        print(f"\n[{p['prompt_id']}] {p['prompt']}\n  unsteered: {p['unsteered']}\n  steered:   {p['steered']}")
    for s in res.shifts:
        ci = f"[{s['low']:+.4f}, {s['high']:+.4f}]"
        print(f"{s['trait']} L{s['layer']}: {s['unsteered']:+.4f} -> {s['steered']:+.4f}  shift {s['shift']:+.4f} "
              f"{ci} (n={s['n']})")
    return res.headline()
