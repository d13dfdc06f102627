"""Steering generation: K candidate coefficients batched in ONE generate (PerSampleSteering, rows =
candidate x question) vs K sequential generates; and the cost of the steering hooks themselves.

Same SmolLM2, same questions (the first 4 of starter/optimism), greedy, 48 new tokens (the steering
default). The overhead run steers every row with coefficient 0, so steered and plain generate produce the
same tokens (checked) and the ratio measures the hooks alone. Wall times are medians of interleaved repeats
in one process. The prompt prefill is also timed alone (max_new_tokens=1): on a CPU it is compute-bound
at any batch size, so batching speeds up the decode steps, not the prefill, and the prefill's share caps
the overall speed-up.
"""

from __future__ import annotations

import torch

from benchmarks.common import interleaved, log_to_mlflow, machine, write_result

K = 8
N_QUESTIONS = 4
MAX_NEW_TOKENS = 48
LAYER = 12


def _setup():
    from traitlab.data import load_trait, resolve_trait_dir
    from traitlab.models.chat import format_prompt
    from traitlab.models.loading import load_model

    lm = load_model("smollm2_135m")
    questions = load_trait(resolve_trait_dir("starter/optimism")).steering.questions[:N_QUESTIONS]
    texts = [format_prompt(lm.tokenizer, q, None, lm.use_chat_template) for q in questions]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(lm.hidden_size, generator=g)
    return lm, texts, v / v.norm()


def run() -> dict:
    from traitlab.config.schema import GenerationConfig
    from traitlab.models.steering import generate_steered

    lm, texts, v = _setup()
    gen = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, batch_size=K * N_QUESTIONS)
    gen1 = GenerationConfig(max_new_tokens=1, batch_size=K * N_QUESTIONS)
    coefs = [10.0 * 1.3**i for i in range(K)]  # 10 .. 62: a search's worth of candidates at one layer
    settings = [[(LAYER, v, c)] for c in coefs]
    zero = [[(LAYER, v, 0.0)] for _ in range(K)]

    def batched():
        return generate_steered(lm, texts, settings, gen=gen)

    def sequential():
        return [generate_steered(lm, texts, [s], gen=gen)[0] for s in settings]

    def batched_prefill():
        return generate_steered(lm, texts, settings, gen=gen1)

    def sequential_prefill():
        return [generate_steered(lm, texts, [s], gen=gen1)[0] for s in settings]

    def plain():
        return generate_steered(lm, texts, [None] * K, gen=gen)

    def steered0():
        return generate_steered(lm, texts, zero, gen=gen)

    same = batched() == sequential()
    hooks_are_free_of_effect = plain() == steered0()
    times = interleaved({"batched": batched, "sequential": sequential, "plain": plain, "steered": steered0,
                         "batched_prefill": batched_prefill, "sequential_prefill": sequential_prefill}, repeats=3)
    decode_b, decode_s = times["batched"] - times["batched_prefill"], times["sequential"] - times["sequential_prefill"]
    result = {
        "k": K, "questions": N_QUESTIONS, "rows": K * N_QUESTIONS, "max_new_tokens": MAX_NEW_TOKENS, "layer": LAYER,
        "batched_s": times["batched"], "sequential_s": times["sequential"],
        "speedup": times["sequential"] / times["batched"], "speedup_target": 0.5 * K,
        "prefill_batched_s": times["batched_prefill"], "prefill_sequential_s": times["sequential_prefill"],
        "prefill_speedup": times["sequential_prefill"] / times["batched_prefill"],
        "decode_speedup": decode_s / decode_b,
        "plain_s": times["plain"], "steered_s": times["steered"],
        "overhead_ratio": times["steered"] / times["plain"], "overhead_target": 1.05,
        "batched_equals_sequential": same, "zero_steering_equals_plain": hooks_are_free_of_effect, **machine(),
    }
    table = (
        f"| {K} coefficients x {N_QUESTIONS} questions, {MAX_NEW_TOKENS} new tokens | wall s |\n|---|---|\n"
        f"| ONE batched generate ({K * N_QUESTIONS} rows, PerSampleSteering) | {result['batched_s']:.2f} |\n"
        f"| {K} sequential generates ({N_QUESTIONS} rows each) | {result['sequential_s']:.2f} |\n"
        f"| speed-up (target >= {0.5 * K:g}) | {result['speedup']:.2f}x |\n"
        f"| of which: prompt prefill alone, batched vs sequential | {result['prefill_batched_s']:.2f} vs "
        f"{result['prefill_sequential_s']:.2f} ({result['prefill_speedup']:.2f}x) |\n"
        f"| of which: decode steps, speed-up | {result['decode_speedup']:.2f}x |\n"
        f"| plain generate, {K * N_QUESTIONS} rows | {result['plain_s']:.2f} |\n"
        f"| steered generate (hooks on every row) | {result['steered_s']:.2f} |\n"
        f"| overhead ratio (target <= 1.05) | {result['overhead_ratio']:.3f} |\n"
        f"\nbatched == sequential responses: {same}; coefficient-0 steering == plain: {hooks_are_free_of_effect}"
    )
    write_result("steering", result, table)
    log_to_mlflow("steering", result, table)
    print(table)
    return result


if __name__ == "__main__":
    run()
