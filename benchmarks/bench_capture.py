"""Extraction capture: pooled inside the hooks (traitlab) vs ``output_hidden_states=True`` then pooling.

Same texts (starter-trait prompts with their responses, lengthened by appending further responses and cut to
S tokens), same batches, same position_ids, every layer of SmolLM2. Two (batch, length) settings, so the
all-token cost of keeping every layer's states (and the logits) shows as it grows. Per setting:

- time: both modes once per round, order rotating, in this process (ratio per round; median and noise);
- peak memory: the growth of this process's peak above the level right before each capture (CPU: the kernel's
  peak-RSS mark VmHWM, reset through /proc/self/clear_refs; CUDA: the allocator's peak, reset first); the
  smallest of a few captures, after a warm-up;
- agreement: the pooled values of both modes must match to float tolerance or the benchmark FAILS. Like with
  like: for layers below the last, ``hidden_states[layer + 1]``; for the last layer, the block output before
  the final norm (``hidden_states[-1]`` is after it), read in a check pass with the final norm swapped out.

Any capture also has a floor in memory: the forward's own working set, measured as a bare trunk forward over
the same batch; the hidden-states peak over that floor bounds the memory ratio.
The work both modes cannot avoid is every layer over every token; the hidden-states mode also runs the LM head
over every token. The ratio of their matmul FLOPs (computed from the model's weights and the setting's length)
is the speed-up the LM head alone accounts for at a position that needs every token; it is reported beside
it (writing every layer's states and the logits adds memory traffic on top, so a run may exceed it a little).
At `prompt[-1]` the pooled path runs the prompt tokens alone (causal attention: later tokens cannot change
them) while the hidden-states mode runs the whole text, as a caller of ``output_hidden_states`` does.

    python -m benchmarks.bench_capture [--quick]
"""

from __future__ import annotations

import statistics
import sys
from contextlib import contextmanager

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

NAME = "capture"
POSITION = "response[:]"  # the extraction default (conf/position/response_all.yaml)
PREFIX_POSITION = "prompt[-1]"
SETTINGS = {False: [(4, 128), (8, 512)], True: [(2, 64), (4, 256)]}  # quick -> [(batch, tokens)]
REPEATS = {False: 3, True: 2}
MEM_REPEATS = 2
SPEED_TARGET, MEMORY_TARGET = 1.5, 10.0  # DESIGN.md "Performance targets"
RTOL = 1e-4  # |difference| <= RTOL * max |value| of the layer (float32, different batch shapes)


def texts(lm, n: int, tokens: int):
    """n (prompt, response) pairs whose response is lengthened with further responses to reach `tokens`."""
    from traitlab.data import load_trait, resolve_trait_dir
    from traitlab.models.capture import TextPair
    from traitlab.pipelines.common import prompt_texts

    examples = []
    for trait in ("starter/optimism", "starter/formality", "starter/sycophancy"):
        t = load_trait(resolve_trait_dir(trait))
        examples += t.positive + t.negative
    prompts = prompt_texts(lm, examples)
    responses = [e.response or "" for e in examples]
    pairs = []
    for i in range(n):
        parts, j = [responses[i]], i
        while len(lm.tokenizer(" ".join(parts))["input_ids"]) < tokens:
            j = (j + 1) % len(responses)
            parts.append(responses[j])
        pairs.append(TextPair(prompts[i], " ".join(parts)))
    return pairs


def pooled(lm, pairs, tokens: int, position: str = POSITION) -> torch.Tensor:
    from traitlab.models.capture import capture_pooled

    return capture_pooled(lm, pairs, position=position, layers=range(lm.n_layers), batch_size=len(pairs),
                          max_length=tokens, desc=None)


@torch.inference_mode()
def hidden_states(lm, pairs, tokens: int, position: str = POSITION) -> torch.Tensor:
    """What a hook-free script does: the CausalLM with every layer's all-token states kept, pooled afterwards."""
    from traitlab.core.positions import Segments, resolve_batch
    from traitlab.models.capture import encode_pairs
    from traitlab.models.encoding import pad_id_of, padded_inputs

    enc = encode_pairs(lm, pairs, tokens)
    inputs = padded_inputs(enc, pad_id_of(lm.tokenizer), lm.device)
    ids = inputs["input_ids"]
    spans = resolve_batch(position, [Segments(e.prompt_len, e.seq_len) for e in enc], ids.shape[1]).to(lm.device)
    hs = lm.model(**inputs, output_hidden_states=True).hidden_states
    col = torch.arange(ids.shape[1], device=ids.device)
    sel = ((col >= spans[:, :1]) & (col < spans[:, 1:])).float()
    return torch.stack([(h.float() * sel[..., None]).sum(1) / sel.sum(1, keepdim=True) for h in hs[1:]], 1).cpu()


@contextmanager
def final_norm_removed(lm):
    """hidden_states[-1] is the last block's output AFTER the final norm; without the norm it is the block's."""
    from traitlab.core.components import base_model, unembedding

    norm, _ = unembedding(lm.model)
    trunk = base_model(lm.model)
    name = next(n for n, m in trunk.named_children() if m is norm)
    setattr(trunk, name, torch.nn.Identity())
    try:
        yield
    finally:
        setattr(trunk, name, norm)


def check_agreement(lm, pairs, tokens: int, position: str) -> float:
    """Largest |pooled - hidden-states| over layers, relative to each layer's largest |value|; fails past RTOL."""
    a = pooled(lm, pairs, tokens, position)
    with final_norm_removed(lm):
        b = hidden_states(lm, pairs, tokens, position)
    rel = ((a - b).abs().amax(dim=(0, 2)) / b.abs().amax(dim=(0, 2)).clamp_min(1e-12))
    worst = int(rel.argmax())
    if float(rel[worst]) > RTOL:
        raise AssertionError(f"capture at {position}: pooled and hidden-states values differ at layer {worst} by "
                             f"{float(rel[worst]):.2e} of its largest value (tolerance {RTOL:g})")
    return float(rel.max())


def peak_bytes(lm, fn, repeats: int = MEM_REPEATS) -> int:
    """Smallest peak growth of `fn()` over `repeats` calls, each measured from a reset right before it."""
    from traitlab.models.batching import PeakMemory

    fn()  # warm-up: one-time allocations of the framework itself
    peaks = []
    for _ in range(repeats):
        with PeakMemory(lm.device) as meter:
            fn()
        if meter.peak is None:
            raise RuntimeError("peak memory cannot be measured on this machine (no VmHWM reset, no CUDA)")
        peaks.append(meter.peak)
    return min(peaks)


@torch.inference_mode()
def bare_forward(lm, pairs, tokens: int) -> None:
    """The floor of any capture: the trunk's forward over the same batch, nothing kept."""
    from traitlab.core.components import base_model
    from traitlab.models.capture import encode_pairs
    from traitlab.models.encoding import pad_id_of, padded_inputs

    base_model(lm.model)(**padded_inputs(encode_pairs(lm, pairs, tokens), pad_id_of(lm.tokenizer), lm.device),
                         use_cache=False)


def matmul_flop_bound(lm, tokens: int) -> float:
    """(layers + attention + LM head) / (layers + attention) matmul FLOPs per token at this length."""
    from traitlab.core.components import get_decoder_layers

    cfg = lm.model.config.get_text_config()
    layer_weights = sum(p.numel() for p in get_decoder_layers(lm.model).parameters() if p.dim() == 2)
    head = lm.hidden_size * cfg.vocab_size
    heads_dim = cfg.num_attention_heads * getattr(cfg, "head_dim", lm.hidden_size // cfg.num_attention_heads)
    attention = lm.n_layers * 2 * heads_dim * (tokens + 1)  # QK^T and AV over a causal prefix of mean length (S+1)/2
    trunk = 2 * layer_weights + attention
    return (trunk + 2 * head) / trunk


def measure(lm, batch: int, tokens: int, repeats: int, clock: str) -> tuple[list[Ratio], dict]:
    """The ratios of one (batch, tokens) setting and the raw numbers behind them."""
    pairs = texts(lm, batch, tokens)
    where = f"B={batch} S={tokens}"
    agree = {p: check_agreement(lm, pairs, tokens, p) for p in (POSITION, PREFIX_POSITION)}
    t = interleaved({
        "pooled": lambda: pooled(lm, pairs, tokens),
        "hidden_states": lambda: hidden_states(lm, pairs, tokens),
        "pooled_prefix": lambda: pooled(lm, pairs, tokens, PREFIX_POSITION),
    }, repeats=repeats)
    mem = {"pooled": peak_bytes(lm, lambda: pooled(lm, pairs, tokens)),
           "hidden_states": peak_bytes(lm, lambda: hidden_states(lm, pairs, tokens)),
           "forward": peak_bytes(lm, lambda: bare_forward(lm, pairs, tokens))}
    bound = matmul_flop_bound(lm, tokens)
    speed = ratio_of(NAME, f"{POSITION} speed-up, output_hidden_states / pooled, {where}",
                     t["hidden_states"][clock], t["pooled"][clock], target=SPEED_TARGET,
                     detail=f"{clock} s {statistics.median(t['pooled'][clock]):.2f} vs "
                            f"{statistics.median(t['hidden_states'][clock]):.2f}; matmul-FLOP ratio {bound:.2f}x (the LM head "
                            "over every token; memory traffic comes on top)")
    prefix = ratio_of(NAME, f"{PREFIX_POSITION} speed-up, output_hidden_states / pooled, {where}",
                      t["hidden_states"][clock], t["pooled_prefix"][clock],
                      detail="pooled runs the prompt tokens only")
    memory = Ratio(NAME, f"{POSITION} peak memory, output_hidden_states / pooled, {where}",
                   mem["hidden_states"] / max(mem["pooled"], 1), 0.0, MEM_REPEATS, target=MEMORY_TARGET,
                   bound=mem["hidden_states"] / max(mem["forward"], 1),
                   detail=f"MiB {mem['pooled'] / 2**20:.0f} vs {mem['hidden_states'] / 2**20:.0f}; a bare forward "
                          f"peaks at {mem['forward'] / 2**20:.0f} (bound "
                          f"{mem['hidden_states'] / max(mem['forward'], 1):.1f}x)")
    raw = {"batch": batch, "tokens": tokens, "times": t, "peak_bytes": mem, "flop_bound": bound,
           "max_rel_diff": agree, "speed": speed.as_dict(), "memory": memory.as_dict(), "prefix_speed": prefix.as_dict()}
    return [speed, memory, prefix], raw


def run(quick: bool = False) -> list[Ratio]:
    from traitlab.models.loading import load_model

    lm = load_model("smollm2_135m")
    clock = clock_name()
    ratios: list[Ratio] = []
    rows = []
    with bench_threads() as n_threads:
        for batch, tokens in SETTINGS[quick]:
            got, raw = measure(lm, batch, tokens, REPEATS[quick], clock)
            ratios += got
            rows.append(raw)
    table = render(rows, clock, n_threads)
    write_result(NAME, {"settings": rows, "clock": clock, "threads": n_threads, "quick": quick, **machine()}, table)
    log_to_mlflow(NAME, {f"speedup_{r['batch']}x{r['tokens']}": r["speed"]["value"] for r in rows}, table)
    print(table)
    return ratios


def render(rows: list[dict], clock: str, n_threads: int) -> str:
    lines = [f"Capture of every layer, pooled over `{POSITION}` (and `{PREFIX_POSITION}`); {clock} time, "
             f"{n_threads} thread(s); medians over interleaved rounds, peak memory growth from a reset before each "
             "capture.", "",
             "| batch x tokens | pooled s | output_hidden_states s | speed-up | matmul-FLOP ratio | "
             f"`{PREFIX_POSITION}` pooled s | its speed-up | pooled peak MiB | hidden-states peak MiB | memory ratio | "
             "bare-forward peak MiB | max rel. difference |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["times"]
        med = {k: statistics.median(v[clock]) for k, v in t.items()}
        lines.append(
            f"| {r['batch']} x {r['tokens']} | {med['pooled']:.2f} | {med['hidden_states']:.2f} | "
            f"{r['speed']['value']:.2f}x ± {r['speed']['noise']:.2f} | {r['flop_bound']:.2f}x | "
            f"{med['pooled_prefix']:.2f} | {r['prefix_speed']['value']:.2f}x | {r['peak_bytes']['pooled'] / 2**20:.0f} | "
            f"{r['peak_bytes']['hidden_states'] / 2**20:.0f} | {r['memory']['value']:.1f}x | "
            f"{r['peak_bytes']['forward'] / 2**20:.0f} | {max(r['max_rel_diff'].values()):.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    for ratio in run(quick="--quick" in sys.argv[1:]):
        print(f"{ratio.name}: {ratio.value:.2f} ± {ratio.noise:.2f} ({ratio.verdict})")
