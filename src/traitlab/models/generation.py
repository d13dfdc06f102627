"""Batched, seeded, left-padded generation with optional hooks per batch (steering, projection)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from traitlab.models.batching import run_halving
from traitlab.models.encoding import encode, length_sorted_batches, pad_id_of, pad_left
from traitlab.models.loading import LoadedModel

HookFactory = Callable[[list[int]], AbstractContextManager]


@dataclass
class Generation:
    text: str
    token_ids: list[int]


@torch.inference_mode()
def generate_batch(
    lm: LoadedModel,
    prompt_texts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[Generation]:
    """One generate call for these prompts (already chat-formatted); returns only the new tokens."""
    tok = lm.tokenizer
    ids, mask = pad_left([encode(tok, t) for t in prompt_texts], pad_id_of(tok), lm.device)
    return generate_padded(lm, ids, mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                           temperature=temperature, top_p=top_p, seed=seed)


@torch.inference_mode()
def generate_padded(
    lm: LoadedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    past_key_values: Any = None,
) -> list[Generation]:
    """One generate call on a left-padded batch; `past_key_values` may already hold a prefix of the prompts
    (generate then runs only the prompt columns the cache lacks). Returns only the new tokens."""
    tok = lm.tokenizer
    torch.manual_seed(seed)
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad_id_of(tok))
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if past_key_values is not None:
        kwargs["past_key_values"] = past_key_values
    out = lm.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    new = out[:, ids.shape[1]:].tolist()
    eos = {tok.eos_token_id, pad_id_of(tok)}
    results = []
    for row in new:
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        row = row[:cut]
        results.append(Generation(text=tok.decode(row, skip_special_tokens=True).strip(), token_ids=row))
    return results


def generate_texts(
    lm: LoadedModel,
    prompt_texts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    hooks: HookFactory | None = None,
    desc: str | None = "generate",
) -> list[Generation]:
    """Generate for many prompts in length-sorted batches; `hooks(rows)` wraps each (sub-)batch.

    Batches halve on out-of-memory; `hooks` receives the original row indices of the batch it wraps, so
    per-row steering stays aligned with its rows however the batch was split.
    """
    lengths = [len(lm.tokenizer(t)["input_ids"]) for t in prompt_texts]
    results: list[Generation | None] = [None] * len(prompt_texts)
    batches = length_sorted_batches(lengths, batch_size)
    bar = tqdm(total=len(prompt_texts), desc=desc, leave=False, **({"disable": True} if desc is None else {}))

    def run(rows: list[int]) -> list[Generation]:
        ctx = hooks(rows) if hooks is not None else nullcontext()
        with ctx:
            return generate_batch(
                lm,
                [prompt_texts[i] for i in rows],
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
            )

    for rows in batches:
        for i, g in zip(rows, run_halving(run, rows), strict=True):
            results[i] = g
        bar.update(len(rows))
    bar.close()
    return [r for r in results if r is not None]
