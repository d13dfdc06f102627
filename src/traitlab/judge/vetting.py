"""Response vetting: judge each generated response for the trait and drop those that do not show their side.

A positive generated under "be sycophantic" that comes out honest, or a negative that comes out sycophantic,
teaches the vector the wrong thing. The judge scores every GENERATED response's trait (0-100); a positive
below `positive_min` or a negative above `negative_max` is dropped, and on paired data its partner goes
with it so the pairs stay aligned. Responses the dataset provides are kept as written (the author vouched
for them), and a response the judge could not score (None) is kept and counted, never treated as 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from traitlab.errors import ConfigError
from traitlab.judge.base import Scorer, ScoreRequest

log = logging.getLogger(__name__)

REAL_JUDGES = ("openai", "openai_compatible")
SIDES = ("pos", "neg")
_WARNED: set[str] = set()


def vetting_enabled(enabled: Any, backend: str) -> bool:
    """`auto` means on with a real judge and off with the in-process one; say so when that choice is odd."""
    if isinstance(enabled, str) and enabled.lower() == "auto":
        return backend in REAL_JUDGES
    if not isinstance(enabled, bool):
        raise ConfigError("extraction.vetting.enabled", f"{enabled!r}: expected auto, true or false")
    if enabled and backend == "perplexity":  # it would leave every response unscored, so kept: vetting nothing
        raise ConfigError("extraction.vetting", "judge=perplexity scores coherence only, not the trait; vet with "
                                                "judge=openai or judge=openai_compatible, or set "
                                                "extraction.vetting.enabled=false")
    if enabled and backend not in REAL_JUDGES and backend not in _WARNED:
        _WARNED.add(backend)  # once per process: a job asks several times (checks, cache key, the vetting itself)
        log.warning("response vetting with the %s judge: the embedded 135M model cannot tell whether a response "
                    "shows a trait (its scores are close to noise), so this drops responses nearly at random; "
                    "use judge=openai or judge=openai_compatible for vetting that means something", backend)
    return enabled


def check_thresholds(positive_min: float, negative_max: float) -> None:
    for key, v in (("positive_min", positive_min), ("negative_max", negative_max)):
        if not 0.0 <= v <= 100.0:
            raise ConfigError(f"extraction.vetting.{key}", f"{v} is not in 0..100 (judge scores are 0-100)")


@dataclass
class VettingOutcome:
    """Which rows stay, the counts to log (`n_vetted_*`), and one row per judged response for the tables."""

    keep_pos: list[int]
    keep_neg: list[int]
    counts: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dropped(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if not r["kept"]]


def vet_scores(pos_scores: Sequence[float | None], neg_scores: Sequence[float | None], *,
               pos_judged: Sequence[bool], neg_judged: Sequence[bool], paired: bool,
               positive_min: float, negative_max: float) -> VettingOutcome:
    """The drop rule on known scores. `*_judged[i]` says row i was generated (so judged); other rows stay.

    Counts: n_vetted_{side} judged, n_vetted_unscored_{side} (no score: kept), n_vetted_failed_{side} (own
    score on the wrong side of its threshold), n_vetted_dropped_{side} (failed, or removed with its pair),
    n_vetted_kept_{side} (rows left, provided ones included).
    """
    if paired and len(pos_scores) != len(neg_scores):
        raise ValueError(f"paired vetting needs equal counts, got {len(pos_scores)} and {len(neg_scores)}")
    scores = {"pos": list(pos_scores), "neg": list(neg_scores)}
    judged = {"pos": list(pos_judged), "neg": list(neg_judged)}

    def fails(side: str, i: int) -> bool:
        s = scores[side][i]
        if not judged[side][i] or s is None:
            return False
        return s < positive_min if side == "pos" else s > negative_max

    failed = {side: {i for i in range(len(scores[side])) if fails(side, i)} for side in SIDES}
    dropped = {side: set(failed[side]) for side in SIDES}
    if paired:  # a pair goes as a whole
        both = failed["pos"] | failed["neg"]
        dropped = {"pos": set(both), "neg": set(both)}
    counts: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for side in SIDES:
        n = len(scores[side])
        counts[f"n_vetted_{side}"] = sum(judged[side])
        counts[f"n_vetted_unscored_{side}"] = sum(1 for i in range(n) if judged[side][i] and scores[side][i] is None)
        counts[f"n_vetted_failed_{side}"] = len(failed[side])
        counts[f"n_vetted_dropped_{side}"] = len(dropped[side])
        counts[f"n_vetted_kept_{side}"] = n - len(dropped[side])
        for i in range(n):
            if not judged[side][i] and i not in dropped[side]:
                continue
            reason = ("" if i not in dropped[side] else
                      "score below positive_min" if i in failed[side] and side == "pos" else
                      "score above negative_max" if i in failed[side] else "its pair was dropped")
            rows.append({"polarity": "positive" if side == "pos" else "negative", "row": i,
                         "score": scores[side][i], "judged": judged[side][i], "kept": i not in dropped[side],
                         "reason": reason})
    keep = {side: [i for i in range(len(scores[side])) if i not in dropped[side]] for side in SIDES}
    return VettingOutcome(keep["pos"], keep["neg"], counts, rows)


def trait_scores(judge: Scorer, prompts: Sequence[str], responses: Sequence[str], *, trait: str, definition: str,
                 eval_prompt: str | None = None) -> list[float | None]:
    """The judge's trait score (0-100, None when unscorable) of each response to its prompt."""
    if not prompts:
        return []
    reqs = [ScoreRequest(question=p, response=r, trait=trait, definition=definition, eval_prompt=eval_prompt)
            for p, r in zip(prompts, responses, strict=True)]
    return [s.trait for s in judge.score(reqs)]
