"""Propensity evaluation: K coefficients x N held-out pairs in shared forward batches (one call, per-row
steering) vs one coefficient at a time (K calls), on the same SmolLM2, pairs and vector.

Rows are (coefficient, pair, side); each call length-sorts its rows into batches of the pipeline's default
size (steering.propensity.batch_size) and computes logits only where response tokens are predicted.
Both modes must give the same propensities (checked). Times are paired per interleaved round in one process
(benchmarks/common.py: CPU seconds of one thread on a CPU, wall seconds on CUDA); the ratio is their median
with half the range of the rounds as its noise.

What to expect: a forward pass over prompt + response tokens is compute-bound on a CPU at any batch size
(each row is a distinct computation once steering changes its hidden states), so sharing batches removes only
per-call costs and some padding; on a GPU, where a call of few rows leaves the device idle, the same code
approaches K x.
"""

from __future__ import annotations

import statistics
import sys

import torch

from benchmarks.common import (
    Ratio,
    bench_threads,
    clock_name,
    interleaved,
    log_to_mlflow,
    machine,
    ratio_of,
    write_result,
)

NAME = "propensity"
K = 8
LAYER = 12
BATCH = 16       # steering.propensity.batch_size default
MAX_RESPONSE_TOKENS = 32
SIZES = {False: {"pairs": 6, "repeats": 3}, True: {"pairs": 3, "repeats": 2}}
TARGET = 0.6 * K  # issue 11: at least 0.6 K x


def _setup(n_pairs: int):
    from traitlab.data import load_trait, resolve_trait_dir
    from traitlab.models.loading import load_model
    from traitlab.models.propensity import ResponsePair

    lm = load_model("smollm2_135m")
    t = load_trait(resolve_trait_dir("starter/optimism"))
    pairs = [ResponsePair(p.prompt, p.response, n.response) for p, n in zip(t.positive, t.negative, strict=True)]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(lm.hidden_size, generator=g)
    return lm, pairs[:n_pairs], v / v.norm()


def run(quick: bool = False) -> list[Ratio]:
    from traitlab.models.propensity import propensity

    size = SIZES[quick]
    lm, pairs, v = _setup(size["pairs"])
    coefs = [-40.0 + 20.0 * i for i in range(K)]  # -40 .. 100: a curve's worth of coefficients at one layer
    settings = [[(LAYER, v, c)] for c in coefs]
    kw = {"batch_size": BATCH, "max_response_tokens": MAX_RESPONSE_TOKENS}
    jobs = {"shared": lambda: propensity(lm, pairs, settings, **kw),
            "one_at_a_time": lambda: torch.cat([propensity(lm, pairs, [s], **kw) for s in settings])}
    with bench_threads() as n_threads:
        diff = float((jobs["shared"]() - jobs["one_at_a_time"]()).abs().max())
        if diff > 1e-4:
            raise AssertionError(f"shared batches and one coefficient at a time disagree by {diff:.2e}")
        t = interleaved(jobs, repeats=size["repeats"], warmup=0)
    clock = clock_name()
    med = {k: statistics.median(x[clock]) for k, x in t.items()}
    rows = K * len(pairs) * 2
    ratios = [ratio_of(NAME, f"K={K} coefficients x {len(pairs)} pairs in shared batches vs one at a time",
                       t["one_at_a_time"][clock], t["shared"][clock], target=TARGET,
                       detail=f"{clock} s {med['shared']:.2f} vs {med['one_at_a_time']:.2f}; {rows} rows")]
    table = (f"propensity, {K} coefficients x {len(pairs)} pairs ({rows} rows), layer {LAYER}; {clock} time, "
             f"{n_threads} thread(s), median of {size['repeats']} interleaved rounds\n\n"
             "| mode | s |\n|---|---|\n"
             f"| ONE call, all rows in shared batches of {BATCH} (PerSampleSteering) | {med['shared']:.2f} |\n"
             f"| {K} calls, one coefficient each ({len(pairs) * 2} rows per call) | {med['one_at_a_time']:.2f} |\n"
             f"| speed-up (target >= {TARGET:g}) | {ratios[0].value:.2f}x ± {ratios[0].noise:.2f} |\n"
             f"\nshared == one at a time: max |difference| {diff:.2e}")
    write_result(NAME, {"times": t, "ratios": [r.as_dict() for r in ratios], "clock": clock, "threads": n_threads,
                        "quick": quick, "max_abs_difference": diff, **machine()}, table)
    log_to_mlflow(NAME, {"speedup": ratios[0].value}, table)
    print(table)
    return ratios


if __name__ == "__main__":
    for ratio in run(quick="--quick" in sys.argv[1:]):
        print(f"{ratio.name}: {ratio.value:.2f} ± {ratio.noise:.2f} ({ratio.verdict})")
