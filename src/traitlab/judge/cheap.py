"""Cheap coherence without an LLM judge: how surprised the unsteered model is by the response.

Steering that breaks a model produces text the unsteered model finds improbable (word salad, broken
words, topic jumps), so perplexity under the unsteered model is a judge-free coherence signal. It is
blind to one failure, degenerate repetition ("the the the"), which is *more* predictable; that is why
`CombinedScorer` takes the min with the LLM judge's coherence by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from traitlab.errors import ConfigError
from traitlab.judge.base import JudgeScore, Scorer, ScoreRequest
from traitlab.judge.cache import ScoreCache, cache_key

# Mapping constants, measured on SmolLM2-135M-Instruct (perplexity of the response given its question):
# its own greedy answers 1.4-2.4, short human-written answers 4.7-21, the same answers with words
# shuffled 700-5600, random letter strings 10k-17k, "the the the ..." 15-80.
# score = 100 * clamp((log PPL_MAX - log ppl) / (log PPL_MAX - log PPL_MIN), 0, 1), so on a log scale
# human text lands at ~78-100, shuffled words at ~0-22, and ppl ~120 at 50.
PPL_MIN = 5.0  # at or below: fully coherent (100)
PPL_MAX = 3000.0  # at or above: incoherent (0)
DEFAULT_MODEL = "smollm2_135m"


def perplexity_to_coherence(ppl: float, ppl_min: float = PPL_MIN, ppl_max: float = PPL_MAX) -> float:
    """Map perplexity to 0-100 on a log scale (see the constants above)."""
    if not 0 < ppl_min < ppl_max:
        raise ConfigError("judge.ppl_min/ppl_max", f"need 0 < ppl_min < ppl_max, got {ppl_min}, {ppl_max}")
    frac = (math.log(ppl_max) - math.log(ppl)) / (math.log(ppl_max) - math.log(ppl_min))
    return 100.0 * min(1.0, max(0.0, frac))


class PerplexityCoherence:
    """A Scorer giving coherence only (trait=None), from the response's perplexity given its question."""

    backend = "perplexity"

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        *,
        ppl_min: float = PPL_MIN,
        ppl_max: float = PPL_MAX,
        batch_size: int = 16,
        cache: ScoreCache | None = None,
    ):
        if not 0 < ppl_min < ppl_max:
            raise ConfigError("judge.ppl_min/ppl_max", f"need 0 < ppl_min < ppl_max, got {ppl_min}, {ppl_max}")
        self._lm = None if isinstance(model, str) else model
        self._name = model if isinstance(model, str) else getattr(model, "name", type(model).__name__)
        self.ppl_min, self.ppl_max = ppl_min, ppl_max
        self.batch_size = batch_size
        self.cache = cache if cache is not None else ScoreCache(None)

    def validate(self) -> None:
        """Nothing to check before loading."""

    def loaded(self) -> Any:
        if self._lm is None:
            from traitlab.models.loading import load_model

            self._lm = load_model(self._name)
        return self._lm

    @torch.inference_mode()
    def _batch_ppl(self, encoded: Sequence[Any]) -> list[float]:
        from traitlab.models.encoding import pad_id_of, padded_inputs

        lm = self.loaded()
        inputs = padded_inputs(encoded, pad_id_of(lm.tokenizer), lm.device)
        ids = inputs["input_ids"]
        logits = lm.model(**inputs, use_cache=False).logits.float()
        # Token t is predicted by position t-1; count only response tokens.
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        width = ids.shape[1]
        out = []
        for row, e in enumerate(encoded):
            start = width - e.seq_len + e.prompt_len  # first response token, in padded coordinates
            resp_nll = nll[row, start - 1:width - 1]
            out.append(float(torch.exp(resp_nll.mean())))
        return out

    def perplexities(self, requests: Sequence[ScoreRequest]) -> list[float | None]:
        """Perplexity of each response given its (chat-formatted) question; None for an empty response."""
        from traitlab.models.batching import run_halving
        from traitlab.models.chat import format_prompt
        from traitlab.models.encoding import encode, length_sorted_batches
        from traitlab.models.identity import identity_of

        model = identity_of(self._lm.spec if self._lm is not None else self._name).key  # not the display name
        keys = [cache_key(self.backend, model, f"{r.question}\x00{r.response}") for r in requests]
        found = self.cache.get_many(keys)
        todo = [i for i, (k, r) in enumerate(zip(keys, requests, strict=True))
                if k not in found and r.response.strip()]
        if todo:
            lm = self.loaded()
            enc = {}
            for i in todo:
                prompt = format_prompt(lm.tokenizer, requests[i].question, use_chat_template=lm.use_chat_template)
                e = encode(lm.tokenizer, prompt, requests[i].response)
                if e.seq_len > e.prompt_len:
                    enc[i] = e
            order = list(enc)
            for batch in length_sorted_batches([enc[i].seq_len for i in order], self.batch_size):
                rows = [order[b] for b in batch]
                ppls = run_halving(lambda idx: self._batch_ppl([enc[i] for i in idx]), rows)
                self.cache.put_many({keys[i]: p for i, p in zip(rows, ppls, strict=True)})
                found.update({keys[i]: p for i, p in zip(rows, ppls, strict=True)})
        return [found.get(k) for k in keys]

    def score(self, requests: Sequence[ScoreRequest]) -> list[JudgeScore]:
        out = []
        for ppl in self.perplexities(requests):
            coh = None if ppl is None else perplexity_to_coherence(ppl, self.ppl_min, self.ppl_max)
            out.append(JudgeScore(trait=None, coherence=coh, raw={"perplexity": ppl, "perplexity_coherence": coh,
                                                                  "ppl_min": self.ppl_min, "ppl_max": self.ppl_max}))
        return out


def combine_coherence(a: float | None, b: float | None, mode: str = "min") -> float | None:
    """min (strict: either signal can veto) or mean; a missing signal defers to the other.

    `perplexity` keeps the perplexity coherence `b` alone: for a judge too small to grade coherence
    (SmolLM2-135M gives ~30/100 to any text), whose trait score is still wanted.
    """
    if mode not in ("min", "mean", "perplexity"):
        raise ConfigError("judge.perplexity_combine", f"'{mode}' is not perplexity, min or mean")
    if a is None or b is None:
        return a if b is None else b
    if mode == "perplexity":
        return b
    return min(a, b) if mode == "min" else (a + b) / 2


class CombinedScorer:
    """Trait score from the LLM judge; coherence = min/mean of judge coherence and perplexity coherence."""

    def __init__(self, judge: Scorer, perplexity: PerplexityCoherence, mode: str = "min"):
        combine_coherence(None, None, mode)  # validate mode now
        self.judge, self.perplexity, self.mode = judge, perplexity, mode

    def validate(self) -> None:
        for part in (self.judge, self.perplexity):
            check = getattr(part, "validate", None)
            if callable(check):
                check()

    def score(self, requests: Sequence[ScoreRequest]) -> list[JudgeScore]:
        judged = self.judge.score(requests)
        ppl = self.perplexity.score(requests)
        out = []
        for j, p in zip(judged, ppl, strict=True):
            raw = dict(j.raw, judge_coherence=j.coherence, perplexity=p.raw, coherence_combine=self.mode)
            out.append(JudgeScore(trait=j.trait, coherence=combine_coherence(j.coherence, p.coherence, self.mode),
                                  relevance=j.relevance, raw=raw))
        return out
