"""Metric names on the dashboard: per-layer series `layer/<metric>` (step = layer), summaries `best/<metric>`.

A run table shows a series' LAST step, so every number meant for a column is a `best/...` summary. Checks and
method settings that come out the same at every layer (polarity_correct, a probe's C, converged) are not
drawn as flat series: `series_names` leaves them out of `layer/` and the `best/` summary keeps their value.
Per-layer seeds are reproducibility records (tables/method_metadata.json), not metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

LAYER = "layer/"
BEST = "best/"
AUTO_BATCH = "auto_batch/"  # + a batch size key set to `auto`: the size it resolved to in this run
# Stage 1's held-out parts (metric prefixes, sample sizes n_<part>_pos/neg), in the order a reader trusts them.
PARTS = (("cv", "cross-validated"), ("val", "held-out"), ("ood", "OOD"))
# Per-layer values that are records rather than measurements: never logged as metrics.
NOT_METRICS = frozenset({"method_seed"})
# Families whose flat series carry no information (a check passing everywhere, a fixed setting).
CHECK_SUFFIXES = ("_polarity_correct",)
SETTING_PREFIXES = ("method_",)


def layer_metric(name: str) -> str:
    return LAYER + name


def best_metric(name: str) -> str:
    return BEST + name


def _constant(values: list[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return len(finite) == len(values) and len(set(finite)) <= 1


def series_names(per_layer: Mapping[int, Mapping[str, float]]) -> set[str]:
    """The metrics to log as `layer/` series: all but records and checks/settings equal at every layer."""
    names = {k for m in per_layer.values() for k in m} - NOT_METRICS
    if len(per_layer) < 2:
        return names

    def flat(name: str) -> bool:
        hideable = name.endswith(CHECK_SUFFIXES) or name.startswith(SETTING_PREFIXES)
        return hideable and _constant([float(m.get(name, math.nan)) for m in per_layer.values()])

    return {n for n in names if not flat(n)}


def auto_batch_metric(key: str) -> str:
    return AUTO_BATCH + key


# Runs of cross-trait normalised vectors carry this tag; its value names the steps ("center", "denoise",
# "center+denoise"). Registry lookups keep them apart from the vectors as extracted.
NORMALIZATION_TAG = "normalization"
