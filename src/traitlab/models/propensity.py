"""Propensity under steering (Tan et al. 2024): how much more likely the model finds a pair's positive
response than its negative one, given the prompt, with a vector added at some layer and coefficient.

propensity(pair, setting) = mean log p(positive response tokens | prompt) - mean log p(negative | prompt),
per token, so long and short responses weigh alike. Forward passes only, no generation: every
(setting, pair, side) is one row, all rows share length-sorted batches and each row carries its own steering
(models/row_forward.py: PerSampleSteering, kept aligned with its row however often a batch halves on
out-of-memory; the layers below the steered one run once for the rows of one pair side). Logits are
computed only for the positions that predict response tokens (``logits_to_keep``), not for the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from traitlab.models.chat import format_prompt
from traitlab.models.encoding import Encoded, encode
from traitlab.models.loading import LoadedModel
from traitlab.models.row_forward import Setting, steered_rows_forward


@dataclass(frozen=True)
class ResponsePair:
    """One held-out contrast: the same prompt answered the positive way and the negative way."""

    prompt: str
    positive: str
    negative: str
    source: str = ""   # where it came from ("val", "ood"), for the logs


def _mean_logprobs(batch: Sequence[Encoded], logits: torch.Tensor, ids: torch.Tensor) -> list[float]:
    """Mean log-prob per response token of each row (NaN for a row without response tokens); `logits` are
    the batch's last `keep` positions."""
    keep = logits.shape[1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for i, e in enumerate(batch):
        r = e.seq_len - e.prompt_len
        if r <= 0:
            out.append(float("nan"))
            continue
        # Padding is on the left, so the response is the last r tokens; position p predicts token p + 1,
        # and kept index t is position width - keep + t: the predictions sit at t = keep-1-r .. keep-2.
        targets = torch.tensor(e.ids[e.prompt_len:], device=logp.device)
        pred = logp[i, keep - 1 - r:keep - 1]
        out.append(float(pred.gather(-1, targets[:, None]).mean()))
    return out


def _response_keep(batch: Sequence[Encoded]) -> int:
    return max(e.seq_len - e.prompt_len for e in batch) + 1


def response_logprobs(lm: LoadedModel, encoded: Sequence[Encoded], settings: Sequence[Setting], *,
                      component: str = "residual", batch_size: int = 16, share_trunk: bool = True) -> list[float]:
    """Mean per-token log-prob of each row's response under its own steering setting (rows x settings 1:1)."""
    return steered_rows_forward(lm, encoded, settings, _response_keep, _mean_logprobs, component=component,
                                batch_size=batch_size, share_trunk=share_trunk)


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
               max_response_tokens: int | None = None, share_trunk: bool = True) -> torch.Tensor:
    """[len(settings), len(pairs)] propensities: every (setting, pair, side) row in shared batches."""
    return propensity_groups(lm, [(pairs, settings)], system_prompt=system_prompt, component=component,
                             batch_size=batch_size, max_response_tokens=max_response_tokens,
                             share_trunk=share_trunk)[0]


def propensity_groups(lm: LoadedModel, groups: Sequence[tuple[Sequence[ResponsePair], Sequence[Setting]]], *,
                      system_prompt: str | None = None, component: str = "residual", batch_size: int = 16,
                      max_response_tokens: int | None = None, share_trunk: bool = True) -> list[torch.Tensor]:
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
    lp = torch.tensor(response_logprobs(lm, rows, row_settings, component=component, batch_size=batch_size,
                                        share_trunk=share_trunk),
                      dtype=torch.float64) if rows else torch.zeros(0, dtype=torch.float64)
    out, start = [], 0
    for k, n in shapes:
        part = lp[start:start + 2 * k * n].view(k, n, 2)
        out.append(part[..., 0] - part[..., 1])
        start += 2 * k * n
    return out
