"""Metric names on the dashboard: per-layer series `layer/<metric>` (step = layer), summaries `best/<metric>`."""

from __future__ import annotations

LAYER = "layer/"
BEST = "best/"


def layer_metric(name: str) -> str:
    return LAYER + name


def best_metric(name: str) -> str:
    return BEST + name
