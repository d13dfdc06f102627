"""What the steering stage measures a steered model by, and every delta with its paired 95% interval.

Measures (each a delta against the unsteered model on the same items, oriented by the trait's direction so
that positive always means "more of the trait"):

- propensity: per held-out pair, mean log-prob per token of the positive response minus the negative one,
  given the prompt without any system prompt (Tan et al. 2024); forward passes only. Items = pairs.
- trait: the LLM judge's trait score of the answers to the steering questions (when the judge has one).
- the text scorer (steering.scorer: sentiment, refusal, a callable) on the same answers. Items = questions.
- coherence (the constraint, not a delta): the judge group's coherence, perplexity by default.
- capability (steering.capability, optional): multiple-choice accuracy on the same items in every condition,
  forward passes only; its change is a paired difference of proportions (Newcombe), and
  steering.max_capability_drop makes it a second constraint.

Deltas compare only items scored in both conditions (a question the judge could not score in one of them
is left out of both means), report how many were used, and carry a paired bootstrap interval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from traitlab.config.schema import GenerationConfig
from traitlab.core.stats import Interval, bootstrap_mean
from traitlab.data import Example, TraitDataset
from traitlab.data import splits as data_splits
from traitlab.errors import ConfigError
from traitlab.judge.text_scorers import TextScorer
from traitlab.models.chat import format_prompt
from traitlab.models.loading import LoadedModel
from traitlab.models.multiple_choice import ChoiceScores, score_choices
from traitlab.models.propensity import ResponsePair, propensity, propensity_groups
from traitlab.models.responses import responses_for
from traitlab.models.steered_generation import generate_steered_shared
from traitlab.models.steering import Setting

log = logging.getLogger(__name__)

PROPENSITY, TRAIT, CAPABILITY = "propensity", "trait", "capability"


@dataclass
class Sample:
    """One condition (a baseline or a trial): answers and scores per question, propensity per held-out pair.
    None / NaN mark what could not be scored; lists are empty for a measure that is not configured."""

    responses: list[str]
    coherence: list[float | None]
    trait: list[float | None] = field(default_factory=list)
    scorer: list[float | None] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    capability: ChoiceScores | None = None  # multiple-choice results when steering.capability is on

    @property
    def mean_coherence(self) -> float | None:
        got = [c for c in self.coherence if c is not None]
        return sum(got) / len(got) if got else None

    def items(self, measure: str, scorer_name: str | None) -> list[float]:
        """Per-item values of a measure, NaN where unscored."""
        values: Sequence[float | None] = (self.margins if measure == PROPENSITY else self.trait if measure == TRAIT
                                          else self.scorer if measure == scorer_name else [])
        return [float("nan") if v is None else float(v) for v in values]


@dataclass
class Delta:
    """A measure's delta on the items scored in both conditions; lost = items the baseline scored and this
    condition did not (a trial that lost questions is marked, not silently averaged over fewer)."""

    interval: Interval
    treated: float   # mean of the treated condition over the items used
    baseline: float  # mean of the baseline over the same items
    lost: int

    def as_dict(self) -> dict[str, float | int]:
        iv = self.interval
        return {"delta": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n, "treated": self.treated,
                "baseline": self.baseline, "lost": self.lost}


def paired_delta(treated: Sequence[float], baseline: Sequence[float], direction: int, *, seed: int,
                 n_boot: int) -> Delta:
    """direction * (treated - baseline) over the items finite in both, with a paired bootstrap interval."""
    if len(treated) != len(baseline):
        raise ValueError(f"paired_delta: {len(treated)} treated items but {len(baseline)} baseline items")
    both = [(t, b) for t, b in zip(treated, baseline, strict=True) if math.isfinite(t) and math.isfinite(b)]
    lost = sum(1 for t, b in zip(treated, baseline, strict=True) if math.isfinite(b) and not math.isfinite(t))
    iv = bootstrap_mean([direction * (t - b) for t, b in both], seed=seed, n_boot=n_boot)
    n = len(both)
    return Delta(iv, sum(t for t, _ in both) / n if n else float("nan"),
                 sum(b for _, b in both) / n if n else float("nan"), lost)


# ----------------------------------------------------------------------------------------- held-out pairs


def _pairs_of(pos: Sequence[Example], neg: Sequence[Example], by_index: bool, source: str) -> list[tuple]:
    """(positive, negative) examples that share a prompt: line by line when paired, else by prompt text."""
    if by_index and len(pos) == len(neg):
        return [(p, n, source) for p, n in zip(pos, neg, strict=True) if p.prompt == n.prompt]
    first_neg: dict[str, Example] = {}
    for n in neg:
        first_neg.setdefault(n.prompt, n)
    return [(p, first_neg[p.prompt], source) for p in pos if p.prompt in first_neg]


def heldout_examples(trait: TraitDataset, val_split: float, seed: int, *, ood: bool = True,
                     max_pairs: int | None = None) -> list[tuple[Example, Example, str]]:
    """The pairs extraction held out (its val split, same function and seed), then OOD pairs; only pairs whose
    two sides share a prompt, since propensity compares two answers to one prompt."""
    split = data_splits.trait_split(trait, val_split, seed)
    val_pos = [trait.positive[int(i)] for i in split["val_pos"]]
    val_neg = [trait.negative[int(i)] for i in split["val_neg"]]
    out = _pairs_of(val_pos, val_neg, trait.paired, "val")
    if ood and trait.ood_positive and trait.ood_negative:
        out += _pairs_of(trait.ood_positive, trait.ood_negative, True, "ood")
    return out[:max_pairs] if max_pairs is not None else out


def heldout_pairs(lm: LoadedModel, examples: Sequence[tuple[Example, Example, str]], seed: int) -> list[ResponsePair]:
    """ResponsePairs with the data's responses, generated (greedy, cached, each side under its own system
    prompt, as extraction does) where the data has none."""
    pos = [p for p, _, _ in examples]
    neg = [n for _, n, _ in examples]
    gen = GenerationConfig()
    pos_r = responses_for(lm, pos, gen, seed, use_provided=True, desc="held-out positive") if pos else []
    neg_r = responses_for(lm, neg, gen, seed, use_provided=True, desc="held-out negative") if neg else []
    return [ResponsePair(p.prompt, pr, nr, src) for (p, _, src), pr, nr in zip(examples, pos_r, neg_r, strict=True)]


# ------------------------------------------------------------------------------------------- measuring


@dataclass
class Measurer:
    """Measures conditions of one steering run: answers to the questions (judged, scored) and propensity."""

    lm: LoadedModel
    trait: TraitDataset
    questions: list[str]
    judge: Any
    scorer: TextScorer | None
    pairs: list[ResponsePair]
    gen: GenerationConfig
    component: str = "residual"
    seed: int = 42
    propensity_batch: int = 16
    max_response_tokens: int | None = None
    choice_items: list[Any] = field(default_factory=list)  # capability items (empty: not measured)
    choice_scoring: str = "text"
    choice_batch: int = 32

    def capability(self, settings: Sequence[Setting], system_prompt: str | None = None) -> list[ChoiceScores | None]:
        """Multiple-choice results per setting, every setting's rows in shared forward batches."""
        if not self.choice_items:
            return [None for _ in settings]
        return list(score_choices(self.lm, self.choice_items, settings, scoring=self.choice_scoring,
                                  system_prompt=system_prompt, component=self.component,
                                  batch_size=self.choice_batch, desc=None))

    def judged(self, questions: Sequence[str], responses: Sequence[str]) -> tuple[list, list]:
        """(trait, coherence) per answer; called outside every hook context (a judge may be the same model)."""
        from traitlab.judge import ScoreRequest

        spec = self.trait.steering
        reqs = [ScoreRequest(q, r, self.trait.name, self.trait.definition or self.trait.name,
                             spec.eval_prompt if spec else None) for q, r in zip(questions, responses, strict=True)]
        scores = self.judge.score(reqs)
        return [s.trait for s in scores], [s.coherence for s in scores]

    def sample(self, responses: list[str], margins: Sequence[float]) -> Sample:
        trait, coherence = self.judged(self.questions, responses)
        scored = self.scorer.scores(responses) if self.scorer is not None else []
        return Sample(responses, coherence, trait, scored, [float(m) for m in margins])

    def propensities(self, settings: Sequence[Setting], system_prompt: str | None = None) -> list[list[float]]:
        if not self.pairs:
            return [[] for _ in settings]
        m = propensity(self.lm, self.pairs, settings, system_prompt=system_prompt, component=self.component,
                       batch_size=self.propensity_batch, max_response_tokens=self.max_response_tokens)
        return m.tolist()

    def baselines(self, prompted_system: str) -> dict[str, Sample]:
        """Unsteered and prompted (the trait's system prompt) answers, from the generation cache, measured the
        same way as every steered condition."""
        qs = self.questions
        examples = [Example(q) for q in qs] + [Example(q, prompted_system) for q in qs]
        responses = responses_for(self.lm, examples, self.gen, self.seed, use_provided=False, desc="baselines")
        plain = self.propensities([None])[0]
        prompted = self.propensities([None], system_prompt=prompted_system)[0]
        out = {"unsteered": self.sample(responses[:len(qs)], plain),
               "prompted": self.sample(responses[len(qs):], prompted)}
        out["unsteered"].capability = self.capability([None])[0]
        out["prompted"].capability = self.capability([None], system_prompt=prompted_system)[0]
        return out

    def steered(self, settings: Sequence[Setting]) -> list[Sample]:
        """Every setting's answers from ONE batched generate and its propensities from shared forward batches;
        the judge and the scorer run after the hooks are gone."""
        return steered_together([(self, settings)])[0]


def steered_together(parts: Sequence[tuple[Measurer, Sequence[Setting]]]) -> list[list[Sample]]:
    """Samples of several measurers' settings (several traits' trials) from ONE generate call over their
    questions (each row its own prompt and steering) and ONE set of propensity forward batches; each
    measurer's judge and scorer then score its own answers. The measurers share the model and settings."""
    if not parts:
        return []
    first = parts[0][0]
    for m, _ in parts[1:]:
        same = (m.lm is first.lm, m.gen == first.gen, m.seed == first.seed, m.component == first.component,
                m.propensity_batch == first.propensity_batch, m.max_response_tokens == first.max_response_tokens)
        if not all(same):
            raise ValueError("steered_together: measurers differ in model, generation, seed, component or "
                             "propensity settings")
    lm = first.lm
    texts: dict[str, int] = {}  # prompt text -> index in the one call (traits may share questions)
    settings: list[Setting] = []
    prompts_of: list[list[int]] = []
    for m, ss in parts:
        idx = [texts.setdefault(format_prompt(lm.tokenizer, q, None, lm.use_chat_template), len(texts))
               for q in m.questions]
        settings += list(ss)
        prompts_of += [idx] * len(ss)
    answers = generate_steered_shared(lm, list(texts), settings, component=first.component, gen=first.gen,
                                      seed=first.seed, prompts_of=prompts_of)
    with_pairs = [(m, ss) for m, ss in parts if m.pairs]
    margins = iter(propensity_groups(lm, [(m.pairs, ss) for m, ss in with_pairs], component=first.component,
                                     batch_size=first.propensity_batch,
                                     max_response_tokens=first.max_response_tokens)) if with_pairs else iter(())
    out: list[list[Sample]] = []
    start = 0
    for m, ss in parts:
        mine = answers[start:start + len(ss)]
        start += len(ss)
        rows = next(margins).tolist() if m.pairs else [[] for _ in ss]
        capability = m.capability(ss)
        flat = [a for rs in mine for a in rs]
        trait, coherence = m.judged(list(m.questions) * len(ss), flat)
        scored = m.scorer.scores(flat) if m.scorer is not None else []
        n = len(m.questions)
        out.append([Sample(mine[i], coherence[i * n:(i + 1) * n], trait[i * n:(i + 1) * n],
                           scored[i * n:(i + 1) * n] if scored else [], rows[i], capability[i])
                    for i in range(len(ss))])
    return out


def measure_names(objective: str, judge_has_trait: bool, scorer: TextScorer | None, has_pairs: bool) -> list[str]:
    """The measures of a run, the objective first."""
    names = [PROPENSITY] if has_pairs else []
    if judge_has_trait:
        names.append(TRAIT)
    if scorer is not None:
        names.append(scorer_measure(scorer))
    key = objective_measure(objective, scorer)
    return [key] + [n for n in names if n != key]


def scorer_measure(scorer: TextScorer) -> str:
    """Metric-safe name of the text scorer's measure: sentiment, refusal, or `scorer` for a callable."""
    return scorer.name if scorer.name in ("sentiment", "refusal") else "scorer"


def objective_measure(objective: str, scorer: TextScorer | None) -> str:
    if objective == "judge":
        return TRAIT
    if objective == "scorer":
        if scorer is None:
            raise ConfigError("steering.scorer", "steering.objective=scorer needs a scorer: sentiment, refusal or "
                                                 "'package.module:function'")
        return scorer_measure(scorer)
    return PROPENSITY


def deltas(sample: Sample, base: Sample, names: Sequence[str], scorer_name: str | None, direction: int, *,
           seed: int, n_boot: int) -> dict[str, Delta]:
    """Every measure's paired delta of `sample` against `base`."""
    return {n: paired_delta(sample.items(n, scorer_name), base.items(n, scorer_name), direction, seed=seed,
                            n_boot=n_boot) for n in names}



def capability_summary(scores: ChoiceScores | None, base: ChoiceScores | None) -> dict[str, float | int] | None:
    """Accuracy with its Wilson 95% interval and, against `base` (same items), the paired change with
    Newcombe's interval; None when capability was not measured."""
    if scores is None:
        return None
    acc = scores.accuracy_interval()
    out: dict[str, float | int] = {"accuracy": acc.mean, "low": acc.low, "high": acc.high, "n": acc.n,
                                   "n_correct": scores.n_correct, "correct_logprob": scores.correct_logprob}
    if base is not None:
        d = scores.change_from(base)
        out.update(delta=d.mean, delta_low=d.low, delta_high=d.high)
    return out
