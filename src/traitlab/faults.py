"""Deterministic fault injection for the reliability tests: die by SIGKILL at a named point.

`TRAITLAB_FAULT=<point>[:<n>]` makes the n-th (default 1st) arrival at `maybe_fail("<point>")` in this
process kill it with SIGKILL, which no handler can intercept, so a test sees exactly what a power cut
or an OOM killer would leave behind. Unset (always, outside tests) every call is a dictionary lookup.

Points (where the calls sit):
  generate  models' generate batches, via `batch_fault("generate")` passed as generate_texts(hooks=)
            (pipelines/common.py responses_for): fires when the n-th batch starts, so earlier batches
            are done and nothing is cached yet.
  capture   pipelines/common.py pooled_activations: after a capture, before its cache file is written
            (`capture:2` = the second polarity, after the first one was cached).
  write     io.atomic_path: the temp file is complete but not yet renamed into place.
  log       pipelines/extract.py _log_outputs: metrics and vectors logged, figures and tables not yet.
  trial     between trials of a steering study (pipelines/steer.py), when that stage provides it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

ENV = "TRAITLAB_FAULT"
_arrivals: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    point, _, nth = spec.partition(":")
    return point, int(nth) if nth.strip() else 1


def armed(point: str) -> bool:
    """True when TRAITLAB_FAULT names this point (whatever its count)."""
    t = _target()
    return t is not None and t[0] == point


def maybe_fail(point: str) -> None:
    """SIGKILL this process on the configured arrival at `point`; a no-op otherwise."""
    t = _target()
    if t is None or t[0] != point:
        return
    _arrivals[point] = _arrivals.get(point, 0) + 1
    if _arrivals[point] == t[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def batch_fault(point: str) -> Callable[[list[int]], AbstractContextManager] | None:
    """A per-batch hook factory (generate_texts(hooks=)) that calls maybe_fail(point) as each batch starts;
    None when the point is not armed, so normal runs pass no hooks at all."""
    if not armed(point):
        return None

    def factory(rows: list[int]) -> AbstractContextManager:
        maybe_fail(point)
        return nullcontext()

    return factory
