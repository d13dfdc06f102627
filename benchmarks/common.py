"""Shared bits for benchmarks: timing with interleaved repeats, machine info, result files, MLflow."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None, "platform": platform.platform()}


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each fn, run in alternation so machine noise hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def write_result(name: str, result: dict[str, Any], table: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
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
    client.log_dict(run.info.run_id, result, f"{name}.json")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
