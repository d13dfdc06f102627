"""Extraction capture: pooled inside the hook (traitlab) vs output_hidden_states=True then pooling.

Same 200 (prompt, response) examples of the starter traits, same length-sorted batches, same position
(response[:] mean). Wall time interleaved in one process; peak memory measured per mode in a fresh
subprocess as the growth of max RSS (CPU) or max CUDA allocation during the capture.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import torch

from benchmarks.common import interleaved, log_to_mlflow, machine, write_result

N_EXAMPLES = 200
BATCH = 16


def _pairs(lm):
    from traitlab.data import load_trait, resolve_trait_dir
    from traitlab.models.capture import TextPair
    from traitlab.pipelines.common import prompt_texts

    examples = []
    for trait in ("starter/optimism", "starter/formality", "starter/sycophancy"):
        t = load_trait(resolve_trait_dir(trait))
        examples += t.positive + t.negative
    examples = examples[:N_EXAMPLES]
    return [TextPair(p, e.response or "") for p, e in zip(prompt_texts(lm, examples), examples, strict=True)]


def hidden_states_capture(lm, pairs, layers):
    """What peers do: keep every layer's all-token states (and the logits), then pool afterwards."""
    from traitlab.core.positions import Segments, parse_position, resolve_batch
    from traitlab.models.capture import encode_pairs
    from traitlab.models.encoding import length_sorted_batches, pad_id_of, padded_inputs

    spec = parse_position("response[:]")
    enc = encode_pairs(lm, pairs, 512)
    out = torch.empty(len(enc), len(layers), lm.hidden_size)
    with torch.inference_mode():
        for rows in length_sorted_batches([e.seq_len for e in enc], BATCH):
            inputs = padded_inputs([enc[i] for i in rows], pad_id_of(lm.tokenizer), lm.device)
            ids = inputs["input_ids"]
            spans = resolve_batch(spec, [Segments(enc[i].prompt_len, enc[i].seq_len) for i in rows], ids.shape[1])
            hs = lm.model(**inputs, output_hidden_states=True).hidden_states
            pos = torch.arange(ids.shape[1], device=ids.device)
            sel = ((pos[None] >= spans[:, :1].to(ids.device)) & (pos[None] < spans[:, 1:].to(ids.device))).float()
            for j, layer in enumerate(layers):
                h = hs[layer + 1].float()
                out[rows, j] = ((h * sel[..., None]).sum(1) / sel.sum(1, keepdim=True)).cpu()
    return out


def pooled_capture(lm, pairs, layers):
    from traitlab.models.capture import capture_pooled

    return capture_pooled(lm, pairs, position="response[:]", layers=layers, batch_size=BATCH, desc=None)


def _peak_child(mode: str) -> None:
    """Run one mode in this (fresh) process and print its peak memory growth in bytes."""
    from traitlab.models.loading import load_model

    lm = load_model("smollm2_135m")
    pairs = _pairs(lm)
    layers = list(range(lm.n_layers))
    fn = pooled_capture if mode == "pooled" else hidden_states_capture
    fn(lm, pairs[:BATCH], layers)  # warm-up allocations of the framework itself
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fn(lm, pairs, layers)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"peak_growth_bytes": max(peak - base, 1)}))


def _peak(mode: str) -> int:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_capture", "--peak", mode], capture_output=True,
                         text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_bytes"])


def run() -> dict:
    from traitlab.models.loading import load_model

    lm = load_model("smollm2_135m")
    pairs = _pairs(lm)
    layers = list(range(lm.n_layers))
    a, b = pooled_capture(lm, pairs, layers), hidden_states_capture(lm, pairs, layers)
    max_err = float((a - b).abs().max())
    times = interleaved({"pooled": lambda: pooled_capture(lm, pairs, layers),
                         "hidden_states": lambda: hidden_states_capture(lm, pairs, layers)}, repeats=2, warmup=0)
    mem = {"pooled": _peak("pooled"), "hidden_states": _peak("hidden_states")}
    result = {
        "n_examples": len(pairs), "batch_size": BATCH, "layers": len(layers),
        "pooled_s": times["pooled"], "hidden_states_s": times["hidden_states"],
        "speedup": times["hidden_states"] / times["pooled"],
        "pooled_peak_mb": mem["pooled"] / 2**20, "hidden_states_peak_mb": mem["hidden_states"] / 2**20,
        "memory_ratio": mem["hidden_states"] / mem["pooled"], "max_abs_diff": max_err, **machine(),
    }
    table = (
        "| capture of 200 examples x 30 layers | wall s | peak memory growth MB |\n|---|---|---|\n"
        f"| traitlab pooled in hook | {result['pooled_s']:.2f} | {result['pooled_peak_mb']:.0f} |\n"
        f"| output_hidden_states=True | {result['hidden_states_s']:.2f} | {result['hidden_states_peak_mb']:.0f} |\n"
        f"| ratio | {result['speedup']:.2f}x faster | {result['memory_ratio']:.1f}x less |\n"
        f"\nmax |difference| of pooled activations: {max_err:.2e}"
    )
    write_result("capture", result, table)
    log_to_mlflow("capture", result, table)
    print(table)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--peak":
        _peak_child(sys.argv[2])
    else:
        run()
