"""Prompt sets for inference: `datasets/inference/<name>.json`.

Format: ``{"prompts": [{"id": str|int, "prompt": str, "system_prompt"?: str}, ...]}`` or a plain
list. Items may also be bare strings; an item without an id gets its 0-based index as id. Ids are
strings afterwards (1 and "1" are the same id, so they collide) because they name output files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from traitlab import paths
from traitlab.data.readers import LocatedJson, read_json_document, relative_name, resolved_inside, type_name
from traitlab.errors import ConfigError, DataError
from traitlab.io import content_hash

ITEM_KEYS = ("id", "prompt", "system_prompt")
TOP_KEYS = ("prompts", "description")
_EXPECTED = '{"prompts": [{"id": ..., "prompt": "...", "system_prompt"?: "..."}, ...]} or a list of strings'


@dataclass(frozen=True)
class PromptItem:
    id: str
    prompt: str
    system_prompt: str | None = None


@dataclass
class PromptSet:
    name: str
    path: Path
    items: list[PromptItem]

    def fingerprint(self) -> str:
        return content_hash("prompt-set-v1", [(i.id, i.prompt, i.system_prompt) for i in self.items])


def default_prompt_sets_root() -> Path:
    return paths.datasets_dir() / "inference"


def list_prompt_sets(root: Path | None = None) -> list[str]:
    root = Path(root) if root is not None else default_prompt_sets_root()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.json")) if root.is_dir() else []


def resolve_prompt_set(name: str | None = None, path: str | Path | None = None, root: Path | None = None) -> Path:
    """The file of a prompt set given by `name` (under `root`, `.json` optional) or by any `path`."""
    if (name is None) == (path is None):
        raise ConfigError("prompt_set", "give exactly one of a prompt-set name (prompt_set=starter) "
                                        "or a file (prompt_set.path=/some/file.json)")
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError("prompt_set.path", f"{p} is not a file; expected a JSON prompt set ({_EXPECTED})")
        return p.resolve()
    root = Path(root) if root is not None else default_prompt_sets_root()
    assert name is not None
    rel = relative_name(name, root, "prompt_set", "starter", "prompt_set.path", "a file")
    candidate = root / (rel if name.endswith(".json") else rel.with_name(rel.name + ".json"))
    if not candidate.is_file():
        available = list_prompt_sets(root)
        hint = f"available: {', '.join(available)}" if available else "no prompt sets found there"
        raise ConfigError("prompt_set", f"no prompt set {name!r} under {root}; {hint}")
    return resolved_inside(candidate, root, name, "prompt_set", "prompt_set.path", "a file")


def load_prompt_set(name: str | None = None, path: str | Path | None = None, root: Path | None = None) -> PromptSet:
    """Resolve and validate a prompt set; any problem is a DataError naming file:line."""
    file = resolve_prompt_set(name, path, root)
    doc = read_json_document(file, _EXPECTED)
    raw = doc.value
    where: tuple[str, ...] = ()
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - set(TOP_KEYS))
        if unknown:
            raise DataError(file, f"unknown key {unknown[0]!r}; allowed keys: {', '.join(TOP_KEYS)}",
                            line=doc.line(unknown[0]))
        if "prompts" not in raw:
            raise DataError(file, 'missing key "prompts" (a non-empty array)', line=doc.line())
        raw, where = raw["prompts"], ("prompts",)
    if not isinstance(raw, list):
        raise DataError(file, f"expected an array of prompts, got {type_name(raw)}", line=doc.line(*where))
    if not raw:
        raise DataError(file, "no prompts; expected at least one", line=doc.line(*where))
    items = [_item(file, doc, where, i, v) for i, v in enumerate(raw)]
    first_line: dict[str, int | None] = {}
    for i, item in enumerate(items):
        line = doc.line(*where, i)
        if item.id in first_line:
            raise DataError(file, f"duplicate id {item.id!r} (first used on line {first_line[item.id]}); "
                                  f"ids must be unique", line=line)
        first_line[item.id] = line
    return PromptSet(name=file.stem, path=file, items=items)


def _item(file: Path, doc: LocatedJson, where: tuple[str, ...], i: int, v: object) -> PromptItem:
    line = doc.line(*where, i)
    if isinstance(v, str):
        if not v.strip():
            raise DataError(file, f"prompt {i} is an empty string; expected text", line=line)
        return PromptItem(id=str(i), prompt=v)
    if not isinstance(v, dict):
        raise DataError(file, f"prompt {i}: expected an object or a string, got {type_name(v)}", line=line)
    unknown = sorted(set(v) - set(ITEM_KEYS))
    if unknown:
        raise DataError(file, f"unknown key {unknown[0]!r}; allowed keys: {', '.join(ITEM_KEYS)}",
                        line=doc.line(*where, i, unknown[0]))
    if "prompt" not in v:
        raise DataError(file, 'missing key "prompt" (a non-empty string)', line=line)
    prompt = v["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        got = "an empty string" if isinstance(prompt, str) else type_name(prompt)
        raise DataError(file, f'"prompt" must be a non-empty string, got {got}', line=doc.line(*where, i, "prompt"))
    pid = v.get("id", i)
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or (isinstance(pid, str) and not pid.strip()):
        raise DataError(file, f'"id" must be a non-empty string or an integer, got {type_name(pid)}',
                        line=doc.line(*where, i, "id"))
    system = v.get("system_prompt")
    if system is not None and not isinstance(system, str):
        raise DataError(file, f'"system_prompt" must be a string, got {type_name(system)}',
                        line=doc.line(*where, i, "system_prompt"))
    return PromptItem(id=str(pid), prompt=prompt, system_prompt=system)
