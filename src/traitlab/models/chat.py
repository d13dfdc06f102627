"""Turn (system prompt, user prompt) into the exact text the model sees.

Chat templates differ: some reject a system role (we then fold the system text into the user turn),
reasoning models take `enable_thinking=False` (so thinking tokens do not inflate trait scores), and base
models have no template at all (plain concatenation).
"""

from __future__ import annotations

from typing import Any

_SYSTEM_OK: dict[int, bool] = {}


def _apply(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )


def supports_system_role(tokenizer: Any) -> bool:
    """Probe once per tokenizer whether its template accepts a system message."""
    key = id(tokenizer)
    if key not in _SYSTEM_OK:
        try:
            out = _apply(tokenizer, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
            _SYSTEM_OK[key] = "S" in out
        except Exception:  # jinja raises TemplateError subclasses from inside the template
            _SYSTEM_OK[key] = False
    return _SYSTEM_OK[key]


def format_prompt(
    tokenizer: Any, prompt: str, system_prompt: str | None = None, use_chat_template: bool = True
) -> str:
    """Return the text up to where the model's response starts."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return format_conversation(tokenizer, [*messages, {"role": "user", "content": prompt}], use_chat_template)


def format_conversation(tokenizer: Any, messages: list[dict[str, str]], use_chat_template: bool = True) -> str:
    """Return the text of a conversation (system?, user, assistant, ..., user) up to the next response.

    A leading system message is folded into the first user turn when the template has no system role;
    without a chat template the turns' texts are joined by blank lines.
    """
    if not use_chat_template:
        return "\n\n".join(m["content"] for m in messages)
    messages = [dict(m) for m in messages]
    if messages and messages[0]["role"] == "system" and not supports_system_role(tokenizer):
        system = messages.pop(0)["content"]
        if messages:
            messages[0]["content"] = f"{system}\n\n{messages[0]['content']}"
    return _apply(tokenizer, messages)
