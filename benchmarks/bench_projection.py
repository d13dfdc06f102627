"""Projection hooks for 8 traits x all 30 layers of SmolLM2 vs the same forward without hooks (target
<= 1.05x) vs ``output_hidden_states=True`` then projecting afterwards.

All three run the trunk (no LM head, as the inference pipeline does) over the same length-sorted
batches of the same (prompt, response) texts; the hooked mode is the pipeline's own ``project_encoded``.
Timing is interleaved per batch (the three modes back to back on one batch, the order rotating), and
each sample records both wall time and this process's CPU time.

Why CPU time on one thread is the headline: on a shared 2-core CI box the same forward's wall time
varies 5x from run to run, and with 2 torch threads the OpenMP spin-waits make even CPU time noisy.
One thread's CPU time measures the work itself. Set
TRAITLAB_BENCH_THREADS to time with more threads; wall-time ratios are reported as well.

    python -m benchmarks.bench_projection        (or make bench, which calls run())
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from benchmarks.common import Ratio, bench_threads, clock_name, log_to_mlflow, machine, ratio_of, write_result

NAME = "projection"
N_TEXTS = 16
BATCH = 4
N_TRAITS = 8
REPEATS = 7


def _encoded(lm):
    from traitlab.data import load_trait, resolve_trait_dir
    from traitlab.pipelines.infer import TextItem, encode_items

    items = []
    for trait in ("starter/optimism", "starter/refusal", "starter/sycophancy", "starter/formality"):
        t = load_trait(resolve_trait_dir(trait))
        items += [
            TextItem(str(len(items)), e.prompt, e.system_prompt, e.response)
            for e in t.positive[: N_TEXTS // 4]
        ]
    return encode_items(lm, items, 512)


def _vectors(lm) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {layer: torch.randn(N_TRAITS, lm.hidden_size, generator=g) for layer in range(lm.n_layers)}


def _batches(lm, enc) -> list[list[int]]:
    from traitlab.models.encoding import length_sorted_batches

    return length_sorted_batches([e.seq_len for e in enc], BATCH)


def plain(lm, enc):
    from traitlab.core.components import base_model
    from traitlab.models.encoding import pad_id_of, padded_inputs

    trunk = base_model(lm.model)
    with torch.inference_mode():
        return trunk(**padded_inputs(enc, pad_id_of(lm.tokenizer), lm.device), use_cache=False)


def hooked(lm, enc, vectors):
    from traitlab.models.encoding import pad_id_of
    from traitlab.pipelines.infer import project_encoded

    return project_encoded(
        lm.model, enc, vectors, batch_size=BATCH, pad_id=pad_id_of(lm.tokenizer), device=lm.device
    )


def hidden_states_then_project(lm, enc, vectors):
    """What a hook-free script does: keep every layer's states, project them afterwards."""
    from traitlab.core.components import base_model
    from traitlab.models.encoding import pad_id_of, padded_inputs

    trunk = base_model(lm.model)
    units = {layer: (v / v.norm(dim=-1, keepdim=True)).T.to(lm.device) for layer, v in vectors.items()}
    with torch.inference_mode():
        inputs = padded_inputs(enc, pad_id_of(lm.tokenizer), lm.device)
        mask = inputs["attention_mask"]
        hs = trunk(**inputs, use_cache=False, output_hidden_states=True).hidden_states
        return {
            layer: (
                (hs[layer + 1].float() @ u) * mask.unsqueeze(-1),
                hs[layer + 1].float().norm(dim=-1) * mask,
            )
            for layer, u in units.items()
        }


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - w0, time.process_time() - c0


def time_modes(lm, enc, vectors, repeats: int = REPEATS) -> dict[str, dict[str, float]]:
    """Per batch and repeat, the three modes back to back (rotating order).

    Returns per clock (wall, cpu): total = sum over batches of the per-batch median time, and ratio =
    median over (batch, repeat) of mode time / plain time of the same batch and repeat.
    """
    modes = {
        "plain": lambda b: plain(lm, b),
        "hooks": lambda b: hooked(lm, b, vectors),
        "hidden_states": lambda b: hidden_states_then_project(lm, b, vectors),
    }
    batches = [[enc[i] for i in rows] for rows in _batches(lm, enc)]
    for b in batches[:1]:  # warm-up
        for fn in modes.values():
            fn(b)
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {
        (k, j): [] for k in modes for j in range(len(batches))
    }
    order = list(modes)
    for r in range(repeats):
        for j, b in enumerate(batches):
            for k in order[r % 3 :] + order[: r % 3]:
                samples[(k, j)].append(_timed(lambda k=k, b=b: modes[k](b)))
    out: dict[str, dict[str, float]] = {}
    for c, clock in enumerate(("wall", "cpu")):
        out[f"{clock}_total"] = {
            k: sum(statistics.median(x[c] for x in samples[(k, j)]) for j in range(len(batches)))
            for k in modes
        }
        out[f"{clock}_ratio"] = {
            k: statistics.median(
                t[c] / p[c]
                for j in range(len(batches))
                for t, p in zip(samples[(k, j)], samples[("plain", j)], strict=True)
            )
            for k in ("hooks", "hidden_states")
        }
        # per repeat: the modes' summed time over all batches, paired round by round
        out[f"{clock}_per_repeat"] = {
            k: [sum(samples[(k, j)][r][c] for j in range(len(batches))) for r in range(repeats)] for k in modes
        }
    out["n_batches"] = {"n": float(len(batches))}
    return out


def _max_diff(lm, enc, vectors) -> float:
    """Hook vs hidden-state scores on the first text, relative to the largest |score| of each layer (not the
    last layer: its hidden state is normed)."""
    a = hooked(lm, enc[:1], vectors)[0]
    b = hidden_states_then_project(lm, enc[:1], vectors)
    return max(
        float((a.scores[layer] - b[layer][0][0].cpu()).abs().max() / b[layer][0][0].abs().max().clamp_min(1e-12))
        for layer in range(lm.n_layers - 1)
    )


def run(quick: bool = False) -> list[Ratio]:
    from traitlab.models.loading import load_model

    repeats = 3 if quick else REPEATS
    with bench_threads() as threads:
        lm = load_model("smollm2_135m")
        enc = _encoded(lm)
        if quick:
            enc = enc[: N_TEXTS // 2]
        vectors = _vectors(lm)
        t = time_modes(lm, enc, vectors, repeats)
        max_diff = _max_diff(lm, enc, vectors)
    n_tokens = sum(e.seq_len for e in enc)
    result = {
        "n_texts": len(enc),
        "n_tokens": n_tokens,
        "batch_size": BATCH,
        "n_batches": int(t["n_batches"]["n"]),
        "traits": N_TRAITS,
        "layers": lm.n_layers,
        "repeats": repeats,
        "threads": threads,
        "plain_cpu_s": t["cpu_total"]["plain"],
        "hooks_cpu_s": t["cpu_total"]["hooks"],
        "hidden_states_cpu_s": t["cpu_total"]["hidden_states"],
        "hooks_over_plain": t["cpu_ratio"]["hooks"],
        "hidden_states_over_plain": t["cpu_ratio"]["hidden_states"],
        "plain_wall_s": t["wall_total"]["plain"],
        "hooks_wall_s": t["wall_total"]["hooks"],
        "hidden_states_wall_s": t["wall_total"]["hidden_states"],
        "hooks_over_plain_wall": t["wall_ratio"]["hooks"],
        "hidden_states_over_plain_wall": t["wall_ratio"]["hidden_states"],
        "target_hooks_over_plain": 1.05,
        "max_rel_diff_vs_hidden_states": max_diff,
        "device": str(lm.device),
        **machine(),
    }
    if max_diff > 1e-5:
        raise AssertionError(f"projection hook scores differ from hidden-state scores by {max_diff:.2e} of the "
                             "largest score (tolerance 1e-5)")
    clock = clock_name()
    per = t[f"{clock}_per_repeat"]
    ratios = [
        ratio_of(NAME, f"projection hooks ({N_TRAITS} traits x {lm.n_layers} layers) / plain forward",
                 per["hooks"], per["plain"], target=1.05, higher_is_better=False,
                 detail=f"{len(enc)} texts, {n_tokens} tokens"),
        ratio_of(NAME, "output_hidden_states then project / plain forward", per["hidden_states"], per["plain"]),
        ratio_of(NAME, "output_hidden_states then project / projection hooks", per["hidden_states"], per["hooks"],
                 detail="above 1: the hooks are the cheaper way to the same scores"),
    ]
    r = result
    table = (
        f"forward of {len(enc)} texts ({n_tokens} tokens) in batches of {BATCH}, {N_TRAITS} traits x "
        f"{lm.n_layers} layers, {threads} thread(s), {repeats} interleaved repeats\n\n"
        "| mode | CPU s | x plain (CPU) | wall s | x plain (wall) |\n|---|---|---|---|---|\n"
        f"| trunk, no hooks | {r['plain_cpu_s']:.2f} | 1.000 | {r['plain_wall_s']:.2f} | 1.000 |\n"
        f"| trunk + projection hooks (traitlab) | {r['hooks_cpu_s']:.2f} | {r['hooks_over_plain']:.3f} | "
        f"{r['hooks_wall_s']:.2f} | {r['hooks_over_plain_wall']:.3f} |\n"
        f"| output_hidden_states=True, project after | {r['hidden_states_cpu_s']:.2f} | "
        f"{r['hidden_states_over_plain']:.3f} | {r['hidden_states_wall_s']:.2f} | "
        f"{r['hidden_states_over_plain_wall']:.3f} |\n"
        f"\nhooks / plain, summed over batches per repeat: {ratios[0].value:.3f} ± {ratios[0].noise:.3f} "
        f"({clock} time); max |hook - hidden-state score| / max |score|: {max_diff:.2e}"
    )
    write_result(NAME, result, table)
    log_to_mlflow(NAME, result, table)
    print(table)
    return ratios


if __name__ == "__main__":
    for ratio in run(quick="--quick" in sys.argv[1:]):
        print(f"{ratio.name}: {ratio.value:.3f} ± {ratio.noise:.3f} ({ratio.verdict})")
