"""Run work in batches that halve on out-of-memory instead of failing, keeping every row in place."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_halving(fn: Callable[[list[int]], Sequence[T]], rows: list[int]) -> list[T]:
    """Call fn(rows); on OOM split rows in two halves and recurse. Results come back in `rows` order."""
    try:
        out = list(fn(rows))
    except Exception as e:  # noqa: BLE001 - only OOM is handled, the rest re-raised
        if not is_oom(e):
            raise
        if len(rows) == 1:
            raise
        _free()
        mid = len(rows) // 2
        log.warning("out of memory on a batch of %d rows: retrying as %d + %d", len(rows), mid, len(rows) - mid)
        return run_halving(fn, rows[:mid]) + run_halving(fn, rows[mid:])
    if len(out) != len(rows):
        raise RuntimeError(f"batch function returned {len(out)} results for {len(rows)} rows")
    return out
