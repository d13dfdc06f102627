"""Steered generation for rows = setting x prompt, with the prompt prefill shared by the rows of one prompt.

A coefficient search generates K settings (each a list of (layer, vector, coefficient)) for the same N
prompts. Steering at layer b changes nothing below b, so the K rows of one prompt compute identical keys,
values and hidden states in every layer under their shallowest steered layer. Here those layers run once
per prompt:

1. the prompts minus their last column run through layers [0, b1) (b1: the shallowest branch layer of the
   batch's settings); the KV entries and the hidden state entering b1 are kept;
2. the rows whose setting branches at b1 take that hidden state, one row per (setting, prompt), and run
   layers [b1, L) with PerSampleSteering on; the shared prompts continue to the next branch layer b2 for
   the remaining rows, and so on; unsteered settings take the whole shared prefix;
3. the per-layer caches are put together in row order, and `generate` continues from there: it feeds the
   last prompt column (steered as usual) and decodes.

Prefill work per batch falls from R x L layer-rows to P x b_max + sum over branches of R_b x (L - b)
(R rows, P prompts). Greedy outputs equal the unshared path's (every layer sees the same inputs; only the
batch shapes differ, which moves results by float rounding at most). Sampled outputs use the same seed per
batch, but batches here are formed per prompt group, so sampled texts may differ from another batching.
Models with mixed attention layer types (sliding/full) fall back to the unshared path.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor

from traitlab.config.schema import GenerationConfig
from traitlab.core.components import uniform_attention
from traitlab.core.hooks import PerSampleSteering
from traitlab.models.batching import run_halving
from traitlab.models.encoding import Encoded, encode, group_batches, pad_id_of, pad_left, position_ids_of
from traitlab.models.generation import Generation, generate_padded
from traitlab.models.loading import LoadedModel
from traitlab.models.trunk import run_layers

Setting = Sequence[tuple[int, Tensor, float]] | None


def generate_steered_shared(lm: LoadedModel, prompt_texts: Sequence[str], settings: Sequence[Setting], *,
                            component: str = "residual", gen: GenerationConfig | None = None,
                            seed: int = 0, share_prefill: bool = True,
                            prompts_of: Sequence[Sequence[int]] | None = None) -> list[list[str]]:
    """Responses [setting][prompt]: row = setting x prompt, steered by its setting's (layer, vector,
    coefficient) list (None: unsteered) through PerSampleSteering, the prompt prefill shared across settings.

    `prompts_of[s]`: the prompt indices setting s is answered on (None: every prompt), so settings of
    different question sets (several traits' trials) share one call; the result lists each setting's answers
    in the order of its `prompts_of` entry.

    Batches hold up to `gen.batch_size` rows, all settings of a prompt together; a batch that runs out of
    memory is split in halves (each half keeps its rows' steering). `share_prefill=False` runs every row's
    whole prompt in `generate` (the same batches, nothing shared: the reference the benchmark compares with).
    """
    gen = gen or GenerationConfig()
    n, k = len(prompt_texts), len(settings)
    if n == 0 or k == 0:
        return [[] for _ in settings]
    if prompts_of is None:
        prompts_of = [range(n)] * k
    if len(prompts_of) != k:
        raise ValueError(f"prompts_of has {len(prompts_of)} entries for {k} settings")
    wanted = {si * n + q for si, qs in enumerate(prompts_of) for q in qs}
    enc = [encode(lm.tokenizer, t) for t in prompt_texts]
    configs = [(layer, v, float(coef), si * n + q) for si, s in enumerate(settings) if s
               for layer, v, coef in s for q in dict.fromkeys(prompts_of[si])]
    hook = PerSampleSteering(lm.model, configs, batch_size=n * k, component=component) if configs else None
    n_layers = lm.n_layers
    branch = [min((layer for layer, _, _ in s), default=n_layers) if s else n_layers for s in settings]
    share = share_prefill and uniform_attention(lm.model)

    def run(rows: list[int]) -> list[Generation]:
        prompts = list(dict.fromkeys(r % n for r in rows))
        ids, mask = pad_left([enc[q] for q in prompts], pad_id_of(lm.tokenizer), lm.device)
        where = {q: i for i, q in enumerate(prompts)}
        pick = torch.tensor([where[r % n] for r in rows], device=ids.device)
        cache = None
        if share and ids.shape[1] > 1:
            cache = shared_prompt_cache(lm, ids, mask, pick, [branch[r // n] for r in rows], hook, rows)
        with hook if hook is not None else nullcontext(), hook.rows(rows) if hook is not None else nullcontext():
            return generate_padded(lm, ids[pick], mask[pick], max_new_tokens=gen.max_new_tokens,
                                   do_sample=gen.do_sample, temperature=gen.temperature, top_p=gen.top_p,
                                   seed=seed, past_key_values=cache)

    texts: list[str] = [""] * (n * k)
    for rows in row_batches(enc, k, gen.batch_size, wanted):
        for r, g in zip(rows, run_halving(run, rows), strict=True):
            texts[r] = g.text
    return [[texts[si * n + q] for q in prompts_of[si]] for si in range(k)]


def row_batches(enc: Sequence[Encoded], n_settings: int, batch_size: int,
                wanted: Collection[int] | None = None) -> list[list[int]]:
    """Row ids (setting * n_prompts + prompt) in batches of <= batch_size: prompts longest first, and all
    settings of a prompt in the same batch where batch_size allows, so they can share its prefill.
    `wanted`: the row ids to generate (None: every setting x prompt)."""
    n = len(enc)
    order = sorted(range(n), key=lambda q: (-enc[q].seq_len, q))
    return group_batches([[si * n + q for si in range(n_settings) if wanted is None or si * n + q in wanted]
                          for q in order], batch_size)


@torch.inference_mode()
def shared_prompt_cache(lm: LoadedModel, ids: Tensor, mask: Tensor, pick: Tensor, row_branch: Sequence[int],
                        hook: PerSampleSteering | None, rows: Sequence[int]) -> object:
    """KV cache of every row's prompt minus its last column, computing each layer below a row's branch layer
    once per prompt.

    ids/mask [P, S]: the distinct left-padded prompts; pick [R]: each row's prompt; row_branch[i]: the
    shallowest layer row i steers (n_layers: unsteered); rows: the rows' ids in `hook`. Returns a
    transformers DynamicCache over [R, S - 1] in row order.
    """
    from transformers import DynamicCache

    n_layers = lm.n_layers
    pre_ids, pre_mask = ids[:, :-1], mask[:, :-1]
    pos = position_ids_of(pre_mask)  # as generate numbers a left-padded prompt (pad columns aside)
    shared: dict[int, tuple[Tensor, Tensor]] = {}  # layer -> (keys, values) of the P prompts
    parts: list[tuple[list[int], int, dict[int, tuple[Tensor, Tensor]]]] = []  # (rows, branch layer, own kv)
    hidden: Tensor | None = None
    start = 0
    for b in sorted(set(row_branch)):
        if b > start:
            hidden, kv = run_layers(lm, start, b, pre_ids, pre_mask, pos, hidden)
            shared.update(kv)
            start = b
        members = [i for i, rb in enumerate(row_branch) if rb == b]
        own: dict[int, tuple[Tensor, Tensor]] = {}
        if b < n_layers:
            sel = pick[members]
            assert hook is not None, "a row branches below the last layer, so some setting steers"
            with hook, hook.rows([rows[i] for i in members]):
                _, own = run_layers(lm, b, n_layers, pre_ids[sel], pre_mask[sel], pos[sel],
                                     None if hidden is None else hidden[sel])
        parts.append((members, b, own))
    order = torch.tensor([i for members, _, _ in parts for i in members], device=ids.device)
    inverse = torch.argsort(order)
    layers = []
    for layer in range(n_layers):
        keys, values = [], []
        for members, b, own in parts:
            if layer < b:
                k, v = shared[layer]
                sel = pick[members]
                keys.append(k[sel])
                values.append(v[sel])
            else:
                k, v = own[layer]
                keys.append(k)
                values.append(v)
        layers.append((torch.cat(keys)[inverse], torch.cat(values)[inverse]))
    return DynamicCache(ddp_cache_data=layers, config=lm.model.config)
