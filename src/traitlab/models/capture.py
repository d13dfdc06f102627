"""Pooled activations of (prompt, response) examples: one prefill pass, pooled inside the hooks.

Never keeps all-token activations (the hook pools the position span as it goes), never computes logits
(the forward stops after the deepest requested layer), and batches by length to cut padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from traitlab.core.hooks import MultiLayerCapture
from traitlab.core.positions import (
    PositionError,
    PositionSpec,
    Segments,
    parse_position,
    resolve_batch,
    resolve_span,
)
from traitlab.models.batching import run_halving
from traitlab.models.chat import PromptLayout
from traitlab.models.encoding import Encoded, encode, length_sorted_batches, pad_id_of, padded_inputs
from traitlab.models.loading import LoadedModel
from traitlab.models.segments import encode_with_segments


@dataclass(frozen=True)
class TextPair:
    """A chat-formatted prompt and the response text that follows it (may be empty). `layout` (where the
    system prompt and turns sit in the prompt, from models/chat.py) is needed by the system and turn frames."""

    prompt_text: str
    response: str = ""
    layout: PromptLayout | None = None


def encode_pairs(lm: LoadedModel, pairs: Sequence[TextPair], max_length: int | None = None) -> list[Encoded]:
    return [encode(lm.tokenizer, p.prompt_text, p.response or None, max_length) for p in pairs]


def needs_layout(spec: PositionSpec) -> bool:
    """Frames that only the chat template's rendering can place (prompt/response/all need just the boundary)."""
    return spec.frame in ("system", "thinking") or spec.turn is not None


def encode_with_frames(lm: LoadedModel, pairs: Sequence[TextPair], spec: PositionSpec,
                       max_length: int | None = None) -> tuple[list[Encoded], list[Segments]]:
    """Encoded rows and their Segments; system/thinking/turn spans only when the position needs them."""
    if not needs_layout(spec):
        enc = encode_pairs(lm, pairs, max_length)
        return enc, [Segments(prompt_len=e.prompt_len, seq_len=e.seq_len) for e in enc]
    encoded, segments = [], []
    for i, p in enumerate(pairs):
        layout = p.layout if p.layout is not None else PromptLayout(p.prompt_text, located=False,
                                                                    problem="no layout of the prompt was given")
        if not layout.located and (spec.frame == "system" or spec.turn is not None):
            raise PositionError(f"position {spec.text or str(spec)!r}, row {i}: {layout.problem}")
        e, s = encode_with_segments(lm.tokenizer, layout, p.response or None, max_length)
        encoded.append(e)
        segments.append(s)
    return encoded, segments


@torch.inference_mode()
def capture_pooled(
    lm: LoadedModel,
    pairs: Sequence[TextPair],
    *,
    position: str,
    layers: Sequence[int],
    component: str = "residual",
    batch_size: int = 16,
    max_length: int | None = 512,
    desc: str | None = "capture",
) -> torch.Tensor:
    """Return float32 [N, len(layers), D]: the component at each layer, mean-pooled over `position`."""
    spec = parse_position(position)
    enc, segs = encode_with_frames(lm, pairs, spec, max_length)
    for i, s in enumerate(segs):  # fail before any forward if a row has nothing at this position
        try:
            resolve_span(spec, s)
        except PositionError as e:
            raise PositionError(f"row {i}: {e}") from None
    layers = list(layers)
    out: torch.Tensor | None = None
    bar = tqdm(total=len(enc), desc=desc, leave=False, **({"disable": True} if desc is None else {}))

    def run(rows: list[int]) -> list[torch.Tensor]:
        inputs = padded_inputs([enc[i] for i in rows], pad_id_of(lm.tokenizer), lm.device)
        spans = resolve_batch(spec, [segs[i] for i in rows], inputs["input_ids"].shape[1]).to(lm.device)
        cap = MultiLayerCapture(lm.model, layers, component=component, spans=spans, pool="mean", stop_after_last=True)
        with cap:
            lm.model(**inputs, use_cache=False)
        acts = torch.stack([cap.get(layer) for layer in layers], dim=1).float().cpu()  # [b, L, D]
        return list(acts)

    for rows in length_sorted_batches([e.seq_len for e in enc], batch_size):
        got = run_halving(run, rows)
        if out is None:
            out = torch.empty((len(enc), len(layers), got[0].shape[-1]), dtype=torch.float32)
        for i, a in zip(rows, got, strict=True):
            out[i] = a
        bar.update(len(rows))
    bar.close()
    assert out is not None
    return out
