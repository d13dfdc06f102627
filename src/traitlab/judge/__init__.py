"""Scorers: LLM judges (openai, openai-compatible, in-process HF) and cheap scorers, behind one protocol.

Heavy imports (openai, transformers) happen only when a backend is built.
"""

from traitlab.judge.aggregate import logprob_score
from traitlab.judge.base import (
    JudgeError,
    JudgeScore,
    JudgeUnavailable,
    Scorer,
    ScoreRequest,
    validate_scorer,
)
from traitlab.judge.factory import BACKENDS, make_judge

__all__ = [
    "BACKENDS",
    "JudgeError",
    "JudgeScore",
    "JudgeUnavailable",
    "ScoreRequest",
    "Scorer",
    "logprob_score",
    "make_judge",
    "validate_scorer",
]
