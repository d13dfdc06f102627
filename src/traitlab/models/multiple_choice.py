"""Capability under steering: multiple-choice accuracy from log-probs, forward passes only (no generation).

Two ways to score an item, both reading log-probs from forward passes:

- ``letter`` (MMLU's standard): the model sees the question, its four lettered options and "Answer:", and
  each option scores log P(its letter) as the next token. A letter can be spelled "A" or " A" as one token,
  and which one a model prefers depends on its chat template, so P(letter) sums the single-token spellings.
  Optional ``rotate``: ask each question four times with the options cyclically shifted and average each
  option's letter log-prob over its four letters. If log P(letter) = content(option) + bias(letter), the
  mean is content(option) + mean(bias): a pure position bias cancels exactly (at 4x the rows).
- ``text`` (the cloze form used for small models): each option scores the summed log-prob of its own text
  as the reply to the question alone. Small models carry no content signal in the letter (measured on
  SmolLM2-135M: letter scoring sits at chance with most of the mass on "A", see README), but they do rank
  option texts.

An item is correct when the correct option strictly outscores the other three (a tie is not correct).

Steering: `settings` is a list of steering settings (each a list of (layer, vector, coefficient), or None
for the unsteered model). Rows are setting x item (x shift or option) and ALL of them run through shared,
length-sorted batches with `PerSampleSteering` giving each row its own setting, so K coefficients cost one
pass over K x N rows instead of K passes, and the layers below the steered one run once per distinct row
(models/row_forward.py). Batches halve on out-of-memory without misassigning rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from traitlab.core.proportions import Interval, accuracy_estimate, paired_accuracy_difference
from traitlab.data.multiple_choice import LETTERS, ChoiceItem
from traitlab.errors import ConfigError, ModelError
from traitlab.models.chat import format_prompt
from traitlab.models.encoding import Encoded, encode
from traitlab.models.loading import LoadedModel
from traitlab.models.row_forward import Setting, steered_rows_forward

SCORINGS = ("letter", "text")
INSTRUCTION = "Answer with the letter of the correct option (A, B, C or D)."
ANSWER_PREFIX = "Answer:"


# ------------------------------------------------------------------------------------------- prompts


def rotated(options: Sequence[str], shift: int) -> list[str]:
    """Options moved `shift` letters down, cyclically: option j is shown under letter (j + shift) % 4."""
    k = len(options)
    return [options[(j - shift) % k] for j in range(k)]


def question_text(item: ChoiceItem, shift: int = 0) -> str:
    """The user turn of letter scoring: question, lettered options (rotated by `shift`), instruction."""
    shown = rotated(item.options, shift)
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, shown, strict=True))
    return f"{item.question}\n\n{options}\n\n{INSTRUCTION}"


def letter_prompt(lm: LoadedModel, item: ChoiceItem, system_prompt: str | None = None, shift: int = 0) -> str:
    """The full text before the answer letter: the (chat-formatted) question, then "Answer:"."""
    formatted = format_prompt(lm.tokenizer, question_text(item, shift), system_prompt, lm.use_chat_template)
    sep = "" if lm.use_chat_template else "\n"  # a chat template already ends where the reply starts
    return f"{formatted}{sep}{ANSWER_PREFIX}"


def text_prompt(lm: LoadedModel, item: ChoiceItem, option: int,
                system_prompt: str | None = None) -> tuple[str, str]:
    """(prompt, reply) of text scoring: the question alone, and one option's text as the reply."""
    if lm.use_chat_template:
        return format_prompt(lm.tokenizer, item.question, system_prompt, True), item.options[option]
    question = f"{system_prompt}\n\n{item.question}" if system_prompt else item.question
    return f"Question: {question}\n{ANSWER_PREFIX}", " " + item.options[option]


def letter_token_ids(tokenizer) -> list[list[int]]:
    """Per letter, the distinct token ids that spell it as one token ("A", " A"); ModelError if none does."""
    out = []
    for letter in LETTERS:
        ids: list[int] = []
        for text in (letter, f" {letter}"):
            toks = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(toks) == 1 and int(toks[0]) not in ids:
                ids.append(int(toks[0]))
        if not ids:
            raise ModelError(f"the tokenizer spells neither {letter!r} nor {' ' + letter!r} as one token; "
                             "use capability scoring 'text' with this model")
        out.append(ids)
    return out


def letter_logprobs_from_logits(logits: torch.Tensor, letter_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """[B, V] next-token logits -> [B, 4] log P(letter), each letter's spellings summed (logsumexp)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.stack([torch.logsumexp(logp[:, list(ids)], dim=-1) for ids in letter_ids], dim=-1)


def unrotate(letter_logprobs: Sequence[Sequence[float]]) -> list[float]:
    """[shift][letter] log P(letter) of one item -> per option the mean over shifts of its letter's log-prob
    (under shift s option j sits under letter (j + s) % 4)."""
    k = len(LETTERS)
    shifts = len(letter_logprobs)
    return [sum(letter_logprobs[s][(j + s) % k] for s in range(shifts)) / shifts for j in range(k)]


# ------------------------------------------------------------------------------------------- results


@dataclass
class ChoiceScores:
    """One setting's results on a set: per item, a log-prob for each option (in the item's own order)."""

    option_logprobs: list[list[float]]  # [N][4]
    answers: list[int]
    categories: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.answers)

    @property
    def correct(self) -> list[bool]:
        """Per item: the correct option strictly outscores the other three."""
        return [all(lps[a] > lp for j, lp in enumerate(lps) if j != a)
                for lps, a in zip(self.option_logprobs, self.answers, strict=True)]

    @property
    def n_correct(self) -> int:
        return sum(self.correct)

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n if self.n else math.nan

    @property
    def correct_logprob(self) -> float:
        """Mean log-prob of the correct option, a smooth companion to accuracy (NaN for an empty set)."""
        vals = [lps[a] for lps, a in zip(self.option_logprobs, self.answers, strict=True)]
        return sum(vals) / len(vals) if vals else math.nan

    def accuracy_interval(self) -> Interval:
        """Accuracy with its 95% Wilson interval."""
        return accuracy_estimate(self.correct)

    def change_from(self, reference: ChoiceScores) -> Interval:
        """Accuracy minus `reference`'s on the same items (e.g. steered minus unsteered), with Newcombe's
        paired 95% interval."""
        if reference.answers != self.answers:
            raise ValueError("change_from: the two results are not on the same items")
        return paired_accuracy_difference(self.correct, reference.correct)

    def predicted(self) -> list[int]:
        """Per item, the index of the top-scoring option."""
        return [max(range(len(lps)), key=lambda j: lps[j]) for lps in self.option_logprobs]

    def by_category(self) -> dict[str, tuple[int, int]]:
        """{category: (n_correct, n)}."""
        out: dict[str, list[int]] = {}
        for cat, ok in zip(self.categories or [""] * self.n, self.correct, strict=True):
            k = out.setdefault(cat, [0, 0])
            k[0] += int(ok)
            k[1] += 1
        return {c: (v[0], v[1]) for c, v in sorted(out.items())}


# ------------------------------------------------------------------------------------------- scoring


@dataclass
class _Rows:
    """Every row to run for ONE setting, in item order: `per_item` consecutive rows per item."""

    encoded: list[Encoded]
    per_item: int


def _letter_rows(lm: LoadedModel, items: Sequence[ChoiceItem], system_prompt: str | None, rotate: bool) -> _Rows:
    shifts = range(len(LETTERS)) if rotate else range(1)
    return _Rows([encode(lm.tokenizer, letter_prompt(lm, it, system_prompt, s)) for it in items for s in shifts],
                 len(shifts))


def _text_rows(lm: LoadedModel, items: Sequence[ChoiceItem], system_prompt: str | None) -> _Rows:
    encoded = []
    for it in items:
        for j in range(len(LETTERS)):
            prompt, reply = text_prompt(lm, it, j, system_prompt)
            e = encode(lm.tokenizer, prompt, reply)
            if e.seq_len == e.prompt_len:
                raise ModelError(f"option {LETTERS[j]} of item at line {it.line} encodes to no tokens")
            encoded.append(e)
    return _Rows(encoded, len(LETTERS))


def _reply_logprob_sums(logits: torch.Tensor, ids: torch.Tensor, rows: Sequence[Encoded]) -> list[float]:
    """Summed log-prob of each row's reply tokens; `logits` cover the last logits.shape[1] positions."""
    kept = logits.shape[1]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)         # predictions of tokens W-kept+1 .. W-1
    targets = ids[:, ids.shape[1] - kept + 1:]
    token_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)    # [B, kept-1]
    out = []
    for r, e in enumerate(rows):
        n_reply = e.seq_len - e.prompt_len
        out.append(float(token_lp[r, token_lp.shape[1] - n_reply:].sum()))
    return out


@torch.inference_mode()
def score_choices(
    lm: LoadedModel,
    items: Sequence[ChoiceItem],
    settings: Sequence[Setting] = (None,),
    *,
    scoring: str = "letter",
    rotate: bool = False,
    system_prompt: str | None = None,
    component: str = "residual",
    batch_size: int = 32,
    desc: str | None = "capability",
    share_trunk: bool = True,
) -> list[ChoiceScores]:
    """ChoiceScores per setting (same order), from one pass over all settings' rows in shared batches."""
    if scoring not in SCORINGS:
        raise ConfigError("capability.scoring", f"'{scoring}' is not one of {', '.join(SCORINGS)}")
    if not items:
        raise ModelError("score_choices: no items to score")
    if not settings:
        raise ModelError("score_choices: settings is empty; pass [None] for the unsteered model")
    if scoring == "letter":
        letter_ids = letter_token_ids(lm.tokenizer)
        block = _letter_rows(lm, items, system_prompt, rotate)
    else:
        block = _text_rows(lm, items, system_prompt)
    per_setting = len(block.encoded)
    rows = [e for _ in settings for e in block.encoded]

    def keep(batch: list[Encoded]) -> int:
        return 1 if scoring == "letter" else 1 + max(e.seq_len - e.prompt_len for e in batch)

    def read(batch: list[Encoded], logits: torch.Tensor, ids: torch.Tensor) -> list[list[float]]:
        if scoring == "letter":
            return letter_logprobs_from_logits(logits[:, -1, :], letter_ids).cpu().tolist()
        return [[v] for v in _reply_logprob_sums(logits, ids, batch)]

    bar = tqdm(total=len(rows), desc=desc, leave=False, **({"disable": True} if desc is None else {}))
    result = steered_rows_forward(lm, rows, [s for s in settings for _ in range(per_setting)], keep, read,
                                  component=component, batch_size=batch_size, share_trunk=share_trunk,
                                  progress=bar.update)
    bar.close()

    k = block.per_item
    out = []
    for si in range(len(settings)):
        mine = result[si * per_setting:(si + 1) * per_setting]
        per_item = [mine[q * k:(q + 1) * k] for q in range(len(items))]
        option_lps = [unrotate(p) if scoring == "letter" else [v[0] for v in p] for p in per_item]
        out.append(ChoiceScores(option_lps, [it.answer for it in items], [it.category for it in items]))
    return out
