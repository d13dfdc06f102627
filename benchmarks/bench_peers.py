"""traitlab side by side with repeng 0.4.0 and steering-vectors 0.12.2 on SmolLM2 (part of `make bench`).

`run()` is called by benchmarks/run_all.py from the main venv. The peers cannot live there (repeng needs
numpy < 2, steering-vectors pins transformers < 5), so run() re-executes this file as a worker inside
benchmarks/.venv-peers (built by setup_peers.sh, traitlab on PYTHONPATH): the three libraries share one
process, one model object, one torch and one thread pool, and their runs are interleaved (A B C, B C A,
...) so load from other processes hits all of them alike; medians are reported.

What is compared, on the same starter/optimism contrastive pairs (prompt + provided response):
  extraction   a vector for every layer (30) from the last token, 32 texts per forward where the peer
               allows it: repeng pca_diff vs traitlab pca_diff; steering-vectors mean difference vs
               traitlab mean_diff (also steering-vectors at its default batch_size=1).
  steering     greedy generate, 32 new tokens forced (min_new_tokens), one prompt, the SAME delta
               coefficient * unit vector added at one layer by each library; tokens/s.
Results: benchmarks/results/peers.json and peers.md; the ratios go into benchmarks/RESULTS.md (run_all.py).

    python -m benchmarks.bench_peers [--quick]   # from the main venv: sets up the peers venv, runs, writes
    BENCH_PEERS_PAIRS=70 BENCH_PEERS_REPEATS=5 python -m benchmarks.bench_peers   # the full trait, more repeats
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / "benchmarks" / ".venv-peers"

TRAIT = "starter/optimism"
BATCH = 32                      # texts per forward (repeng's default)
STEER_LAYER = 15
STEER_COEFFICIENT = 8.0
NEW_TOKENS = 32
GEN_REPEATS = 9                 # generation is cheap: more runs, less noise
STEER_PROMPT = "How do you feel about starting a new job next week?"


# --------------------------------------------------------------------------------------- worker side


def _timings(jobs: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, dict[str, list[float]]], dict]:
    """Run every job `repeats` times, rotating the order each round.

    Records wall seconds and this process's CPU seconds: with one torch thread, CPU time is the work
    done, unaffected by other processes taking the core (wall time on a shared machine is not).
    """
    import torch

    from traitlab.models.batching import PeakMemory

    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in jobs}
    peaks: dict[str, list[int]] = {k: [] for k in jobs}
    outputs: dict[str, Any] = {}
    names = list(jobs)
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            with PeakMemory(torch.device("cpu")) as meter:
                w0, c0 = time.perf_counter(), time.process_time()
                outputs[name] = jobs[name]()
                times[name]["cpu"].append(time.process_time() - c0)
                times[name]["wall"].append(time.perf_counter() - w0)
            if meter.peak is not None:
                peaks[name].append(meter.peak)
    return times, {"outputs": outputs, "peaks": peaks}


def _worker(n_pairs: int, repeats: int, threads: int, gen_repeats: int, new_tokens: int) -> dict[str, Any]:
    import numpy as np
    import repeng
    import steering_vectors
    import torch
    import transformers
    from repeng import ControlModel, ControlVector, DatasetEntry
    from steering_vectors import SteeringVector, train_steering_vector

    from traitlab.core.hooks import SteeringHook
    from traitlab.core.methods import get_method
    from traitlab.data import load_trait, resolve_trait_dir
    from traitlab.models.capture import TextPair, capture_pooled
    from traitlab.models.chat import format_prompt
    from traitlab.models.loading import load_model

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    lm = load_model("smollm2_135m")  # float32 on CPU; left padding; the same object for all three
    model, tok = lm.model, lm.tokenizer
    n_layers = lm.n_layers
    trait = load_trait(resolve_trait_dir(TRAIT))
    n_pairs = min(n_pairs, len(trait.positive))

    def pairs(examples: list) -> list[TextPair]:
        return [TextPair(format_prompt(tok, e.prompt, e.system_prompt, lm.use_chat_template), e.response or "")
                for e in examples[:n_pairs]]

    pos, neg = pairs(trait.positive), pairs(trait.negative)
    pos_text = [p.prompt_text + p.response for p in pos]
    neg_text = [p.prompt_text + p.response for p in neg]
    layers = list(range(n_layers))

    # ---- extraction: every layer, last token ---------------------------------------------------------
    def traitlab_extract(method: str) -> Callable[[], dict[int, torch.Tensor]]:
        def go() -> dict[int, torch.Tensor]:
            # the library path of `launchers/extract.py`: in-hook pooling, stop after the deepest layer
            p = capture_pooled(lm, pos, position="response[-1]", layers=layers, batch_size=BATCH, desc=None)
            q = capture_pooled(lm, neg, position="response[-1]", layers=layers, batch_size=BATCH, desc=None)
            m = get_method(method)
            return {layer: m.extract(p[:, j], q[:, j]).vector for j, layer in enumerate(layers)}
        return go

    dataset = [DatasetEntry(positive=a, negative=b) for a, b in zip(pos_text, neg_text, strict=True)]

    def repeng_extract() -> dict[int, torch.Tensor]:
        # hidden_layers given: by default repeng skips layer 0 (range(-1, -n_layers, -1))
        cv = ControlVector.train(model, tok, dataset, hidden_layers=list(range(-1, -n_layers - 1, -1)),
                                 batch_size=BATCH)
        return {k: torch.from_numpy(np.asarray(v)) for k, v in cv.directions.items()}

    samples = list(zip(pos_text, neg_text, strict=True))

    def sv_extract(batch_size: int) -> Callable[[], dict[int, torch.Tensor]]:
        def go() -> dict[int, torch.Tensor]:
            sv = train_steering_vector(model, tok, samples, layers=layers, batch_size=batch_size)
            return {k: v.detach().float() for k, v in sv.layer_activations.items()}
        return go

    # warm-up (lazy imports, allocator, sklearn) on 2 pairs for each library, untimed
    few = dataset[:2]
    capture_pooled(lm, pos[:2], position="response[-1]", layers=layers, batch_size=2, desc=None)
    ControlVector.train(model, tok, few, batch_size=4)
    train_steering_vector(model, tok, samples[:2], batch_size=2)

    extraction_jobs = {
        "traitlab pca_diff": traitlab_extract("pca_diff"),
        "repeng pca_diff": repeng_extract,
        "traitlab mean_diff": traitlab_extract("mean_diff"),
        f"steering-vectors (batch {BATCH})": sv_extract(BATCH),
        "steering-vectors (default batch 1)": sv_extract(1),
    }
    ext_times, ext_extra = _timings(extraction_jobs, repeats)
    vecs = ext_extra["outputs"]

    def unit(v: torch.Tensor) -> torch.Tensor:
        return v.double() / v.double().norm()

    # do the libraries agree? (same data, same token): cosine per layer between unit vectors
    sv_cos = [float(unit(vecs["traitlab mean_diff"][layer]) @ unit(vecs[f"steering-vectors (batch {BATCH})"][layer]))
              for layer in layers]
    repeng_cos = [float(unit(vecs["traitlab pca_diff"][layer]) @ unit(vecs["repeng pca_diff"][layer]))
                  for layer in layers[:-1]]  # repeng's last "layer" is read after the final norm

    # ---- steered generation ----------------------------------------------------------------------------
    v = unit(vecs["traitlab mean_diff"][STEER_LAYER]).float()
    prompt = format_prompt(tok, STEER_PROMPT, None, lm.use_chat_template)
    enc = tok(prompt, return_tensors="pt")
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, temperature=None,
               top_p=None, top_k=None, pad_token_id=tok.pad_token_id)

    @torch.inference_mode()
    def generate() -> list[int]:
        out = model.generate(**enc, **gen)
        return out[0, enc["input_ids"].shape[1]:].tolist()

    def traitlab_steer() -> list[int]:
        with SteeringHook(model, STEER_LAYER, v, STEER_COEFFICIENT):
            return generate()

    def repeng_steer() -> list[int]:
        cm = ControlModel(model, [STEER_LAYER])  # wraps the layer in place: unwrapped below
        try:
            cm.set_control(ControlVector(model_type="llama", directions={STEER_LAYER: v.numpy()}),
                           STEER_COEFFICIENT)
            return generate()
        finally:
            cm.unwrap()

    sv_vector = SteeringVector({STEER_LAYER: v}, "decoder_block")

    def sv_steer() -> list[int]:
        with sv_vector.apply(model, multiplier=STEER_COEFFICIENT):
            return generate()

    generate()  # warm-up
    gen_jobs = {"plain generate": generate, "traitlab": traitlab_steer, "repeng": repeng_steer,
                "steering-vectors": sv_steer}
    gen_times, gen_extra = _timings(gen_jobs, gen_repeats)
    texts = {k: tok.decode(ids, skip_special_tokens=True) for k, ids in gen_extra["outputs"].items()}

    # The steering mechanism alone: seconds spent inside each library's hooks during one steered generate
    # (whole-generate timings above cannot resolve it: it is far below their run-to-run noise).
    before = _hook_keys(model)

    def traitlab_hooks() -> float:
        with SteeringHook(model, STEER_LAYER, v, STEER_COEFFICIENT):
            return _time_inside_hooks(model, generate, before)

    def sv_hooks() -> float:
        with sv_vector.apply(model, multiplier=STEER_COEFFICIENT):
            return _time_inside_hooks(model, generate, before)

    def repeng_hooks() -> float:
        cm = ControlModel(model, [STEER_LAYER])
        try:
            cm.set_control(ControlVector(model_type="llama", directions={STEER_LAYER: v.numpy()}),
                           STEER_COEFFICIENT)
            return _time_inside_wrapper(model.model.layers[STEER_LAYER], generate)
        finally:
            cm.unwrap()

    hook_jobs = {"traitlab": traitlab_hooks, "repeng": repeng_hooks, "steering-vectors": sv_hooks}
    hook_us: dict[str, list[float]] = {name: [] for name in hook_jobs}
    names = list(hook_jobs)
    for r in range(gen_repeats):  # interleaved, the order rotating, like every other timing here
        for name in names[r % len(names):] + names[:r % len(names)]:
            hook_us[name].append(hook_jobs[name]() / new_tokens * 1e6)

    def summary(times: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
        return {k: {"cpu_min_s": min(t["cpu"]), "cpu_median_s": statistics.median(t["cpu"]),
                    "wall_median_s": statistics.median(t["wall"]), "runs": len(t["wall"])} for k, t in times.items()}

    cpu = "unknown"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__,
                     "repeng": _version("repeng", repeng), "steering-vectors": _version("steering-vectors",
                                                                                       steering_vectors),
                     "traitlab": _traitlab_version()},
        "settings": {"model": "SmolLM2-135M-Instruct (float32, CPU)", "trait": TRAIT, "pairs": n_pairs,
                     "texts": 2 * n_pairs, "layers": n_layers, "batch_texts_per_forward": BATCH,
                     "head_flop_bound": head_flop_bound(model),
                     "read_position": "last token", "repeats": repeats, "steer_layer": STEER_LAYER,
                     "steer_coefficient": STEER_COEFFICIENT, "new_tokens": new_tokens,
                     "gen_repeats": gen_repeats},
        "extraction": summary(ext_times),
        "extraction_peak_rss_mib": {k: [round(b / 2**20, 1) for b in v] for k, v in ext_extra["peaks"].items()},
        "generation": summary(gen_times),
        "generation_tokens_per_cpu_s": {k: new_tokens / min(t["cpu"]) for k, t in gen_times.items()},
        "generation_cpu_runs": {k: t["cpu"] for k, t in gen_times.items()},
        "extraction_cpu_runs": {k: t["cpu"] for k, t in ext_times.items()},
        "steering_overhead_us_per_token": hook_us,
        "generation_texts_identical": len(set(texts[k] for k in ("traitlab", "repeng", "steering-vectors"))) == 1,
        "generation_texts": texts,
        "agreement": {"traitlab_mean_diff_vs_steering_vectors_cosine_min": min(sv_cos),
                      "traitlab_pca_diff_vs_repeng_cosine": [round(c, 3) for c in repeng_cos],
                      "repeng_sign_flipped_layers": [i for i, c in enumerate(repeng_cos) if c < 0]},
    }


def head_flop_bound(model: Any) -> float:
    """Matmul work per token of the peers' extraction forward over traitlab's: both run every decoder layer,
    the peers also the LM head at every position (attention scores, a few % at these lengths, left out)."""
    from traitlab.core.components import get_decoder_layers

    layers = sum(p.numel() for p in get_decoder_layers(model).parameters() if p.dim() == 2)
    return (layers + model.get_output_embeddings().weight.numel()) / layers


def _hook_keys(model: Any) -> set[tuple[int, int]]:
    return {(id(hooks), key) for module in model.modules()
            for hooks in (module._forward_hooks, module._forward_pre_hooks) for key in hooks}


def _time_inside_hooks(model: Any, run: Callable[[], Any], before: set[tuple[int, int]]) -> float:
    """Run `run()` with the forward (pre-)hooks added since `before` timed; return their total seconds.

    Only new hooks count: transformers 5 leaves its own output-capturing hooks on every layer once a
    forward used output_hidden_states=True (repeng's does), and those are no library's steering cost.
    """
    total = [0.0]

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                total[0] += time.thread_time() - t0
        return wrapper

    saved = []
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k in hooks if (id(hooks), k) not in before]:
                saved.append((hooks, key, hooks[key]))
                hooks[key] = timed(hooks[key])
    try:
        run()
    finally:
        for hooks, key, fn in saved:
            if key in hooks:
                hooks[key] = fn
    return total[0]


def _time_inside_wrapper(wrapper: Any, run: Callable[[], Any]) -> float:
    """repeng wraps a layer in a ControlModule: its forward time minus the wrapped block's own time."""
    spent = {"outer": 0.0, "block": 0.0}
    start: list[float] = []
    inner = wrapper.block
    # first pre-hook and last hook: any other hooks on the block (transformers' own) count as the block
    h1 = inner.register_forward_pre_hook(lambda *a: start.append(time.thread_time()), prepend=True)
    h2 = inner.register_forward_hook(lambda *a: spent.__setitem__("block", spent["block"] + time.thread_time()
                                                                  - start.pop()))
    outer_forward = wrapper.forward

    def timed_forward(*args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        try:
            return outer_forward(*args, **kwargs)
        finally:
            spent["outer"] += time.thread_time() - t0

    wrapper.forward = timed_forward
    try:
        run()
    finally:
        del wrapper.forward
        h1.remove()
        h2.remove()
    return spent["outer"] - spent["block"]


def _version(dist: str, module: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return getattr(module, "__version__", "?")


def _traitlab_version() -> str:
    import traitlab

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{traitlab.__version__} ({sha or 'no git'})"


# ----------------------------------------------------------------------------------------- main side


NAME = "peers"
# DESIGN.md "Performance targets": extraction at most 0.5x the peers' time and 0.1x their added peak memory;
# steered generation at least as fast. Issue 17: traitlab's steering hook at most 50 us per token.
EXTRACTION_SPEEDUP_TARGET = 2.0
EXTRACTION_MEMORY_TARGET = 0.1
GENERATION_TARGET = 1.0
HOOK_US_TARGET = 50.0
EXTRACTION_PAIRS = {  # peer row -> the traitlab row it is compared with (same method)
    "repeng pca_diff": "traitlab pca_diff",
    f"steering-vectors (batch {BATCH})": "traitlab mean_diff",
    "steering-vectors (default batch 1)": "traitlab mean_diff",
}
SAME_BATCH = ("repeng pca_diff", f"steering-vectors (batch {BATCH})")  # held to the targets


def ratios(res: dict[str, Any]) -> list[Any]:
    """Every peer comparison as a Ratio, paired round by round (each round ran every job once)."""
    from benchmarks.common import Ratio, ratio_of

    ext, gen = res["extraction_cpu_runs"], res["generation_cpu_runs"]
    peak, hook = res["extraction_peak_rss_mib"], res["steering_overhead_us_per_token"]
    out = []
    for peer, ours in EXTRACTION_PAIRS.items():
        held = peer in SAME_BATCH
        out.append(ratio_of(NAME, f"extraction time, {peer} / {ours}", ext[peer], ext[ours],
                            target=EXTRACTION_SPEEDUP_TARGET if held else None,
                            detail=f"CPU s {statistics.median(ext[ours]):.2f} vs {statistics.median(ext[peer]):.2f}; "
                                   f"matmul-FLOP ratio {res['settings']['head_flop_bound']:.2f}x (the peers' LM head; their other "
                                   "work comes on top)"))
        if held:
            out.append(ratio_of(NAME, f"extraction peak memory added, {ours} / {peer}", peak[ours], peak[peer],
                                target=EXTRACTION_MEMORY_TARGET, higher_is_better=False,
                                detail=f"MiB {statistics.median(peak[ours]):.0f} vs {statistics.median(peak[peer]):.0f}"))
    for peer in ("repeng", "steering-vectors"):
        out.append(ratio_of(NAME, f"steered generation time, {peer} / traitlab", gen[peer], gen["traitlab"],
                            target=GENERATION_TARGET))
    out.append(ratio_of(NAME, "steered generation time, traitlab / plain generate", gen["traitlab"],
                        gen["plain generate"]))
    us = hook["traitlab"]
    out.append(Ratio(NAME, "traitlab steering hook, us per generated token", statistics.median(us),
                     (max(us) - min(us)) / 2, len(us), target=HOOK_US_TARGET, higher_is_better=False, unit="us",
                     samples=us, detail=f"steering-vectors {statistics.median(hook['steering-vectors']):.0f}, "
                                        f"repeng {statistics.median(hook['repeng']):.0f}"))
    out.append(ratio_of(NAME, "steering hook cost, steering-vectors / traitlab", hook["steering-vectors"], us))
    return out


def _ordered(rows: dict[str, Any], first: list[str]) -> list[tuple[str, Any]]:
    """Rows in a reading order (the JSON file sorts its keys): `first`, then the rest as they come."""
    return [(k, rows[k]) for k in first if k in rows] + [(k, v) for k, v in rows.items() if k not in first]


def render_markdown(res: dict[str, Any]) -> str:
    """The run's own numbers; every comparative sentence is computed from them."""
    m, v, s = res["machine"], res["versions"], res["settings"]
    ext, gen = res["extraction"], res["generation"]
    peak = res["extraction_peak_rss_mib"]
    tps = res["generation_tokens_per_cpu_s"]
    hook = res["steering_overhead_us_per_token"]
    agree = res["agreement"]
    flipped = agree["repeng_sign_flipped_layers"]
    cos_min = agree["traitlab_mean_diff_vs_steering_vectors_cosine_min"]
    med = statistics.median
    lines = [
        "# traitlab vs repeng vs steering-vectors",
        "",
        "Written by `benchmarks/bench_peers.py`; raw numbers in `peers.json`. All three libraries ran in one",
        "process (benchmarks/.venv-peers, traitlab from src/) on the same model object, interleaved with the order",
        f"rotating each round; CPU seconds of the process with {m['torch_threads']} torch thread(s).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in m['load_avg_at_end'])}.",
        f"- Versions: python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, numpy "
        f"{v['numpy']}, repeng {v['repeng']}, steering-vectors {v['steering-vectors']}, traitlab {v['traitlab']}.",
        f"- Data: {s['trait']}, {s['pairs']} positive/negative pairs with their provided responses "
        f"({s['texts']} texts, chat-formatted); model {s['model']}.",
        "",
        f"## Extraction: a vector for each of the {s['layers']} layers, read at the last token",
        "",
        f"{s['batch_texts_per_forward']} texts per forward unless stated; {s['repeats']} runs each.",
        "",
        "| library | CPU s (best) | CPU s (median) | wall s (median) | peak RSS added, MiB (median) | "
        "peer / traitlab time |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, t in _ordered(ext, ["traitlab pca_diff", "repeng pca_diff", "traitlab mean_diff"]):
        ours = EXTRACTION_PAIRS.get(name)
        ratio = f"{t['cpu_median_s'] / ext[ours]['cpu_median_s']:.2f}x" if ours else "-"
        mib = f"{med(peak[name]):.0f}" if peak.get(name) else "?"
        lines.append(f"| {name} | {t['cpu_min_s']:.2f} | {t['cpu_median_s']:.2f} | {t['wall_median_s']:.2f} | "
                     f"{mib} | {ratio} |")
    lines += [
        "",
        "What each library runs: traitlab pools the requested token inside its capture hooks and stops the forward",
        "after the deepest requested layer (no final norm, no LM head); repeng runs the CausalLM with",
        "`output_hidden_states=True`; steering-vectors records every layer's output of the CausalLM, positives and",
        "negatives as separate passes. repeng's last layer is read after the final norm (compared on the others).",
        "",
        f"Agreement: traitlab mean_diff vs steering-vectors, smallest cosine over layers {cos_min:.6f}; traitlab",
        "pca_diff vs repeng pca_diff (repeng centres the differences and signs by a majority vote): repeng's vector",
        f"points against the mean difference on {len(flipped)} of {len(agree['traitlab_pca_diff_vs_repeng_cosine'])}",
        f"layers ({', '.join(map(str, flipped)) or 'none'}).",
        "",
        f"## Steered generation: greedy, {s['new_tokens']} new tokens (forced), one prompt",
        "",
        f"The same delta ({s['steer_coefficient']} x the unit mean_diff vector) added after layer "
        f"{s['steer_layer']} by each library, `model.generate` called the same way; {s['gen_repeats']} runs "
        f"each. Identical steered text from all three: {'yes' if res['generation_texts_identical'] else 'NO'}.",
        "",
        "| run | CPU s (best) | CPU s (median) | wall s (median) | tokens per CPU s (best) | peer / traitlab |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, t in _ordered(gen, ["plain generate", "traitlab", "repeng", "steering-vectors"]):
        ratio = (f"{t['cpu_median_s'] / gen['traitlab']['cpu_median_s']:.3f}x"
                 if name in ("repeng", "steering-vectors") else "-")
        lines.append(f"| {name} | {t['cpu_min_s']:.3f} | {t['cpu_median_s']:.3f} | {t['wall_median_s']:.3f} | "
                     f"{tps[name]:.1f} | {ratio} |")
    cheapest = min(hook, key=lambda k: med(hook[k]))
    plain_us = gen["plain generate"]["cpu_median_s"] / s["new_tokens"] * 1e6  # a plain generate's CPU per token
    lines += [
        "",
        "CPU time spent inside each library's steering code per generated token (traitlab, steering-vectors: their",
        "forward hooks; repeng: its ControlModule wrapper minus the wrapped layer), median and range over "
        f"{s['gen_repeats']} generates:",
        "",
        "| library | us per token (median) | range | share of plain generate's time per token | vs traitlab |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, us in _ordered(hook, ["traitlab", "repeng", "steering-vectors"]):
        lines.append(f"| {name} | {med(us):.0f} | {min(us):.0f}-{max(us):.0f} | {100 * med(us) / plain_us:.2f}% | "
                     f"{med(us) / med(hook['traitlab']):.2f}x |")
    lines += ["", f"Cheapest steering hook in this run: {cheapest}.", ""]
    return "\n".join(lines)


def _peers_python() -> Path:
    py = PEERS_VENV / "bin" / "python"
    if not (PEERS_VENV / ".installed-v1").is_file():
        subprocess.run(["bash", str(ROOT / "benchmarks" / "setup_peers.sh"), sys.executable], check=True)
    return py


def run(quick: bool = False) -> list[Any]:
    """Benchmark in the peers venv; write results/peers.json and results/peers.md; return the ratios."""
    from benchmarks.common import threads, write_result

    pairs = int(os.environ.get("BENCH_PEERS_PAIRS", "8" if quick else "24"))
    repeats = int(os.environ.get("BENCH_PEERS_REPEATS", "2" if quick else "3"))
    gen_repeats, new_tokens = (3, 16) if quick else (GEN_REPEATS, NEW_TOKENS)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TQDM_DISABLE="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TRAITLAB_ROOT=str(ROOT))
    env.setdefault("TRAITLAB_CACHE", str(ROOT / "outputs" / "cache"))
    proc = subprocess.run([str(_peers_python()), str(Path(__file__).resolve()), "--worker", str(pairs), str(repeats),
                           str(threads()), str(gen_repeats), str(new_tokens)],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"peers benchmark worker failed ({proc.returncode}): {proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    out = ratios(res)
    res["ratios"] = [r.as_dict() for r in out]
    res["quick"] = quick
    table = render_markdown(res)
    write_result(NAME, res, table)
    print(table)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        out = _worker(*(int(a) for a in sys.argv[2:7]))
        print(json.dumps(out))
    else:
        for ratio in run(quick="--quick" in sys.argv[1:]):
            print(f"{ratio.name}: {ratio.value:.3f} ± {ratio.noise:.3f} ({ratio.verdict})")
