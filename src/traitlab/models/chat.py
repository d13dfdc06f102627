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
    if not use_chat_template:
        return f"{system_prompt}\n\n{prompt}" if system_prompt else prompt
    messages: list[dict[str, str]] = []
    if system_prompt:
        if supports_system_role(tokenizer):
            messages.append({"role": "system", "content": system_prompt})
        else:
            prompt = f"{system_prompt}\n\n{prompt}"
    messages.append({"role": "user", "content": prompt})
    return _apply(tokenizer, messages)


def format_messages(tokenizer: Any, messages: list[dict[str, str]], use_chat_template: bool = True) -> str:
    """A whole conversation (``[{"role", "content"}]``, system/user/assistant) up to the next reply.

    A system message the template rejects is folded into the first user turn; without a template the
    turns are joined as ``Role: text`` lines ending with ``Assistant:``.
    """
    if not use_chat_template:
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join([*lines, "Assistant:"])
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and not supports_system_role(tokenizer):
        first_user = next((m for m in rest if m["role"] == "user"), None)
        if first_user is not None:
            first_user["content"] = "\n\n".join([*system, first_user["content"]])
        return _apply(tokenizer, rest)
    return _apply(tokenizer, ([{"role": "system", "content": "\n\n".join(system)}] if system else []) + rest)
