"""The batched scoring paths of the steering stage (no generation), each against calling it one setting or
one trait at a time, on the same SmolLM2:

- propensity: K = 8 coefficients x N held-out pairs (rows: coefficient x pair x side);
- capability: K = 8 coefficients x M multiple-choice items of datasets/capability/starter, text scoring
  (rows: coefficient x item x option);
- entanglement: one steered vector measured on T traits' held-out pairs (rows: trait x {unsteered,
  steered} x pair x side).

Modes per path: ``shared`` (ONE call: all rows in shared length-sorted batches, per-row steering, and the
layers below the steered one run once per distinct row: models/row_forward.py), ``batched`` (one call, no
trunk sharing) and ``one_at_a_time`` (a call per coefficient or per trait, as before batching). All three
must agree to float tolerance (checked). Times are paired per interleaved round (benchmarks/common.py).

What bounds the ratios on a CPU: a forward over prompt + response tokens is compute-bound at any batch size
and each steered row is a distinct computation above the steered layer, so batching alone saves only
per-call costs and padding; the shared trunk saves the layers below the steered layer b for every extra row
of a distinct input. With L layers and K rows per distinct input the work falls from K L to b + K (L - b)
layer-rows: for b = 12, L = 30, K = 8 the bound is 240 / 156 = 1.54x. The issue's >= 0.6 K target assumes
a device that a call of few rows leaves idle (a GPU).

    python -m benchmarks.bench_scoring [--quick]
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

NAME = "scoring"
K = 8
LAYER = 12
BATCH = 16          # steering.propensity.batch_size default
CHOICE_BATCH = 32   # steering.capability.batch_size default
MAX_RESPONSE_TOKENS = 32
ENTANGLED = ("starter/optimism", "starter/refusal", "starter/sycophancy", "starter/formality")
SIZES = {False: {"pairs": 4, "items": 6, "traits": 3, "repeats": 3},
         True: {"pairs": 3, "items": 4, "traits": 2, "repeats": 2}}
PROPENSITY_TARGET = 0.6 * K  # DESIGN.md / issue 11: at least 0.6 K x


def trunk_bound(layer: int, n_layers: int, rows_per_input: int) -> float:
    """Speed-up ceiling of sharing the layers below `layer` among `rows_per_input` rows of one input."""
    return rows_per_input * n_layers / (layer + rows_per_input * (n_layers - layer))


def _pairs(name: str, n: int):
    from traitlab.data import load_trait, resolve_trait_dir
    from traitlab.models.propensity import ResponsePair

    t = load_trait(resolve_trait_dir(name))
    return [ResponsePair(p.prompt, p.response, q.response) for p, q in zip(t.positive, t.negative, strict=True)][:n]


def _agree(results: dict[str, torch.Tensor], what: str, tol: float = 1e-4) -> float:
    ref = results["one_at_a_time"]
    diff = max(float((r - ref).abs().max()) for r in results.values())
    if diff > tol:
        raise AssertionError(f"{what}: the modes disagree by {diff:.2e} (tolerance {tol:g})")
    return diff


def run(quick: bool = False) -> list[Ratio]:
    from traitlab.data.multiple_choice import load_choice_set
    from traitlab.models.loading import load_model
    from traitlab.models.multiple_choice import score_choices
    from traitlab.models.propensity import propensity, propensity_groups

    size = SIZES[quick]
    lm = load_model("smollm2_135m")
    v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    settings = [[(LAYER, v, -40.0 + 20.0 * i)] for i in range(K)]  # -40 .. 100: a curve's worth
    pairs = _pairs("starter/optimism", size["pairs"])
    items = load_choice_set("starter").items[:size["items"]]
    traits = [_pairs(t, size["pairs"]) for t in ENTANGLED[:size["traits"]]]
    pk = {"batch_size": BATCH, "max_response_tokens": MAX_RESPONSE_TOKENS}
    ck = {"scoring": "text", "batch_size": CHOICE_BATCH, "desc": None}

    def choices(scores) -> torch.Tensor:
        return torch.tensor([s.option_logprobs for s in scores], dtype=torch.float64)

    pair_settings = [None, [(LAYER, v, 60.0)]]
    paths = {
        "propensity": {
            "shared": lambda: propensity(lm, pairs, settings, **pk),
            "batched": lambda: propensity(lm, pairs, settings, share_trunk=False, **pk),
            "one_at_a_time": lambda: torch.cat([propensity(lm, pairs, [s], share_trunk=False, **pk)
                                                for s in settings]),
        },
        "capability": {
            "shared": lambda: choices(score_choices(lm, items, settings, **ck)),
            "batched": lambda: choices(score_choices(lm, items, settings, share_trunk=False, **ck)),
            "one_at_a_time": lambda: torch.cat([choices(score_choices(lm, items, [s], share_trunk=False, **ck))
                                                for s in settings]),
        },
        "entanglement": {
            "shared": lambda: torch.cat(propensity_groups(lm, [(p, pair_settings) for p in traits], **pk), 1),
            "batched": lambda: torch.cat(propensity_groups(lm, [(p, pair_settings) for p in traits],
                                                           share_trunk=False, **pk), 1),
            "one_at_a_time": lambda: torch.cat([propensity(lm, p, pair_settings, share_trunk=False, **pk)
                                                for p in traits], 1),
        },
    }
    clock = clock_name()
    ratios, rows, diffs, times = [], [], {}, {}
    with bench_threads() as n_threads:
        for path, jobs in paths.items():
            last: dict[str, torch.Tensor] = {}
            kept = {k: (lambda k=k, fn=fn, last=last: last.__setitem__(k, fn())) for k, fn in jobs.items()}
            times[path] = t = interleaved(kept, repeats=size["repeats"], warmup=0)
            diffs[path] = _agree(last, path)  # the last round's results of every mode
            med = {k: statistics.median(x[clock]) for k, x in t.items()}
            per_input = 2 if path == "entanglement" else K
            # the trunk's FLOP saving on top of what batching alone measured (per-call costs, padding)
            bound = trunk_bound(LAYER, lm.n_layers, per_input) * med["one_at_a_time"] / med["batched"]
            what = {"propensity": f"K={K} coefficients x {len(pairs)} pairs",
                    "capability": f"K={K} coefficients x {len(items)} items (text scoring)",
                    "entanglement": f"1 vector on {len(traits)} traits x {len(pairs)} pairs"}[path]
            alone = "one trait at a time" if path == "entanglement" else "one coefficient at a time"
            ratios.append(ratio_of(NAME, f"{path}: {what}, one call vs {alone}", t["one_at_a_time"][clock],
                                   t["shared"][clock], target=PROPENSITY_TARGET if path == "propensity" else None,
                                   bound=bound,
                                   detail=f"{clock} s {med['shared']:.2f} vs {med['one_at_a_time']:.2f}; "
                                          f"without the shared trunk {med['one_at_a_time'] / med['batched']:.2f}x; "
                                          f"bound: that x the trunk's FLOP saving "
                                          f"{trunk_bound(LAYER, lm.n_layers, per_input):.2f}x (layer {LAYER} of "
                                          f"{lm.n_layers})"))
            rows += [f"| {path} | {k} | {med[k]:.2f} | {med['one_at_a_time'] / med[k]:.2f}x |" for k in jobs]
    table = (f"steered scoring at layer {LAYER}; {clock} time, {n_threads} thread(s), median of {size['repeats']} "
             "interleaved rounds\n\n| path | mode | s | vs one at a time |\n|---|---|---|---|\n" + "\n".join(rows)
             + "\n\nmax |difference| between modes: " + ", ".join(f"{k} {d:.1e}" for k, d in diffs.items()))
    write_result(NAME, {"times": times, "ratios": [r.as_dict() for r in ratios], "clock": clock,
                        "threads": n_threads, "quick": quick, "max_abs_difference": diffs, **machine()}, table)
    log_to_mlflow(NAME, {f"speedup_{p}": r.value for p, r in zip(paths, ratios, strict=True)}, table)
    print(table)
    return ratios


if __name__ == "__main__":
    for ratio in run(quick="--quick" in sys.argv[1:]):
        print(f"{ratio.name}: {ratio.value:.2f} ± {ratio.noise:.2f} ({ratio.verdict})")
