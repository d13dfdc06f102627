"""Hydra task of `traitlab chat`: the interactive terminal chat (conf/chat.yaml)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from traitlab.config.generate import ChatConfig
from traitlab.pipelines.chat import run_chat


def task(cfg: DictConfig) -> float:
    typed: ChatConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    session = run_chat(typed)
    return float(len(session.turns))
