"""Turn (system prompt, earlier turns, user prompt) into the exact text the model sees, and say where each
message's content sits in it.

Chat templates differ: some reject a system role (we then fold the system text into the first user turn),
reasoning models take `enable_thinking` (off unless the response itself holds a thinking block, so thinking
tokens do not inflate trait scores), and base models have no template at all (plain concatenation).

An empty system prompt is a system message with no text, not "no system prompt": SmolLM2's template (and
others) insert their own default system prompt only when there is no system message at all.

Where the content sits (`PromptLayout`) is found by rendering the template once with a unique marker in
place of each message's content: the template's own text around the markers is kept exactly, so the spans
are the template's real ones. A template that rewrites content (strips it, drops earlier thinking) cannot be
mapped this way; the layout then says so and the frames that need it fail with that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_SYSTEM_OK: dict[int, bool] = {}
CharSpan = tuple[int, int]
Turn = tuple[str, str]  # (user message, assistant reply) of an earlier exchange


def _apply(tokenizer: Any, messages: list[dict[str, str]], thinking: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
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


@dataclass(frozen=True)
class TurnChars:
    """One user->assistant exchange in character offsets of the prompt text.

    ``[start, response_start)`` is the exchange's prompt part (from the end of the previous message's content
    through the user message and the assistant header), ``[response_start, stop)`` the assistant's reply.
    The last exchange's reply is the response that follows the prompt text: ``stop`` is None there.
    """

    start: int
    response_start: int
    stop: int | None


@dataclass(frozen=True)
class PromptLayout:
    """A formatted prompt and where its parts are. ``located`` is False when the template rewrites message
    text, so ``system`` and ``turns`` could not be found (``problem`` says why)."""

    text: str
    system: CharSpan | None = None
    turns: tuple[TurnChars, ...] = ()
    located: bool = True
    problem: str = ""


def _marker(i: int) -> str:
    return f"\ue000{i}\ue001"  # private-use characters: never in real text, never touched by a template


def format_conversation(
    tokenizer: Any,
    prompt: str,
    system_prompt: str | None = None,
    use_chat_template: bool = True,
    history: Sequence[Turn] = (),
    thinking: bool = False,
) -> PromptLayout:
    """The text up to where the model's response starts, with the character spans of its parts."""
    contents: list[tuple[str, str]] = []  # (role, content) in order
    fold_system = system_prompt is not None and use_chat_template and not supports_system_role(tokenizer)
    if system_prompt is not None and not fold_system:
        contents.append(("system", system_prompt))
    for user, assistant in history:
        contents += [("user", user), ("assistant", assistant)]
    contents.append(("user", prompt))
    if fold_system:  # the system text leads the first user message
        first = next(i for i, (role, _) in enumerate(contents) if role == "user")
        contents[first] = ("user", f"{system_prompt}\n\n{contents[first][1]}")

    if not use_chat_template:
        # Plain concatenation, as a base model reads it; an empty system prompt adds nothing.
        parts = [(r, c) for r, c in contents if not (r == "system" and c == "")]
        text, pieces = "", []
        for k, (_, c) in enumerate(parts):
            text += "\n\n" if k else ""
            pieces.append((len(text), len(text) + len(c)))
            text += c
        return _layout(text, _spans_by_role(parts, pieces), system_prompt, fold_system)

    messages = [{"role": r, "content": c} for r, c in contents]
    text = _apply(tokenizer, messages, thinking)
    marked = _apply(tokenizer, [{"role": r, "content": _marker(i)} for i, (r, _) in enumerate(contents)], thinking)
    rebuilt, pieces, cursor = "", [], 0
    for i, (_, c) in enumerate(contents):
        at = marked.find(_marker(i), cursor)
        if at < 0:
            return PromptLayout(text, located=False, problem=f"the chat template drops or rewrites the {contents[i][0]} "
                                                          f"message {i}, so its tokens cannot be located")
        rebuilt += marked[cursor:at]
        pieces.append((len(rebuilt), len(rebuilt) + len(c)))
        rebuilt += c
        cursor = at + len(_marker(i))
    rebuilt += marked[cursor:]
    if rebuilt != text:
        return PromptLayout(text, located=False, problem="the chat template rewrites message text (e.g. strips it), "
                                                         "so message tokens cannot be located")
    return _layout(text, _spans_by_role(contents, pieces), system_prompt, fold_system)


def _spans_by_role(contents: list[tuple[str, str]], pieces: list[CharSpan]) -> list[tuple[str, CharSpan]]:
    return [(role, span) for (role, _), span in zip(contents, pieces, strict=True)]


def _layout(text: str, spans: list[tuple[str, CharSpan]], system_prompt: str | None,
            fold_system: bool) -> PromptLayout:
    users = [s for r, s in spans if r == "user"]
    replies = [s for r, s in spans if r == "assistant"]
    system: CharSpan | None = None
    if system_prompt is not None:
        if fold_system:
            system = (users[0][0], users[0][0] + len(system_prompt))
        else:  # (0, 0): plain text, where an empty system prompt adds nothing
            system = next((s for r, s in spans if r == "system"), (0, 0))
    start = system[1] if system is not None and not fold_system else 0
    turns = []
    for k in range(len(users)):
        reply = replies[k] if k < len(replies) else None
        turns.append(TurnChars(start, reply[0] if reply else len(text), reply[1] if reply else None))
        start = reply[1] if reply else len(text)
    return PromptLayout(text, system, tuple(turns))


def format_prompt(
    tokenizer: Any, prompt: str, system_prompt: str | None = None, use_chat_template: bool = True,
    history: Sequence[Turn] = (),
) -> str:
    """Return the text up to where the model's response starts."""
    return format_conversation(tokenizer, prompt, system_prompt, use_chat_template, history).text


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
