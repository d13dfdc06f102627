"""Metric names on the dashboard: per-layer series `layer/<metric>` (step = layer), summaries `best/<metric>`."""

from __future__ import annotations

LAYER = "layer/"
BEST = "best/"
AUTO_BATCH = "auto_batch/"  # + a batch size key set to `auto`: the size it resolved to in this run


def layer_metric(name: str) -> str:
    return LAYER + name


def best_metric(name: str) -> str:
    return BEST + name


def auto_batch_metric(key: str) -> str:
    return AUTO_BATCH + key


# Runs of cross-trait normalised vectors carry this tag; its value names the steps ("center", "denoise",
# "center+denoise"). Registry lookups keep them apart from the vectors as extracted.
NORMALIZATION_TAG = "normalization"
