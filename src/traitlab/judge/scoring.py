"""The one scoring algorithm every LLM backend shares.

render prompt -> next-token top-k logprobs (one output token) -> `logprob_score` -> 0-100.

Backends only differ in how they get the logprobs (`LogprobSource`). The scale is 0..`scale_max`:
100 when the judge's tokenizer has one token per integer up to 100 (OpenAI, Llama-3), 9 when it
splits numbers into digits (SmolLM2, Qwen, Mistral): there the first token of "85" is "8", so asking
for 0-100 and reading one token would silently score everything 0-9. Asking for one digit keeps the
single-token read exact; scores are then rescaled to 0-100 so thresholds (coherence >= 77) mean the
same for every judge.

The scale is detected wherever another model may answer (a local model's tokenizer, a server's tokenize
endpoint; only OpenAI's own API is known to be 0-100) and fails clearly when it cannot be known. Once known
it is stored in the judge cache beside the logprobs (keyed by backend, model and server), so re-scoring from
the cache needs neither the judge model nor its server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from traitlab.errors import ConfigError
from traitlab.judge.aggregate import integer_weights, logprob_score
from traitlab.judge.base import JudgeScore, ScoreRequest
from traitlab.judge.cache import ScoreCache, cache_key, scale_key
from traitlab.judge.prompts import PromptTemplate, resolve_template

log = logging.getLogger(__name__)

# Relevance rule: an answer that is fluent but about something else is not a coherent answer to the
# question (steering often derails a reply into an unrelated topic). When the relevance judge says the
# answer is off-topic (relevance < RELEVANCE_THRESHOLD), its coherence is capped at OFF_TOPIC_COHERENCE_CAP,
# which is below the default steering threshold (77), so such a coefficient never counts as coherent.
RELEVANCE_THRESHOLD = 50.0
OFF_TOPIC_COHERENCE_CAP = 50.0

Logprobs = dict[str, float]


class LogprobSource(Protocol):
    """Where next-token logprobs come from. `backend` and `model_id` key the cache."""

    backend: str

    @property
    def model_id(self) -> str: ...

    @property
    def scale_max(self) -> int: ...

    def validate(self) -> None: ...

    def next_token_logprobs(
        self, prompts: Sequence[str], top_k: int, on_result: Callable[[int, Logprobs | None], None] | None = None
    ) -> list[Logprobs | None]:
        """Top-k next-token logprobs per prompt; None for a reply without parseable logprobs."""
        ...


def apply_relevance_rule(coherence: float | None, relevance: float | None) -> tuple[float | None, bool]:
    """(coherence after the relevance cap, whether it was capped); see RELEVANCE_THRESHOLD above."""
    if coherence is None or relevance is None or relevance >= RELEVANCE_THRESHOLD:
        return coherence, False
    return min(coherence, OFF_TOPIC_COHERENCE_CAP), coherence > OFF_TOPIC_COHERENCE_CAP


@dataclass(frozen=True)
class JudgePrompt:
    """One rendered judge prompt: which score it yields, its cache key, and the template it came from."""

    kind: str  # trait | coherence | relevance
    prompt: str
    key: str
    source: str


class OneTokenJudge:
    """What every rubric shares: render prompts, fetch logprobs through the cache, score 0-100 per prompt.

    A rubric (LogprobJudge, AxBenchJudge) says which prompts it asks per request (`prompts_for`) and how the
    per-kind scores become one JudgeScore.
    """

    def __init__(self, source: LogprobSource, *, min_weight: float = 0.25, top_logprobs: int = 20,
                 cache: ScoreCache | None = None, prompts_dir: str | Path | None = None):
        if not 0.0 <= min_weight <= 1.0:
            raise ConfigError("judge.min_weight", f"{min_weight} is not in [0, 1]")
        if not 1 <= top_logprobs <= 20:
            raise ConfigError("judge.top_logprobs", f"{top_logprobs} is not in 1..20 (the OpenAI API maximum)")
        self.source = source
        self.min_weight = min_weight
        self.top_logprobs = top_logprobs
        self.cache = cache if cache is not None else ScoreCache(None)
        self.prompts_dir = prompts_dir
        self._scale: int | None = None

    def validate(self) -> None:
        self.source.validate()

    @property
    def scale_max(self) -> int:
        """The judge's answer scale: set, stored in the cache by an earlier run, or detected (then stored)."""
        if self._scale is None:
            setting = getattr(self.source, "scale_setting", "auto")
            if setting != "auto":
                self._scale = int(setting)
            else:
                key = scale_key(self.source.backend, self.source.model_id, getattr(self.source, "base_url", None))
                stored = self.cache.get(key)
                if stored in (9, 100):
                    self._scale = int(stored)
                else:
                    self._scale = int(self.source.scale_max)
                    self.cache.put(key, self._scale)
        return self._scale

    def templates_for(self, req: ScoreRequest) -> list[tuple[str, PromptTemplate]]:
        """(kind, template) pairs asked about one request."""
        raise NotImplementedError

    def prompts_for(self, req: ScoreRequest, scale_max: int | None = None) -> list[JudgePrompt]:
        """The rendered prompts (and cache keys) this judge asks about one request."""
        scale_max = self.scale_max if scale_max is None else scale_max
        values = dict(trait=req.trait, definition=req.definition, question=req.question, answer=req.response,
                      max_score=scale_max)
        jobs = []
        for kind, tpl in self.templates_for(req):
            prompt = tpl.render(**values)
            key = cache_key(self.source.backend, self.source.model_id, prompt, top_logprobs=self.top_logprobs)
            jobs.append(JudgePrompt(kind, prompt, key, tpl.source))
        return jobs

    def fetch(self, prompts_by_key: dict[str, str]) -> tuple[dict[str, Logprobs | None], set[str]]:
        """Logprobs per key from the cache, asking the source only for misses; returns (values, hit keys)."""
        found = self.cache.get_many(prompts_by_key)
        hits = set(found)
        missing = [k for k in prompts_by_key if k not in found]
        if missing:
            def store(i: int, value: Logprobs | None) -> None:
                # Unparseable replies are not cached: a later re-score should ask again.
                if value is not None:
                    self.cache.put(missing[i], value)

            answers = self.source.next_token_logprobs(
                [prompts_by_key[k] for k in missing], self.top_logprobs, on_result=store
            )
            found.update(zip(missing, answers, strict=True))
        return found, hits

    def _score_one(self, lp: Logprobs | None, scale_max: int) -> float | None:
        if lp is None:
            return None
        value = logprob_score(lp, 0, scale_max, self.min_weight)
        return None if value is None else value * 100.0 / scale_max

    def score_kinds(self, requests: Sequence[ScoreRequest]) -> list[tuple[dict[str, float | None], dict[str, Any]]]:
        """Per request: {kind: 0-100 score or None} and the raw record of how each score was computed."""
        if not requests:
            return []
        scale_max = self.scale_max
        per_request = [self.prompts_for(r, scale_max) for r in requests]
        prompts_by_key = {j.key: j.prompt for jobs in per_request for j in jobs}
        found, hits = self.fetch(prompts_by_key)
        out = []
        for jobs in per_request:
            scores: dict[str, float | None] = {}
            raw: dict[str, Any] = {"backend": self.source.backend, "model": self.source.model_id,
                                   "scale_max": scale_max, "min_weight": self.min_weight}
            for j in jobs:
                lp = found.get(j.key)
                scores[j.kind] = self._score_one(lp, scale_max)
                weights = integer_weights(lp, 0, scale_max) if lp else {}
                raw[j.kind] = {
                    "score": scores[j.kind],
                    "top_logprobs": lp,
                    "integer_mass": sum(weights.values()),
                    "cached": j.key in hits,
                    "key": j.key,
                    "prompt_source": j.source,
                }
            out.append((scores, raw))
        return out


class LogprobJudge(OneTokenJudge):
    """A Scorer: trait score + coherence (+ relevance check) from one-token judge replies, cached."""

    def __init__(
        self,
        source: LogprobSource,
        *,
        min_weight: float = 0.25,
        top_logprobs: int = 20,
        relevance_check: bool = False,
        cache: ScoreCache | None = None,
        prompts_dir: str | Path | None = None,
        trait_prompt_path: str | Path | None = None,
    ):
        super().__init__(source, min_weight=min_weight, top_logprobs=top_logprobs, cache=cache,
                         prompts_dir=prompts_dir)
        self.relevance_check = relevance_check
        self.trait_prompt_path = trait_prompt_path
        # Load and check the shared templates now so a bad prompt file fails before any model loads.
        self._coherence = resolve_template("coherence", prompts_dir=prompts_dir)
        self._relevance = resolve_template("relevance", prompts_dir=prompts_dir) if relevance_check else None
        self.check_trait_prompt(None)

    def check_trait_prompt(self, eval_prompt: str | None, trait: str = "") -> PromptTemplate:
        """Resolve (and so check) the trait prompt a request would use; call it before loading models."""
        return resolve_template("trait_score", eval_prompt=eval_prompt, trait_prompt_path=self.trait_prompt_path,
                                prompts_dir=self.prompts_dir, trait=trait)

    def templates_for(self, req: ScoreRequest) -> list[tuple[str, PromptTemplate]]:
        templates = [("trait", self.check_trait_prompt(req.eval_prompt, req.trait)), ("coherence", self._coherence)]
        if self._relevance is not None:
            templates.append(("relevance", self._relevance))
        return templates

    def score(self, requests: Sequence[ScoreRequest]) -> list[JudgeScore]:
        out = []
        for scores, raw in self.score_kinds(requests):
            coherence, capped = apply_relevance_rule(scores["coherence"], scores.get("relevance"))
            raw["coherence_capped_off_topic"] = capped
            out.append(JudgeScore(trait=scores["trait"], coherence=coherence, relevance=scores.get("relevance"),
                                  raw=raw))
        return out
