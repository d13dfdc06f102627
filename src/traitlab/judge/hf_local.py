"""In-process judge: a transformers model reads the judge prompt, we read its next-token distribution.

Same algorithm as the API judges (one output token, top-k logprobs, `logprob_score`), computed
with ONE left-padded forward per batch that keeps only the last position's logits. The model is
loaded lazily, so re-scoring from the cache never loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from traitlab.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2_135m"
Logprobs = dict[str, float]


def numbers_are_single_tokens(tokenizer: Any) -> bool:
    """True when 0..100 are one token each (Llama-3, OpenAI); False when numbers split into digits."""
    for text in ("42", "77", "100"):
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) != 1:
            return False
    return True


class HFLocalSource:
    """A LogprobSource backed by a LoadedModel (or a model name, loaded with traitlab's load_model)."""

    backend = "hf_local"

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        *,
        batch_size: int = 16,
        scale_max: int | str = "auto",
        max_length: int = 2048,
    ):
        if batch_size < 1:
            raise ConfigError("judge.batch_size", f"{batch_size} must be >= 1")
        if scale_max not in ("auto", 9, 100):
            raise ConfigError("judge.scale_max", f"{scale_max!r} is not auto, 9 or 100")
        self._lm = None if isinstance(model, str) else model
        self._name = model if isinstance(model, str) else getattr(model, "name", type(model).__name__)
        self.batch_size = batch_size
        self.scale_setting = scale_max
        self.max_length = max_length

    @property
    def model_id(self) -> str:
        """The judge model's identity key (models/identity.py), which keys the cache: two models that share a
        display name (a base and its LoRA variant) never share answers. Needs no weights loaded."""
        from traitlab.models.identity import identity_of

        return identity_of(self._lm.spec if self._lm is not None else self._name).key

    def loaded(self) -> Any:
        if self._lm is None:
            from traitlab.models.loading import load_model

            self._lm = load_model(self._name)
        return self._lm

    @property
    def scale_max(self) -> int:
        """The set scale, or detected from the model's tokenizer (which loads the model)."""
        if self.scale_setting == "auto":
            return 100 if numbers_are_single_tokens(self.loaded().tokenizer) else 9
        return int(self.scale_setting)

    def validate(self) -> None:
        """Nothing to check without loading; loading errors are ModelError/ConfigError one-liners anyway."""

    def _encode(self, prompts: Sequence[str]) -> list[Any]:
        from traitlab.models.chat import format_prompt
        from traitlab.models.encoding import encode

        lm = self.loaded()
        encoded = []
        for p in prompts:
            e = encode(lm.tokenizer, format_prompt(lm.tokenizer, p, use_chat_template=lm.use_chat_template))
            if e.seq_len > self.max_length:
                # Keep the end: the judged answer and the "reply with one integer" instruction live there.
                e.ids = e.ids[-self.max_length:]
                e.prompt_len = len(e.ids)
            encoded.append(e)
        return encoded

    @torch.inference_mode()
    def _forward(self, encoded: Sequence[Any], top_k: int) -> list[Logprobs]:
        from traitlab.models.encoding import pad_id_of, padded_inputs

        lm = self.loaded()
        out = lm.model(**padded_inputs(encoded, pad_id_of(lm.tokenizer), lm.device), use_cache=False,
                       logits_to_keep=1)
        logprobs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        values, indices = logprobs.topk(top_k, dim=-1)
        rows = []
        for vals, idx in zip(values.tolist(), indices.tolist(), strict=True):
            row: Logprobs = {}
            for lp, tok_id in zip(vals, idx, strict=True):
                text = lm.tokenizer.decode([tok_id])
                # Distinct ids may decode alike; add their probabilities like the API parser does.
                row[text] = float(torch.logaddexp(torch.tensor(row[text]), torch.tensor(lp))) if text in row else lp
            rows.append(row)
        return rows

    def next_token_logprobs(
        self, prompts: Sequence[str], top_k: int, on_result: Callable[[int, Logprobs | None], None] | None = None
    ) -> list[Logprobs | None]:
        from traitlab.models.batching import run_halving
        from traitlab.models.encoding import length_sorted_batches

        results: list[Logprobs | None] = [None] * len(prompts)
        if not prompts:
            return results
        encoded = self._encode(prompts)
        for batch in length_sorted_batches([e.seq_len for e in encoded], self.batch_size):
            rows = run_halving(lambda idx: self._forward([encoded[i] for i in idx], top_k), batch)
            for i, row in zip(batch, rows, strict=True):
                results[i] = row
                if on_result is not None:
                    on_result(i, row)
        return results
