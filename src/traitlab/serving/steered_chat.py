"""Replies of a loaded model to a conversation, steered as a SteeringBundle says (modes add, add_response,
ablate, cap), with the coefficient overridable per call."""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

from traitlab.core.components import component_dim
from traitlab.core.hooks import (
    AblationHook,
    ActivationCappingHook,
    MultiLayerSteering,
    PerPositionSteeringHook,
)
from traitlab.errors import ConfigError
from traitlab.models.chat import format_messages
from traitlab.models.encoding import encode
from traitlab.models.generation import generate_batch
from traitlab.models.loading import LoadedModel
from traitlab.serving.bundle import SteeringBundle


@dataclass
class Reply:
    text: str
    coefficients: dict[int, float]
    n_prompt_tokens: int
    n_reply_tokens: int


class SteeredChat:
    """A loaded model plus a steering bundle; the vectors' widths are checked against the model up front."""

    def __init__(self, lm: LoadedModel, bundle: SteeringBundle):
        for layer, v in bundle.vectors.items():
            if not 0 <= layer < lm.n_layers:
                raise ConfigError("layers", f"layer {layer} is out of range for {lm.name} (0..{lm.n_layers - 1})")
            want = component_dim(lm.model, bundle.component, layer)
            if v.shape[0] != want:
                raise ConfigError("vectors", f"layer {layer}: vector width {v.shape[0]} but {lm.name}'s "
                                             f"{bundle.component} has {want}")
        self.lm, self.bundle = lm, bundle

    def coefficients(self, override: Any = None) -> dict[int, float]:
        """The bundle's per-layer coefficients, or ``override`` (one number) at every layer."""
        if override is None:
            return dict(self.bundle.coefficients)
        try:
            c = float(override)
        except (TypeError, ValueError):
            raise ConfigError("coefficient", f"must be a number, got {override!r}") from None
        if c != c or c in (float("inf"), float("-inf")):
            raise ConfigError("coefficient", f"must be finite, got {c}")
        return dict.fromkeys(self.bundle.vectors, c)

    def hooks(self, coefficients: dict[int, float], prompt_len: int) -> Any:
        """The context manager that applies the bundle's mode (nothing when every coefficient is 0 in
        the additive modes: a zero coefficient is the unsteered model, bit for bit)."""
        b, model = self.bundle, self.lm.model
        if b.mode in ("add", "add_response") and not any(coefficients.values()):
            return nullcontext()
        if b.mode == "add":
            return MultiLayerSteering(model, [(lyr, b.vectors[lyr], coefficients[lyr]) for lyr in b.layers],
                                      component=b.component)
        stack = ExitStack()
        for layer in b.layers:
            v = b.vectors[layer]
            if b.mode == "add_response":
                hook = PerPositionSteeringHook(model, layer, v, coefficients[layer], (prompt_len, None), b.component)
            elif b.mode == "ablate":
                hook = AblationHook(model, layer, v, b.component)
            else:
                hook = ActivationCappingHook(model, layer, v, float(b.cap_threshold or 0.0), b.component,
                                             mode="ceiling")
            stack.enter_context(hook)
        return stack

    def reply(self, messages: list[dict[str, str]], *, coefficient: Any = None, max_new_tokens: int | None = None,
              temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> Reply:
        if not messages:
            raise ConfigError("input", "no messages; expected [{\"role\": \"user\", \"content\": \"...\"}]")
        text = format_messages(self.lm.tokenizer, messages, self.lm.use_chat_template)
        prompt_len = encode(self.lm.tokenizer, text).seq_len
        coefs = self.coefficients(coefficient)
        with self.hooks(coefs, prompt_len):
            gen = generate_batch(self.lm, [text], max_new_tokens=int(max_new_tokens or self.bundle.max_new_tokens),
                                 do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p,
                                 seed=seed)[0]
        return Reply(gen.text, coefs, prompt_len, len(gen.token_ids))
