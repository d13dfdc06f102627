"""AxBench-style judging (judge.rubric=axbench): concept, instruction relevance and fluency, harmonic mean.

AxBench (Wu et al., ICML 2025) rates a steered answer on three things separately, because steering can
raise one by wrecking another: is the concept there, does the answer still do what was asked, is it
fluent. The three are combined by their harmonic mean, which is 0 as soon as any one is 0: an answer
full of the concept but ignoring the question (or unreadable) scores nothing.

Each score is 0-100 from one judge token, exactly like the trait score (probability-weighted mean over
the judge's top integer tokens, `None` below the min-weight gate), from the prompts in
`datasets/llm_judge/{concept,instruction,fluency}/default.txt` (or `judge.prompts_dir`).

As a Scorer it fills JudgeScore so the steering search needs nothing new: `trait` = the harmonic mean
(the objective the search maximises), `coherence` = fluency (the constraint), `relevance` = instruction
relevance; `raw["axbench"]` keeps all three and the mean. The harmonic mean rewards the concept being
present, so it only makes sense for steering toward a trait (steering.json direction positive).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from traitlab.judge.base import JudgeScore, ScoreRequest
from traitlab.judge.cache import ScoreCache
from traitlab.judge.prompts import AXBENCH_KINDS, PromptTemplate, resolve_template
from traitlab.judge.scoring import LogprobSource, OneTokenJudge


def harmonic_mean(scores: Sequence[float | None]) -> float | None:
    """Harmonic mean of non-negative scores; 0 when any is 0, None when any is missing (or none given)."""
    if not scores or any(s is None for s in scores):
        return None
    values = [float(s) for s in scores]  # type: ignore[arg-type]
    bad = [v for v in values if v < 0 or math.isnan(v)]
    if bad:
        raise ValueError(f"harmonic_mean: scores must be >= 0, got {bad[0]}")
    if any(v == 0.0 for v in values):
        return 0.0
    return len(values) / math.fsum(1.0 / v for v in values)


class AxBenchJudge(OneTokenJudge):
    """A Scorer rating concept, instruction relevance and fluency separately (see the module docstring)."""

    rubric = "axbench"

    def __init__(self, source: LogprobSource, *, min_weight: float = 0.25, top_logprobs: int = 20,
                 cache: ScoreCache | None = None, prompts_dir: str | Path | None = None):
        super().__init__(source, min_weight=min_weight, top_logprobs=top_logprobs, cache=cache,
                         prompts_dir=prompts_dir)
        # Resolved now so a missing or malformed prompt file fails before any model loads.
        self._templates = {kind: resolve_template(kind, prompts_dir=prompts_dir) for kind in AXBENCH_KINDS}

    def check_trait_prompt(self, eval_prompt: str | None, trait: str = "") -> PromptTemplate:
        """The concept prompt (a trait's inline eval_prompt is a trait-score rubric and is not used here)."""
        return self._templates["concept"]

    def templates_for(self, req: ScoreRequest) -> list[tuple[str, PromptTemplate]]:
        return [(kind, self._templates[kind]) for kind in AXBENCH_KINDS]

    def score(self, requests: Sequence[ScoreRequest]) -> list[JudgeScore]:
        out = []
        for scores, raw in self.score_kinds(requests):
            combined = harmonic_mean([scores[k] for k in AXBENCH_KINDS])
            raw["axbench"] = {**{k: scores[k] for k in AXBENCH_KINDS}, "harmonic_mean": combined}
            out.append(JudgeScore(trait=combined, coherence=scores["fluency"], relevance=scores["instruction"],
                                  raw=raw))
        return out
