"""Propensity under steering (Tan et al. 2024): how much more likely the model finds a pair's positive
response than its negative one, given the prompt, with a vector added at some layer and coefficient.

propensity(pair, setting) = mean log p(positive response tokens | prompt) - mean log p(negative | prompt),
per token, so long and short responses weigh alike. Forward passes only, no generation: every
(setting, pair, side) is one row, all rows share length-sorted batches and each row carries its own steering
(PerSampleSteering, kept aligned with its row however often a batch halves on out-of-memory). Logits are
computed only for the positions that predict response tokens (``logits_to_keep``), not for the prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from traitlab.core.hooks import PerSampleSteering
from traitlab.models.batching import run_halving
from traitlab.models.chat import format_prompt
from traitlab.models.encoding import Encoded, encode, length_sorted_batches, pad_id_of, padded_inputs
from traitlab.models.loading import LoadedModel

# (layer, vector, coefficient) terms added to one row; None or [] = unsteered.
Setting = Sequence[tuple[int, torch.Tensor, float]] | None


@dataclass(frozen=True)
class ResponsePair:
    """One held-out contrast: the same prompt answered the positive way and the negative way."""

    prompt: str
    positive: str
    negative: str
    source: str = ""   # where it came from ("val", "ood"), for the logs


@torch.inference_mode()
def _forward_logits(lm: LoadedModel, batch: Sequence[Encoded], keep: int) -> torch.Tensor:
    """Float32 logits of the last `keep` positions of a left-padded batch: the one forward of this module."""
    out = lm.model(**padded_inputs(batch, pad_id_of(lm.tokenizer), lm.device), use_cache=False, logits_to_keep=keep)
    return out.logits.float()


def _mean_logprobs(lm: LoadedModel, batch: Sequence[Encoded]) -> list[float]:
    """Mean log-prob per response token of each row (NaN for a row without response tokens)."""
    resp = [e.seq_len - e.prompt_len for e in batch]
    keep = max(resp) + 1
    logits = _forward_logits(lm, batch, keep)                      # [B, keep, V]
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for i, (e, r) in enumerate(zip(batch, resp, strict=True)):
        if r <= 0:
            out.append(float("nan"))
            continue
        # Padding is on the left, so the response is the last r tokens; position p predicts token p + 1,
        # and kept index t is position width - keep + t: the predictions sit at t = keep-1-r .. keep-2.
        targets = torch.tensor(e.ids[e.prompt_len:], device=logp.device)
        pred = logp[i, keep - 1 - r:keep - 1]
        out.append(float(pred.gather(-1, targets[:, None]).mean()))
    return out


@contextmanager
def _rows_of(hook: PerSampleSteering | None, rows: list[int]) -> Iterator[None]:
    if hook is None:
        yield
        return
    with hook, hook.rows(rows):
        yield


def response_logprobs(lm: LoadedModel, encoded: Sequence[Encoded], settings: Sequence[Setting], *,
                      component: str = "residual", batch_size: int = 16) -> list[float]:
    """Mean per-token log-prob of each row's response under its own steering setting (rows x settings 1:1)."""
    if len(settings) != len(encoded):
        raise ValueError(f"response_logprobs: {len(encoded)} rows but {len(settings)} settings")
    configs = [(layer, v, float(c), row) for row, s in enumerate(settings) if s for layer, v, c in s if c != 0.0]
    hook = PerSampleSteering(lm.model, configs, batch_size=len(encoded), component=component) if configs else None
    out: list[float] = [float("nan")] * len(encoded)

    def run(rows: list[int]) -> list[float]:
        with _rows_of(hook, rows):
            return _mean_logprobs(lm, [encoded[i] for i in rows])

    for rows in length_sorted_batches([e.seq_len for e in encoded], batch_size):
        for i, value in zip(rows, run_halving(run, rows), strict=True):
            out[i] = value
    return out


def encode_pairs(lm: LoadedModel, pairs: Sequence[ResponsePair], system_prompt: str | None = None,
                 max_response_tokens: int | None = None) -> list[tuple[Encoded, Encoded]]:
    """(positive, negative) encodings of each pair, the prompt chat-formatted with `system_prompt`."""
    out = []
    for p in pairs:
        prompt = format_prompt(lm.tokenizer, p.prompt, system_prompt, lm.use_chat_template)
        sides = []
        for response in (p.positive, p.negative):
            e = encode(lm.tokenizer, prompt, response)
            if max_response_tokens is not None:
                e = Encoded(e.ids[:e.prompt_len + max_response_tokens], e.prompt_len)
            sides.append(e)
        out.append((sides[0], sides[1]))
    return out


def propensity(lm: LoadedModel, pairs: Sequence[ResponsePair], settings: Sequence[Setting], *,
               system_prompt: str | None = None, component: str = "residual", batch_size: int = 16,
               max_response_tokens: int | None = None) -> torch.Tensor:
    """[len(settings), len(pairs)] propensities: every (setting, pair, side) row in shared batches."""
    return propensity_groups(lm, [(pairs, settings)], system_prompt=system_prompt, component=component,
                             batch_size=batch_size, max_response_tokens=max_response_tokens)[0]


def propensity_groups(lm: LoadedModel, groups: Sequence[tuple[Sequence[ResponsePair], Sequence[Setting]]], *,
                      system_prompt: str | None = None, component: str = "residual", batch_size: int = 16,
                      max_response_tokens: int | None = None) -> list[torch.Tensor]:
    """One [len(settings), len(pairs)] tensor per (pairs, settings) group, every group's (setting, pair, side)
    rows in the same length-sorted forward batches: several traits' trials share their forward passes."""
    rows: list[Encoded] = []
    row_settings: list[Setting] = []
    shapes = []
    for pairs, settings in groups:
        enc = encode_pairs(lm, pairs, system_prompt, max_response_tokens)
        for s in settings:
            for pos, neg in enc:
                rows += [pos, neg]
                row_settings += [s, s]
        shapes.append((len(settings), len(pairs)))
    lp = torch.tensor(response_logprobs(lm, rows, row_settings, component=component, batch_size=batch_size),
                      dtype=torch.float64) if rows else torch.zeros(0, dtype=torch.float64)
    out, start = [], 0
    for k, n in shapes:
        part = lp[start:start + 2 * k * n].view(k, n, 2)
        out.append(part[..., 0] - part[..., 1])
        start += 2 * k * n
    return out
