"""Forward passes over rows that each carry their own steering: the one batched forward of propensity,
capability scoring and entanglement (no generation).

Rows are (setting, input) pairs. All rows run through shared batches, each with its own (layer, vector,
coefficient) terms (PerSampleSteering; a batch halves on out-of-memory without misassigning rows), and only
the last `keep` positions get logits. Rows with identical tokens are batched together, and their layers
below the batch's shallowest steered layer b run once per distinct input: steering at b changes nothing
below b. Work per batch falls from R x L layer-rows to U x b + R x (L - b) (R rows, U distinct inputs,
L layers); the results equal the unshared path's up to float rounding (tested). Models with mixed attention
layer types (sliding/full) run unshared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import TypeVar

import torch
from torch import Tensor

from traitlab.core.components import running_only_layers, uniform_attention
from traitlab.core.hooks import PerSampleSteering
from traitlab.models.batching import run_halving
from traitlab.models.encoding import Encoded, group_batches, pad_id_of, padded_inputs
from traitlab.models.loading import LoadedModel
from traitlab.models.trunk import entering, run_layers

# (layer, vector, coefficient) terms added to one row; None or [] = unsteered.
Setting = Sequence[tuple[int, Tensor, float]] | None
T = TypeVar("T")
# read(row batch, its kept logits [B, keep, V], its padded input ids [B, W]) -> one value per row
Reader = Callable[[list[Encoded], Tensor, Tensor], Sequence[T]]


def distinct_batches(encoded: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    """Row ids in batches of <= batch_size: longest inputs first, rows with identical tokens together."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, e in enumerate(encoded):
        groups.setdefault(tuple(e.ids), []).append(i)
    order = sorted(groups.values(), key=lambda g: (-encoded[g[0]].seq_len, g[0]))
    return group_batches(order, batch_size)


@torch.inference_mode()
def steered_rows_forward(lm: LoadedModel, encoded: Sequence[Encoded], settings: Sequence[Setting],
                         keep: Callable[[list[Encoded]], int], read: Reader[T], *, component: str = "residual",
                         batch_size: int = 16, share_trunk: bool = True,
                         progress: Callable[[int], object] | None = None) -> list[T]:
    """read()'s value for every row (rows x settings 1:1), each row run under its own steering setting.

    keep(batch): how many last positions need logits. `share_trunk=False` runs every row through every layer
    (the reference the benchmarks and tests compare with). `progress(n)` is called after each batch.
    """
    if len(settings) != len(encoded):
        raise ValueError(f"steered_rows_forward: {len(encoded)} rows but {len(settings)} settings")
    configs = [(layer, v, float(c), row) for row, s in enumerate(settings) if s for layer, v, c in s if c != 0.0]
    hook = PerSampleSteering(lm.model, configs, batch_size=len(encoded), component=component) if configs else None
    branch = [min((layer for layer, _, c in s if c != 0.0), default=lm.n_layers) if s else lm.n_layers
              for s in settings]
    share = share_trunk and uniform_attention(lm.model)
    pad = pad_id_of(lm.tokenizer)

    def run(rows: list[int]) -> Sequence[T]:
        batch = [encoded[i] for i in rows]
        inputs = padded_inputs(batch, pad, lm.device)
        k = keep(batch)
        b = min(branch[i] for i in rows)
        with ExitStack() as stack:
            if hook is not None:
                stack.enter_context(hook)
                stack.enter_context(hook.rows(rows))
            distinct = {tuple(e.ids): e for e in batch}  # one row per distinct input
            if share and 0 < b < lm.n_layers and len(distinct) < len(rows):
                where = {ids: j for j, ids in enumerate(distinct)}
                pick = torch.tensor([where[tuple(e.ids)] for e in batch], device=inputs["input_ids"].device)
                trunk = padded_inputs(list(distinct.values()), pad, lm.device)
                hidden, _ = run_layers(lm, 0, b, trunk["input_ids"], trunk["attention_mask"],
                                       trunk["position_ids"], None, keep_kv=False)
                stack.enter_context(entering(lm, b, hidden[pick]))
                stack.enter_context(running_only_layers(lm.model, b, lm.n_layers))
            logits = lm.model(**inputs, use_cache=False, logits_to_keep=k).logits
        return read(batch, logits, inputs["input_ids"])

    out: list[T | None] = [None] * len(encoded)
    for rows in distinct_batches(encoded, batch_size):
        for i, value in zip(rows, run_halving(run, rows), strict=True):
            out[i] = value
        if progress is not None:
            progress(len(rows))
    return out  # type: ignore[return-value]
