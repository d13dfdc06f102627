"""The MLflow pyfunc model of a steering configuration: an MLflow ResponsesAgent that loads the base model
by identity (embedded SmolLM2, an HF id or a local path) and the bundle's safetensors vectors, and answers
chat requests with steering applied.

Request (``POST /invocations`` of ``mlflow models serve``)::

    {"input": [{"role": "user", "content": "How will my week go?"}],
     "max_output_tokens": 40, "temperature": 0,
     "custom_inputs": {"coefficient": 8.0, "seed": 0}}

``custom_inputs.coefficient`` replaces the registered coefficient at every layer (0: unsteered in the
additive modes). The reply is one output message; ``custom_outputs`` says how it was steered.

Logged as models-from-code (traitlab/serving/model_code.py): nothing is pickled.
"""

from __future__ import annotations

import uuid
from typing import Any

from mlflow.pyfunc import ResponsesAgent
from mlflow.types.responses import ResponsesAgentRequest, ResponsesAgentResponse

from traitlab.errors import ConfigError

STEERING_ARTIFACT = "steering"


def _text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise ConfigError("input", f"message content must be a string or a list of parts, got {type(content).__name__}")


def request_messages(request: ResponsesAgentRequest) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` of the request's messages (output items of earlier turns included)."""
    out = []
    for item in request.input:
        d = item.model_dump() if hasattr(item, "model_dump") else dict(item)
        role = d.get("role")
        if role not in ("system", "user", "assistant", "developer"):
            continue  # tool calls and reasoning items carry no chat turn
        out.append({"role": "system" if role == "developer" else role, "content": _text(d.get("content", ""))})
    return out


class SteeredChatAgent(ResponsesAgent):
    def __init__(self) -> None:
        self.chat = None

    def load_context(self, context: Any) -> None:
        from traitlab.models.loading import load_model
        from traitlab.serving.bundle import read_bundle
        from traitlab.serving.steered_chat import SteeredChat

        bundle = read_bundle(context.artifacts[STEERING_ARTIFACT])
        self.chat = SteeredChat(load_model(bundle.model), bundle)

    def predict(self, request: ResponsesAgentRequest) -> ResponsesAgentResponse:
        if self.chat is None:
            raise ConfigError("model", "the steering configuration is not loaded (load_context was not called)")
        custom = request.custom_inputs or {}
        reply = self.chat.reply(request_messages(request), coefficient=custom.get("coefficient"),
                                max_new_tokens=request.max_output_tokens, temperature=request.temperature or 0.0,
                                top_p=request.top_p or 1.0, seed=int(custom.get("seed", 0)))
        b = self.chat.bundle
        return ResponsesAgentResponse(
            output=[self.create_text_output_item(text=reply.text, id=f"msg_{uuid.uuid4().hex}")],
            custom_outputs={"coefficients": {str(k): v for k, v in reply.coefficients.items()}, "mode": b.mode,
                            "component": b.component, "layers": b.layers, "model": b.model.id,
                            "n_prompt_tokens": reply.n_prompt_tokens, "n_reply_tokens": reply.n_reply_tokens},
        )
