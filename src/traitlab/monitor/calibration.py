"""Massive-activation calibration stored per model and component in the cache (merged under a lock)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from traitlab.core.massive import (
    MassiveError,
    MaxAbsTracker,
    calibration_record,
    merge_records,
    record_max_abs,
)
from traitlab.errors import DataError
from traitlab.io import atomic_write_text, read_json
from traitlab.paths import cache_dir

log = logging.getLogger(__name__)


def calibration_path(key: str, component: str) -> Path:
    return cache_dir() / "massive" / f"{key}-{component}.json"


def load_calibration(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record = read_json(path)
        record_max_abs(record)
        return record
    except (DataError, MassiveError) as e:
        log.warning("massive calibration %s is unreadable (%s): recalibrating", path, e)
        return None


def save_calibration(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Merge into the stored record under a lock (parallel jobs on one model) and write atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        merged = merge_records(load_calibration(path), record)
        atomic_write_text(path, json.dumps(merged, separators=(",", ":")))  # ~17k floats: no indentation
    return merged


def covers(record: dict[str, Any] | None, layers: Sequence[int]) -> bool:
    return record is not None and all(str(layer) in record.get("layers", {}) for layer in layers)


def store_tracker(
    path: Path, tracker: MaxAbsTracker, model: str, mkey: str, component: str
) -> dict[str, Any]:
    record = calibration_record(
        tracker.max_abs(),
        tracker.n_tokens,
        model=model,
        model_key=mkey,
        component=component,
        source="inference prefill",
    )
    return save_calibration(path, record)
