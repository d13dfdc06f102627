"""Generation that monitors traits per token in the same forward passes, optionally while steering.

Projection hooks sit on the monitored layers during ``generate``: the prefill scores the prompt, each decode
step scores the token it feeds, so no second pass is needed. Steering hooks are registered first, so a
projection at a steered layer sees the steered state. Two consequences of scoring inside generation:

- the last sampled token of a reply cut by ``max_new_tokens`` is never fed back, so its scores are NaN (a
  reply that ended with EOS has every token scored: the EOS itself is dropped);
- ``on_token(token_id, scores, norms)`` (one prompt only) is called after each decode step with the token just
  fed, its raw projections ``{layer: Tensor[T_l]}`` and its norms ``{layer: float tensor}``: what a live view
  needs to colour tokens as they stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from traitlab.core.hooks import MultiLayerProjection
from traitlab.models.encoding import encode
from traitlab.models.generation import generate_texts
from traitlab.models.loading import LoadedModel
from traitlab.monitor.scoring import Scored

# start -> the steering context of one (sub-)batch; start = its last prompt position (left-padded batches
# align every row's prompt end there), where response-only steering begins.
SteeringFactory = Callable[[int], AbstractContextManager]
TokenCallback = Callable[[int, dict[int, Tensor], dict[int, Tensor]], None]  # token id, raw scores, norms


@dataclass
class MonitoredGeneration:
    text: str
    scored: Scored  # prompt + response tokens; raw scores [S, T_l] and norms [S] per monitored layer


def generate_monitored(
    lm: LoadedModel,
    prompt_texts: Sequence[str],
    vectors: dict[int, Tensor],
    *,
    component: str = "residual",
    steering: SteeringFactory | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    seed: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    on_token: TokenCallback | None = None,
) -> list[MonitoredGeneration]:
    """Generate for chat-formatted prompts with projection hooks on ``vectors`` ({layer: [T_l, D]})."""
    if on_token is not None and len(prompt_texts) != 1:
        raise ValueError("on_token streams one conversation; pass a single prompt")
    prompt_ids = [encode(lm.tokenizer, t).ids for t in prompt_texts]  # the encoding generate_batch uses
    seen: dict[int, tuple[int, dict[int, Tensor], dict[int, Tensor]]] = {}  # row -> (width, scores, norms)

    @contextmanager
    def hooks(rows: list[int]) -> Iterator[None]:
        width = max(len(prompt_ids[r]) for r in rows)
        proj = MultiLayerProjection(lm.model, vectors, component=component)
        steer = steering(width - 1) if steering is not None else nullcontext()
        stream = _stream(lm.model, proj, on_token) if on_token is not None else nullcontext()
        with steer, proj, stream:
            yield
        scores, norms = proj.all_scores(), proj.all_norms()
        for b, r in enumerate(rows):
            seen[r] = (width, {ly: s[b].cpu() for ly, s in scores.items()}, {ly: n[b].cpu() for ly, n in norms.items()})

    gens = generate_texts(lm, prompt_texts, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                          do_sample=do_sample, temperature=temperature, top_p=top_p, hooks=hooks, desc=None)
    out = []
    for r, g in enumerate(gens):
        width, scores, norms = seen[r]
        ids = prompt_ids[r] + list(g.token_ids)
        start = width - len(prompt_ids[r])  # left padding before this row's first token
        out.append(MonitoredGeneration(g.text, Scored(ids, len(prompt_ids[r]),
                                                      {ly: _cut(s, start, len(ids)) for ly, s in scores.items()},
                                                      {ly: _cut(n, start, len(ids)) for ly, n in norms.items()})))
    return out


def _cut(t: Tensor, start: int, n: int) -> Tensor:
    """Columns start..start+n of a fed sequence, NaN-padded where tokens were never fed."""
    got = t[start:start + n]
    if got.shape[0] == n:
        return got
    pad = torch.full((n - got.shape[0], *got.shape[1:]), float("nan"), dtype=got.dtype)
    return torch.cat([got, pad])


@contextmanager
def _stream(model: torch.nn.Module, proj: MultiLayerProjection, on_token: TokenCallback) -> Iterator[None]:
    """After each single-token forward, hand the fed token and its projections to ``on_token``."""
    fed: dict[str, Any] = {}

    def before(module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        fed["id"] = int(ids[0, -1]) if isinstance(ids, Tensor) and ids.shape[-1] == 1 else None

    def after(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if fed.get("id") is not None:
            on_token(fed["id"], {ly: s[0, -1].float().cpu() for ly, s in proj.all_scores().items()},
                     {ly: n[0, -1].float().cpu() for ly, n in proj.all_norms().items()})

    handles = [model.register_forward_pre_hook(before, with_kwargs=True),
               model.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
