"""Tokenise prompt(+response) pairs, keep the prompt/response boundary, and pad batches on the left.

Prompt and response are tokenised separately and their ids concatenated, so the boundary is exact even
when a tokenizer would merge characters across it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Encoded:
    ids: list[int]
    prompt_len: int

    @property
    def seq_len(self) -> int:
        return len(self.ids)


def add_special_tokens_for(tokenizer: Any, prompt_text: str) -> bool:
    """Add the tokenizer's special tokens (BOS) only when the formatted text does not already start with BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bool(bos) and prompt_text.startswith(bos))


def encode(tokenizer: Any, prompt_text: str, response: str | None = None, max_length: int | None = None) -> Encoded:
    """Encode one formatted prompt and optional response; add BOS only if the text does not already have it."""
    add_special = add_special_tokens_for(tokenizer, prompt_text)
    p = tokenizer(prompt_text, add_special_tokens=add_special)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] if response else []
    ids = list(p) + list(r)
    if max_length is not None and len(ids) > max_length:
        ids = ids[:max_length]
    return Encoded(ids=ids, prompt_len=min(len(p), len(ids)))


def pad_left(encoded: Sequence[Encoded], pad_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad a batch: generation appends on the right, so every row's last prompt token is aligned."""
    width = max(e.seq_len for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, e in enumerate(encoded):
        if e.seq_len:
            ids[i, width - e.seq_len:] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, width - e.seq_len:] = 1
    return ids.to(device), mask.to(device)


def position_ids_of(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: each row counts from 0 at its first real token.

    A plain forward (unlike generate) would number the pad slots too, shifting every real token of a short
    row; with absolute position embeddings (GPT-2) that changes its activations, with rotary ones only
    rounding. Pad slots get 0 (they are masked out anyway).
    """
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def padded_inputs(encoded: Sequence[Encoded], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The model inputs of a left-padded batch: input_ids, attention_mask and position_ids.

    Every padded forward in traitlab goes through this, so a padded row gives the same activations as the
    same row run alone: `model(**padded_inputs(...), use_cache=False)`.
    """
    ids, mask = pad_left(encoded, pad_id, device)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_of(mask)}


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Group indices of similar length (longest first) so padding, and so wasted compute, stays small."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_id_of(tokenizer: Any) -> int:
    pid = tokenizer.pad_token_id
    return int(pid if pid is not None else tokenizer.eos_token_id)


def group_batches(groups: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Row ids in batches of <= batch_size, taking `groups` in order and keeping each group's rows in one
    batch where batch_size allows (a larger group is split across consecutive batches)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches: list[list[int]] = []
    rows: list[int] = []
    for group in groups:
        if rows and len(rows) + len(group) > batch_size:
            batches.append(rows)
            rows = []
        rows += group
        while len(rows) > batch_size:
            batches.append(rows[:batch_size])
            rows = rows[batch_size:]
    if rows:
        batches.append(rows)
    return batches
