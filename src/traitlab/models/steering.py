"""Steered generation for many settings at once, and the activation scale a coefficient is measured in."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from traitlab.config.schema import GenerationConfig
from traitlab.core.hooks import MultiLayerCapture, PerSampleSteering
from traitlab.models.encoding import encode, length_sorted_batches, pad_id_of, padded_inputs
from traitlab.models.generation import HookFactory, generate_texts
from traitlab.models.loading import LoadedModel

Setting = Sequence[tuple[int, torch.Tensor, float]] | None


def _per_row(hook: PerSampleSteering) -> HookFactory:
    @contextmanager
    def factory(rows: list[int]) -> Iterator[None]:
        with hook, hook.rows(rows):  # rows: the original row indices of this (possibly OOM-split) sub-batch
            yield

    return factory


def generate_steered(lm: LoadedModel, prompt_texts: Sequence[str], settings: Sequence[Setting], *,
                     component: str = "residual", gen: GenerationConfig | None = None, seed: int = 0) -> list[list[str]]:
    """Responses [setting][prompt] from ONE batched generate: row = setting x prompt, each row steered by its
    setting's (layer, vector, coefficient) list (None: unsteered) through PerSampleSteering."""
    gen = gen or GenerationConfig()
    n = len(prompt_texts)
    texts = [t for _ in settings for t in prompt_texts]
    configs = [(layer, v, float(coef), si * n + q) for si, s in enumerate(settings) if s
               for layer, v, coef in s for q in range(n)]
    hooks = _per_row(PerSampleSteering(lm.model, configs, batch_size=len(texts), component=component)) \
        if configs else None
    gens = generate_texts(lm, texts, max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size, seed=seed,
                          do_sample=gen.do_sample, temperature=gen.temperature, top_p=gen.top_p, hooks=hooks,
                          desc=None)
    return [[g.text for g in gens[si * n:(si + 1) * n]] for si in range(len(settings))]


@torch.inference_mode()
def activation_norms(lm: LoadedModel, prompt_texts: Sequence[str], layers: Sequence[int],
                     component: str = "residual") -> dict[int, float]:
    """Median per-token ||h|| of the component at each layer over the prompts' real tokens.

    The median, because the first token of many models carries a massive activation (SmolLM2: ~25000
    against ~150 for the rest) that a mean would let set the steering scale.
    """
    enc = [encode(lm.tokenizer, t) for t in prompt_texts]
    norms: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for rows in length_sorted_batches([e.seq_len for e in enc], 16):
        inputs = padded_inputs([enc[i] for i in rows], pad_id_of(lm.tokenizer), lm.device)
        cap = MultiLayerCapture(lm.model, layers, component=component, pool="none", stop_after_last=True)
        with cap:
            lm.model(**inputs, use_cache=False)
        real = inputs["attention_mask"].bool().cpu()
        for layer in layers:
            norms[layer].append(cap.get(layer).cpu().norm(dim=-1)[real])
    return {layer: float(torch.cat(v).median()) for layer, v in norms.items()}
