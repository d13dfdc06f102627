"""Forward passes that score texts with projection hooks (only scores leave the model), capture raw
per-token activations, or only calibrate massive dims; and the stream-through scoring of items into records.

The LM head never runs: the trunk is called directly. Batches are length-sorted and halve on OOM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from traitlab.core.components import base_model
from traitlab.core.hooks import MultiLayerCapture, MultiLayerProjection
from traitlab.core.massive import MaxAbsTracker
from traitlab.data.texts import TextItem
from traitlab.models.batching import run_halving
from traitlab.models.chat import format_prompt
from traitlab.models.encoding import Encoded, encode, length_sorted_batches, pad_id_of, padded_inputs
from traitlab.models.loading import LoadedModel
from traitlab.monitor.records import build_record
from traitlab.monitor.vectors import TraitVector, vectors_by_layer

if TYPE_CHECKING:
    from traitlab.config.infer import InferenceConfig


@dataclass
class Scored:
    """One text's projection: raw scores [S, T_l] on unit vectors and norms [S] per layer, all tokens."""

    token_ids: list[int]
    n_prompt_tokens: int
    scores: dict[int, Tensor]
    norms: dict[int, Tensor]


def encode_items(lm: LoadedModel, items: Sequence[TextItem], max_length: int) -> list[Encoded]:
    return [
        encode(
            lm.tokenizer,
            format_prompt(lm.tokenizer, it.prompt, it.system_prompt, lm.use_chat_template),
            it.response or None,
            max_length,
        )
        for it in items
    ]


def _batches(encoded: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    return length_sorted_batches([e.seq_len for e in encoded], batch_size)


@torch.inference_mode()
def project_encoded(
    model: torch.nn.Module,
    encoded: Sequence[Encoded],
    vectors: dict[int, Tensor],
    *,
    component: str = "residual",
    batch_size: int = 8,
    pad_id: int = 0,
    device: torch.device | str = "cpu",
    tracker: MaxAbsTracker | None = None,
) -> list[Scored]:
    """One prefill of the trunk per batch with projection hooks on every layer of ``vectors``.

    The LM head never runs (the trunk is called directly). ``tracker`` (massive calibration) listens
    in on the same forward until its token budget is spent.
    """
    trunk = base_model(model)
    proj = MultiLayerProjection(model, vectors, component=component)
    layers = sorted(vectors)
    out: list[Scored | None] = [None] * len(encoded)

    def run(rows: list[int]) -> list[Scored]:
        inputs = padded_inputs([encoded[i] for i in rows], pad_id, device)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        calib = (
            tracker.hooks(model, component, valid=mask.bool())
            if tracker is not None and not tracker.full
            else nullcontext()
        )
        with proj, calib:
            trunk(**inputs, use_cache=False)
        scores = {layer: proj.scores(layer).cpu() for layer in layers}
        norms = {layer: proj.norms(layer).cpu() for layer in layers}
        res = []
        for b, i in enumerate(rows):
            pad = ids.shape[1] - encoded[i].seq_len
            res.append(
                Scored(
                    encoded[i].ids,
                    encoded[i].prompt_len,
                    {lyr: s[b, pad:] for lyr, s in scores.items()},
                    {lyr: n[b, pad:] for lyr, n in norms.items()},
                )
            )
        return res

    for rows in _batches(encoded, batch_size):
        for i, s in zip(rows, run_halving(run, rows), strict=True):
            out[i] = s
    return [s for s in out if s is not None]


@torch.inference_mode()
def capture_encoded(
    model: torch.nn.Module,
    encoded: Sequence[Encoded],
    layers: Sequence[int],
    sink: Callable[[int, dict[int, Tensor]], None],
    *,
    component: str = "residual",
    batch_size: int = 8,
    pad_id: int = 0,
    device: torch.device | str = "cpu",
) -> None:
    """Raw per-token activations {layer: [S, D]} of each text, handed to ``sink(index, acts)`` batch by batch.

    The forward stops after the deepest captured layer; only one batch is held in memory.
    """
    trunk = base_model(model)

    def run(rows: list[int]) -> list[None]:
        inputs = padded_inputs([encoded[i] for i in rows], pad_id, device)
        ids = inputs["input_ids"]
        cap = MultiLayerCapture(model, layers, component=component, pool="none", stop_after_last=True)
        with cap:
            trunk(**inputs, use_cache=False)
        got = cap.get_all()
        for b, i in enumerate(rows):
            pad = ids.shape[1] - encoded[i].seq_len
            sink(i, {layer: a[b, pad:].cpu().contiguous() for layer, a in got.items()})
        return [None] * len(rows)

    for rows in _batches(encoded, batch_size):
        run_halving(run, rows)


@torch.inference_mode()
def calibrate_encoded(
    model: torch.nn.Module,
    encoded: Sequence[Encoded],
    tracker: MaxAbsTracker,
    *,
    component: str = "residual",
    batch_size: int = 8,
    pad_id: int = 0,
    device: torch.device | str = "cpu",
) -> None:
    """A calibration-only prefill (an explicit calibration, or cleaning that needs the dims before scoring)."""
    trunk = base_model(model)
    for rows in _batches(encoded, batch_size):
        if tracker.full:
            break
        inputs = padded_inputs([encoded[i] for i in rows], pad_id, device)
        with tracker.hooks(model, component, valid=inputs["attention_mask"].bool()):
            trunk(**inputs, use_cache=False)


def decode_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def score_items(
    lm: LoadedModel,
    items: Sequence[TextItem],
    vectors: Sequence[TraitVector],
    inf: InferenceConfig,
    *,
    source: str | Sequence[str],
    tracker: MaxAbsTracker | None = None,
    encoded: Sequence[Encoded] | None = None,
    tokenizer: Any = None,
    clean_massive: bool | None = None,
) -> list[dict[str, Any]]:
    """Stream-through scoring of items that already carry responses -> per-prompt records.

    ``source`` tags the records (one name, or one per item when items come from several sets);
    ``encoded`` / ``tokenizer`` (default: ``lm``'s) let a model diff run one variant's tokens through
    another variant; ``clean_massive`` (default ``inf.clean_massive``) is what the records say about cleaning.
    """
    sources = [source] * len(items) if isinstance(source, str) else list(source)
    tokenizer = tokenizer if tokenizer is not None else lm.tokenizer
    stacked, columns = vectors_by_layer(vectors)
    encoded = encoded if encoded is not None else encode_items(lm, items, inf.max_length)
    scored = project_encoded(
        lm.model,
        encoded,
        stacked,
        component=inf.component,
        batch_size=inf.batch_size,
        pad_id=pad_id_of(tokenizer),
        device=lm.device,
        tracker=tracker,
    )
    return [
        build_record(
            it,
            decode_tokens(tokenizer, s.token_ids),
            s,
            vectors,
            columns,
            model=lm.name,
            source=src,
            score_mode=inf.score_mode,
            centered=inf.centered,
            clean_massive=inf.clean_massive if clean_massive is None else clean_massive,
        )
        for it, s, src in zip(items, scored, sources, strict=True)
    ]
