"""Run a slice of the decoder stack, the hidden state entering its first layer supplied by the caller.

Steering at layer b changes nothing below b, so rows that share their tokens and differ only in how they
are steered compute identical states in layers [0, b). This module lets a caller run those layers once per
distinct input and continue each row from there: the shared prompt prefill of steered generation
(models/steered_generation.py) and the shared trunk of steered scoring (models/row_forward.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from traitlab.core.components import base_model, get_decoder_layers, running_only_layers
from traitlab.models.loading import LoadedModel


@contextmanager
def entering(lm: LoadedModel, layer: int, hidden: Tensor | None) -> Iterator[None]:
    """Inside the block, decoder layer `layer` takes `hidden` as its input, whatever the layers below gave
    (None: no change). Enter it before `running_only_layers`: inside that block layer lookups see the slice."""
    if hidden is None:
        yield
        return

    def feed(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = get_decoder_layers(lm.model)[layer].register_forward_pre_hook(feed, with_kwargs=True, prepend=True)
    try:
        yield
    finally:
        handle.remove()


def run_layers(lm: LoadedModel, start: int, stop: int, ids: Tensor, mask: Tensor, pos: Tensor,
               hidden: Tensor | None, *, keep_kv: bool = True) -> tuple[Tensor | None, dict[int, tuple[Tensor, Tensor]]]:
    """Run decoder layers [start, stop) of the trunk over these columns, `hidden` entering layer `start`
    (None: the token embeddings). Returns (the hidden state leaving layer stop - 1, or None when stop is the
    last layer; {layer: (keys, values)} for the layers run when `keep_kv`, else {})."""
    from transformers import DynamicCache

    layers = get_decoder_layers(lm.model)
    cache = DynamicCache(config=lm.model.config) if keep_kv else None  # fresh: no layer outside the slice
    out: dict[str, Tensor] = {}

    def keep(module: torch.nn.Module, args: tuple, output: object) -> None:
        out["h"] = output[0] if isinstance(output, tuple) else output  # type: ignore[assignment]

    handle = layers[stop - 1].register_forward_hook(keep) if stop < len(layers) else None  # after any edit there
    try:
        with entering(lm, start, hidden), running_only_layers(lm.model, start, stop):
            base_model(lm.model)(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                                 use_cache=keep_kv)
    finally:
        if handle is not None:
            handle.remove()
    kv = {} if cache is None else {layer: (cache.layers[layer].keys, cache.layers[layer].values)
                                   for layer in range(start, stop)}
    return out.get("h"), kv
