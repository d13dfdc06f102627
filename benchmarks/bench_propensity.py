"""Propensity evaluation: K coefficients x N held-out pairs in shared forward batches (one call, per-row
steering) vs one coefficient at a time (K calls), on the same SmolLM2, pairs and vector.

Rows are (coefficient, pair, side); each call length-sorts its rows into batches of the pipeline's default
size (steering.propensity.batch_size) and computes logits only where response tokens are predicted.
Both modes must give the same propensities (checked). Times are medians of interleaved repeats in one process,
as CPU seconds of this process (robust on a shared machine) with wall seconds beside them.

What to expect: a forward pass over prompt + response tokens is compute-bound on a CPU at any batch size
(each row is a distinct computation once steering changes its hidden states), so sharing batches removes only
per-call costs and some padding; on a GPU, where a call of few rows leaves the device idle, the same code
approaches K x.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from benchmarks.common import log_to_mlflow, machine, write_result

K = 8
N_PAIRS = int(os.environ.get("BENCH_PROPENSITY_PAIRS", "6"))
LAYER = 12
BATCH = 16       # steering.propensity.batch_size default
MAX_RESPONSE_TOKENS = 32
REPEATS = int(os.environ.get("BENCH_PROPENSITY_REPEATS", "3"))


def _setup():
    from traitlab.data import load_trait, resolve_trait_dir
    from traitlab.models.loading import load_model
    from traitlab.models.propensity import ResponsePair

    lm = load_model("smollm2_135m")
    t = load_trait(resolve_trait_dir("starter/optimism"))
    pairs = [ResponsePair(p.prompt, p.response, n.response) for p, n in zip(t.positive, t.negative, strict=True)]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(lm.hidden_size, generator=g)
    return lm, pairs[:N_PAIRS], v / v.norm()


def _timed(fns: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Median CPU and wall seconds of each fn, run in alternation after one warm-up round."""
    for fn in fns.values():
        fn()
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    return {k: {"cpu": statistics.median(cpu[k]), "wall": statistics.median(wall[k])} for k in fns}


def run() -> dict:
    from traitlab.models.propensity import propensity

    lm, pairs, v = _setup()
    coefs = [-40.0 + 20.0 * i for i in range(K)]  # -40 .. 100: a curve's worth of coefficients at one layer
    settings = [[(LAYER, v, c)] for c in coefs]
    kw = {"batch_size": BATCH, "max_response_tokens": MAX_RESPONSE_TOKENS}

    def batched():
        return propensity(lm, pairs, settings, **kw)

    def sequential():
        return torch.cat([propensity(lm, pairs, [s], **kw) for s in settings])

    diff = float((batched() - sequential()).abs().max())
    t = _timed({"batched": batched, "sequential": sequential}, REPEATS)
    rows = K * len(pairs) * 2
    result = {
        "k": K, "pairs": len(pairs), "rows": rows, "layer": LAYER, "batch_size": BATCH,
        "max_response_tokens": MAX_RESPONSE_TOKENS, "repeats": REPEATS,
        "batched_cpu_s": t["batched"]["cpu"], "sequential_cpu_s": t["sequential"]["cpu"],
        "batched_wall_s": t["batched"]["wall"], "sequential_wall_s": t["sequential"]["wall"],
        "speedup_cpu": t["sequential"]["cpu"] / t["batched"]["cpu"],
        "speedup_wall": t["sequential"]["wall"] / t["batched"]["wall"], "speedup_target": 0.6 * K,
        "max_abs_difference": diff, "threads": torch.get_num_threads(), "load_average": os.getloadavg(), **machine(),
    }
    table = (
        f"| propensity, {K} coefficients x {len(pairs)} pairs ({rows} rows), layer {LAYER} | CPU s | wall s |\n"
        f"|---|---|---|\n"
        f"| ONE call, all rows in shared batches of {BATCH} (PerSampleSteering) | {result['batched_cpu_s']:.2f} | "
        f"{result['batched_wall_s']:.2f} |\n"
        f"| {K} calls, one coefficient each ({len(pairs) * 2} rows per call) | {result['sequential_cpu_s']:.2f} | "
        f"{result['sequential_wall_s']:.2f} |\n"
        f"| speed-up (target >= {0.6 * K:g}) | {result['speedup_cpu']:.2f}x | {result['speedup_wall']:.2f}x |\n"
        f"\nshared == one at a time: max |difference| {diff:.2e}; {torch.get_num_threads()} torch threads; "
        f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    write_result("propensity", result, table)
    log_to_mlflow("propensity", result, table)
    print(table)
    return result


if __name__ == "__main__":
    run()
