"""Texts to score or generate from: prompt-set items and {prompt, response} files, validated with file:line errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from traitlab.data.prompt_sets import load_prompt_set
from traitlab.data.readers import read_json_document, type_name
from traitlab.errors import ConfigError, DataError
from traitlab.io import content_hash

RESPONSES_EXPECTED = (
    'a JSON list (or {"items": [...]}) of {"id"?, "prompt", "system_prompt"?, "response"} objects'
)


@dataclass(frozen=True)
class TextItem:
    """One prompt (chat-formatted later) and, once known, the response that follows it."""

    id: str
    prompt: str
    system_prompt: str | None = None
    response: str | None = None


@dataclass
class Source:
    name: str  # prompt set name or responses file stem
    items: list[TextItem]
    given_responses: bool

    def fingerprint(self) -> str:
        return content_hash("source-v1", [asdict(i) for i in self.items], self.given_responses)


def load_response_items(path: str | Path) -> list[TextItem]:
    """Items of a {prompt, response} file; any problem is a DataError naming file:line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError("responses", f"{p} is not a file; expected {RESPONSES_EXPECTED}")
    doc = read_json_document(p, RESPONSES_EXPECTED)
    raw, where = doc.value, ()
    if isinstance(raw, dict):
        if set(raw) - {"items", "description"} or "items" not in raw:
            raise DataError(
                p,
                f'expected the key "items" (and optionally "description"); expected {RESPONSES_EXPECTED}',
                line=doc.line(),
            )
        raw, where = raw["items"], ("items",)
    if not isinstance(raw, list) or not raw:
        raise DataError(
            p,
            f"expected a non-empty array, got {type_name(raw)}; expected {RESPONSES_EXPECTED}",
            line=doc.line(*where),
        )
    items, seen = [], {}
    for i, v in enumerate(raw):
        line = doc.line(*where, i)
        if not isinstance(v, dict):
            raise DataError(p, f"item {i}: expected an object, got {type_name(v)}", line=line)
        unknown = sorted(set(v) - {"id", "prompt", "system_prompt", "response"})
        if unknown:
            raise DataError(
                p,
                f"item {i}: unknown key {unknown[0]!r}; allowed: id, prompt, system_prompt, response",
                line=doc.line(*where, i, unknown[0]),
            )
        for key in ("prompt", "response"):
            if not isinstance(v.get(key), str) or not v[key].strip():
                raise DataError(
                    p, f'item {i}: "{key}" must be a non-empty string', line=doc.line(*where, i, key)
                )
        if v.get("system_prompt") is not None and not isinstance(v["system_prompt"], str):
            raise DataError(
                p, f'item {i}: "system_prompt" must be a string', line=doc.line(*where, i, "system_prompt")
            )
        pid = str(v.get("id", i))
        if pid in seen:
            raise DataError(p, f"duplicate id {pid!r} (first on line {seen[pid]})", line=line)
        seen[pid] = line
        items.append(TextItem(pid, v["prompt"], v.get("system_prompt"), v["response"]))
    return items


def load_source(prompt_set: str, responses: str | None, max_prompts: int | None) -> Source:
    """The texts to score: a responses file when given, else a prompt set (name or .json path)."""
    if responses:
        items, name, given = load_response_items(responses), Path(responses).stem, True
    else:
        p = Path(prompt_set).expanduser()
        ps = load_prompt_set(path=p) if p.suffix == ".json" and p.is_file() else load_prompt_set(prompt_set)
        items = [TextItem(i.id, i.prompt, i.system_prompt) for i in ps.items]
        name, given = ps.name, False
    if max_prompts is not None:
        if max_prompts < 1:
            raise ConfigError("inference.max_prompts", f"{max_prompts} must be >= 1 (or null for all)")
        items = items[:max_prompts]
    return Source(name, items, given)


def load_sources(prompt_sets: Any, responses: str | None, max_prompts: int | None,
                 key: str = "prompt_set") -> list[Source]:
    """Several texts to score at once: ``prompt_set=[starter,smoke]`` (names or .json paths), each a Source
    whose name tags its records; a responses file when given (one source)."""
    if responses:
        return [load_source("", responses, max_prompts)]
    names = [prompt_sets] if isinstance(prompt_sets, str) else list(prompt_sets or [])
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(key, f"{prompt_sets!r}: expected a prompt set name or a list of them, e.g. [starter,smoke]")
    sources = [load_source(n, None, max_prompts) for n in names]
    seen = [s.name for s in sources]
    if len(set(seen)) != len(seen):
        raise ConfigError(key, f"{names}: two sets share the name {sorted({n for n in seen if seen.count(n) > 1})}; "
                               "records are tagged with it, so names must differ")
    return sources


# ------------------------------------------------------------------------------------ calibration sets

NEUTRAL = "neutral"


def load_calibration_source(spec: str, max_prompts: int | None = None, key: str = "inference.massive.set") -> Source:
    """The texts a neutral massive-activation calibration runs on.

    ``neutral``: datasets/neutral/default.* (everyday prompts with plain responses, in the trait formats) when
    present, else the prompt set datasets/inference/neutral.json. Another name: datasets/neutral/<name>.*, else
    the prompt set of that name (``smoke``, ``starter``). A path: a .jsonl/.txt file in the trait formats or a
    .json prompt set. Items without a response are answered by the model (cached) before calibrating.
    """
    from traitlab.data.traits import FORMATS, load_examples
    from traitlab.paths import datasets_dir

    name = "default" if spec == NEUTRAL else spec
    neutral_dir = datasets_dir() / "neutral"
    found = next((neutral_dir / f"{name}{ext}" for ext in FORMATS if (neutral_dir / f"{name}{ext}").is_file()), None)
    path = Path(spec).expanduser()
    if found is None and path.suffix in (".jsonl", ".txt") and path.is_file():
        found = path
    if found is not None:
        examples = load_examples(found)
        items = [TextItem(str(i), e.prompt, e.system_prompt, e.response) for i, e in enumerate(examples)]
        label = f"{NEUTRAL}:{name}" if found.parent == neutral_dir else str(found)
        source = Source(label, items, all(e.response for e in examples))
    else:
        try:
            source = load_source(spec, None, None)
        except ConfigError as e:
            raise ConfigError(key, f"{spec!r} is not a set under {neutral_dir}, a prompt set or a file ({e})") from None
    if max_prompts is not None:
        source = Source(source.name, source.items[:max_prompts], source.given_responses)
    return source


# -------------------------------------------------------------------------------------- conversations

ROLES = ("system", "user", "assistant")
CONVERSATIONS_EXPECTED = (
    'one JSON object per line: {"id"?, "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]} '
    "ending with a user turn"
)


@dataclass(frozen=True)
class Conversation:
    """Turns so far (the last one the user's); the model writes the next assistant turn."""

    id: str
    messages: tuple[dict[str, str], ...]

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]

    @property
    def system_prompt(self) -> str | None:
        return self.messages[0]["content"] if self.messages[0]["role"] == "system" else None

    @classmethod
    def single(cls, id: str, prompt: str, system_prompt: str | None = None) -> Conversation:
        system = ({"role": "system", "content": system_prompt},) if system_prompt else ()
        return cls(id, (*system, {"role": "user", "content": prompt}))


def load_conversations(path: str | Path) -> list[Conversation]:
    """Multi-turn conversations from a .jsonl file; any problem is a DataError naming file:line."""
    from traitlab.data.readers import read_jsonl

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError("conversations", f"{p} is not a file; expected {CONVERSATIONS_EXPECTED}")
    out, seen = [], {}
    for i, (line, v) in enumerate(read_jsonl(p, CONVERSATIONS_EXPECTED)):
        if not isinstance(v, dict):
            raise DataError(p, f"expected an object, got {type_name(v)}; {CONVERSATIONS_EXPECTED}", line=line)
        unknown = sorted(set(v) - {"id", "messages"})
        if unknown:
            raise DataError(p, f"unknown key {unknown[0]!r}; allowed: id, messages", line=line)
        msgs = v.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise DataError(p, f'"messages" must be a non-empty array; {CONVERSATIONS_EXPECTED}', line=line)
        clean = []
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or set(m) != {"role", "content"}:
                raise DataError(p, f'message {j}: expected {{"role", "content"}}, got {m!r:.80}', line=line)
            if m["role"] not in ROLES or (m["role"] == "system" and j != 0):
                raise DataError(p, f"message {j}: role {m['role']!r} must be one of {', '.join(ROLES)} "
                                   "(system only first)", line=line)
            if not isinstance(m["content"], str) or not m["content"].strip():
                raise DataError(p, f'message {j}: "content" must be a non-empty string', line=line)
            clean.append({"role": m["role"], "content": m["content"]})
        if clean[-1]["role"] != "user":
            raise DataError(p, f"the last message is {clean[-1]['role']!r}; expected a user turn to answer",
                            line=line)
        cid = str(v.get("id", i))
        if cid in seen:
            raise DataError(p, f"duplicate id {cid!r} (first on line {seen[cid]})", line=line)
        seen[cid] = line
        out.append(Conversation(cid, tuple(clean)))
    return out
