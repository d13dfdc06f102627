"""Shared bits for benchmarks: interleaved timing, ratios with their run-to-run noise and target, machine facts,
result files, MLflow.

Every benchmark's `run(quick)` returns a list of `Ratio`s; benchmarks/run_all.py puts all of them in ONE table
(benchmarks/RESULTS.md) and fails when a ratio misses its target by more than its own noise.

Clocks. On a CPU the headline clock is this process's CPU time with one torch thread: on a shared machine wall
time also counts the time other processes held the core, and OpenMP threads spin on barriers while a core is
taken (the same forward measured 2-4x slower and 2x noisier with 2 threads under load). CPU time of one thread
measures the work itself. On CUDA the headline is wall time around synchronised calls. TRAITLAB_BENCH_THREADS=n
runs with n threads and then uses wall time: meaningful on a quiet machine only.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Ratio:
    """One measured ratio: its median over repeats, its run-to-run noise, and the target it is held to.

    ``noise`` is half the range of the per-repeat ratios (each repeat times all modes back to back). With
    ``higher_is_better`` the target is a floor, else a ceiling. Verdicts: ``met``; ``within noise`` (misses the
    target by no more than ``noise``); ``MISSED`` (misses it by more: `make bench` fails); ``-`` (no target).
    ``bound``: the best value this comparison can reach on this device where one is known (a FLOP count, a
    memory floor or a measured ceiling), so a miss can be read against it.
    """

    benchmark: str
    name: str
    value: float
    noise: float
    n: int
    target: float | None = None
    higher_is_better: bool = True
    unit: str = "x"
    detail: str = ""
    bound: float | None = None
    samples: list[float] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        short = self.target - self.value if self.higher_is_better else self.value - self.target
        if short <= 0:
            return "met"
        return "within noise" if short <= self.noise else "MISSED"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"verdict": self.verdict}


def ratio_of(benchmark: str, name: str, num: list[float], den: list[float], **kw: Any) -> Ratio:
    """Median and half-range of num[r] / den[r] over repeats r (paired: measured in the same round)."""
    per = [a / b for a, b in zip(num, den, strict=True)]
    return Ratio(benchmark, name, statistics.median(per), (max(per) - min(per)) / 2, len(per), samples=per, **kw)


def threads() -> int:
    return int(os.environ.get("TRAITLAB_BENCH_THREADS", "1"))


@contextlib.contextmanager
def bench_threads() -> Iterator[int]:
    previous = torch.get_num_threads()
    n = threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)


def clock_name() -> str:
    """CPU time of one thread on a CPU; wall time on CUDA or with more threads (CPU time would add up the
    threads' spin-waits)."""
    return "wall" if torch.cuda.is_available() or threads() > 1 else "cpu"


def timed(fn: Callable[[], Any]) -> tuple[dict[str, float], Any]:
    """({'wall': s, 'cpu': s}, fn()) for one call, synchronised on CUDA."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}, out


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int = 3, warmup: int = 1) -> dict[str, dict[str, list[float]]]:
    """Per mode {'wall': [...], 'cpu': [...]}: all modes run once per round, the order rotating each round, so
    machine noise hits all of them alike and round r of two modes can be paired into a ratio."""
    names = list(fns)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t, _ = timed(fns[name])
            for clock, s in t.items():
                times[name][clock].append(s)
    return times


def machine() -> dict[str, Any]:
    import transformers

    cpu = "unknown"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(), "cpu": cpu, "cores": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(), "load_avg": os.getloadavg()}


def write_result(name: str, result: dict[str, Any], table: str) -> Path:
    from traitlab.io import atomic_write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(RESULTS / f"{name}.md", table + "\n")
    return path


def log_to_mlflow(name: str, result: dict[str, Any], table: str) -> str | None:
    """Log a benchmark's flat numeric results + its table to the `benchmarks` experiment."""
    from traitlab.tracking.store import ensure_store

    client, exp_id = ensure_store(None, "benchmarks")
    run = client.create_run(exp_id, run_name=name, tags={"traitlab.stage": "benchmark"})
    for k, v in result.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            client.log_metric(run.info.run_id, k, float(v))
    client.log_text(run.info.run_id, table, f"{name}.md")
    client.log_dict(run.info.run_id, json.loads(json.dumps(result, default=str)), f"{name}.json")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
