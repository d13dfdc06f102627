"""What every scorer takes and returns, so pipelines never care which judge is behind it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from traitlab.errors import TraitlabError


@dataclass(frozen=True)
class ScoreRequest:
    """One response to judge. `eval_prompt` is the trait's inline judge prompt (steering.json), if any."""

    question: str
    response: str
    trait: str
    definition: str
    eval_prompt: str | None = None


@dataclass
class JudgeScore:
    """Scores in [0, 100], or None when the judge gave no usable answer (not scorable, not zero).

    `raw` holds what each score was computed from (top logprobs, weights, cache hits) for auditing;
    it never holds credentials.
    """

    trait: float | None
    coherence: float | None
    relevance: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Scorer(Protocol):
    def score(self, requests: Sequence[ScoreRequest]) -> list[JudgeScore]: ...


def validate_scorer(scorer: Scorer) -> None:
    """Fail fast (before any steering model loads) if the scorer cannot work: missing key, dead server."""
    check = getattr(scorer, "validate", None)
    if callable(check):
        check()


class JudgeError(TraitlabError):
    """The judge rejected a request in a way retrying cannot fix (bad auth, bad request, unknown model)."""


class JudgeUnavailable(TraitlabError):
    """The judge could not be reached after all retries; a study should stop cleanly and resume later."""
