"""Trait datasets: find a trait directory, validate every file in it, and return plain data.

A trait directory holds (see DESIGN.md "Data formats"):

- ``positive.*`` (required) and ``negative.*`` (optional; when present the trait is *paired* and
  line i of each file forms a contrast pair, so their counts must match), each in exactly one of
  ``.jsonl`` (``{"prompt", "system_prompt"?, "response"?}`` per line, or a multi-turn conversation
  ``{"messages": [{"role": "system"|"user"|"assistant", "content"}, ...], "response"?}``: an optional
  system message, then user/assistant turns; the last user message is the prompt and a final assistant
  message is the response), ``.json``
  (``{"prompts": [...], "system_prompts"?: [...]}``, expanded as the cartesian product, prompts
  outer) or ``.txt`` (one prompt per line, blank lines skipped);
- ``ood_positive.*`` / ``ood_negative.*``: same formats, compared as groups, so counts may differ;
- ``definition.txt``: the judge rubric; ``steering.json``: questions, direction, eval_prompt;
- ``extraction.yaml``: extraction settings for the traits it reaches, merged over ``<root>/extraction.yaml``
  and each category's ``extraction.yaml`` (later wins key by key; ``generation`` field by field). Keys are
  ``OVERRIDE_KEYS``; an unknown key fails with file:line. The extract stage applies them below the command
  line: command line > trait > category > global > config defaults (config/trait_overrides.py).

Everything is checked here so a bad file fails before any model loads. In ``.jsonl`` an optional
key set to ``null`` counts as absent; an empty ``system_prompt`` is kept (it differs from none:
some chat templates insert their own default system prompt when none is given).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlab import paths
from traitlab.data.readers import (
    read_json_document,
    read_jsonl,
    read_nonblank_lines,
    read_text,
    read_yaml_mapping_lines,
    relative_name,
    resolved_inside,
    type_name,
)
from traitlab.errors import ConfigError, DataError
from traitlab.io import content_hash

FORMATS = (".jsonl", ".json", ".txt")
POLARITIES = ("positive", "negative", "ood_positive", "ood_negative")
EXAMPLE_KEYS = ("prompt", "system_prompt", "response", "messages")
ROLES = ("system", "user", "assistant")
PROMPTS_JSON_KEYS = ("prompts", "system_prompts")
STEERING_KEYS = ("questions", "direction", "eval_prompt")
DIRECTIONS = {"positive": 1, "negative": -1}
OVERRIDES_FILE = "extraction.yaml"
# extraction.yaml key -> the extract config key it sets.
OVERRIDE_KEYS = {"position": "position.spec", "layers": "layers", "component": "component.name",
                 "method": "method.name", "method_kwargs": "method.kwargs", "val_split": "extraction.val_split",
                 "batch_size": "extraction.batch_size", "max_length": "extraction.max_length",
                 "use_provided_responses": "extraction.use_provided_responses", "generation": "extraction.generation",
                 "cv_folds": "extraction.cv_folds", "n_bootstrap": "extraction.n_bootstrap", "seed": "seed"}
GENERATION_KEYS = ("max_new_tokens", "batch_size", "do_sample", "temperature", "top_p")
_KNOWN_FILES = {f"{p}{ext}" for p in POLARITIES for ext in FORMATS} | {
    "definition.txt", "steering.json", OVERRIDES_FILE}


@dataclass(frozen=True)
class Example:
    """One scenario; `response` given means "use this text" instead of generating one."""

    prompt: str
    system_prompt: str | None = None
    response: str | None = None
    source: str = ""  # "file:line", for messages about this example later on
    history: tuple[tuple[str, str], ...] = ()  # earlier (user, assistant) turns of a multi-turn conversation

    @property
    def n_turns(self) -> int:
        return len(self.history) + 1


@dataclass(frozen=True)
class SteeringSpec:
    questions: list[str]
    direction: int  # +1: steering should raise the judge's trait score, -1: lower it
    eval_prompt: str | None = None


@dataclass
class TraitDataset:
    name: str
    category: str
    path: Path
    positive: list[Example]
    negative: list[Example] = field(default_factory=list)
    ood_positive: list[Example] = field(default_factory=list)
    ood_negative: list[Example] = field(default_factory=list)
    definition: str | None = None
    steering: SteeringSpec | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    paired: bool = False
    override_sources: dict[str, str] = field(default_factory=dict)  # config key -> "file:line" that set it

    @property
    def qualified_name(self) -> str:
        """`category/name`, the form `trait=` takes on the command line."""
        return f"{self.category}/{self.name}" if self.category else self.name

    def fingerprint(self) -> str:
        """Hash of the examples: what a trait's activations and metrics are computed from.

        Names, file layout and line numbers are left out so moving or reformatting a trait keeps
        its caches; the definition and steering spec only feed the judge, whose caches key on them.
        The extraction.yaml settings are not in it: once applied they are part of the effective config,
        which every job key holds, so a setting that the command line overrides changes nothing.
        """

        def rows(examples: list[Example]) -> list[tuple[Any, ...]]:
            return [(e.prompt, e.system_prompt, e.response) + ((e.history,) if e.history else ()) for e in examples]

        return content_hash("trait-v2", rows(self.positive), rows(self.negative), rows(self.ood_positive),
                            rows(self.ood_negative), self.paired)


def default_traits_root() -> Path:
    return paths.datasets_dir() / "traits"


def _has_positive(d: Path) -> bool:
    return any((d / f"positive{ext}").is_file() for ext in FORMATS)


def list_traits(root: Path | None = None) -> list[str]:
    """Every trait under `root` as `category/name` (a trait is a directory with a positive.* file)."""
    root = Path(root) if root is not None else default_traits_root()
    if not root.is_dir():
        return []
    found = []
    for here, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if _has_positive(Path(here)):
            found.append(Path(here).relative_to(root).as_posix())
    return sorted(found)


def resolve_trait_dir(name: str | None = None, path: str | Path | None = None, root: Path | None = None) -> Path:
    """The directory of a trait given by `name` (`category/trait` under `root`) or by any `path` on disk."""
    if name is None and path is None:
        raise ConfigError("trait", "give a trait name (trait=starter/sycophancy) "
                                   "or a directory (trait.path=/some/dir)")
    # A path wins over a name: the config always carries the default trait's name, and `trait.path=/dir`
    # on the command line must pick the directory without also having to unset the name.
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise ConfigError("trait.path", f"{p} is not a directory; expected a trait directory holding "
                                            f"positive.jsonl, positive.json or positive.txt")
        return p.resolve()
    root = Path(root) if root is not None else default_traits_root()
    assert name is not None
    rel = relative_name(name, root, "trait", "starter/sycophancy", "trait.path", "a directory")
    candidate = root / rel
    if candidate.is_dir():
        return resolved_inside(candidate, root, name, "trait", "trait.path", "a directory")
    raise ConfigError("trait", f"no trait {name!r} under {root}; {_available_hint(root, rel.parent)}")


def _available_hint(root: Path, category: Path) -> str:
    everything = list_traits(root)
    if category != Path(".") and (root / category).is_dir():
        prefix = category.as_posix() + "/"
        here = [t for t in everything if t.startswith(prefix)]
        if here:
            return f"available in {category.as_posix()}: {', '.join(here)}"
    if everything:
        return f"available: {', '.join(everything)}"
    return "no traits found there"


def polarity_file(trait_dir: Path, stem: str) -> Path | None:
    """The one data file for a polarity (positive, negative, ood_*); two formats at once is an error."""
    present = [trait_dir / f"{stem}{ext}" for ext in FORMATS if (trait_dir / f"{stem}{ext}").is_file()]
    if len(present) > 1:
        names = " and ".join(p.name for p in present)
        raise DataError(trait_dir, f"two formats for {stem}: {names}; keep exactly one of "
                                   f"{', '.join(stem + e for e in FORMATS)}")
    return present[0] if present else None


def load_examples(path: Path) -> list[Example]:
    """Read one polarity file in whichever format its suffix says."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return _load_jsonl(path)
    if path.suffix == ".json":
        return _load_prompts_json(path)
    if path.suffix == ".txt":
        return [Example(prompt=text, source=f"{path.name}:{n}")
                for n, text in read_nonblank_lines(path, "one prompt per line")]
    raise DataError(path, f"unknown format {path.suffix!r}; expected one of {', '.join(FORMATS)}")


def _load_jsonl(path: Path) -> list[Example]:
    expected = 'one object per line like {"prompt": "...", "system_prompt": "...", "response": "..."}'
    out = []
    for n, obj in read_jsonl(path, expected):
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object per line, got {type_name(obj)}", line=n)
        unknown = sorted(set(obj) - set(EXAMPLE_KEYS))
        if unknown:
            raise DataError(path, f"unknown key {unknown[0]!r}; allowed keys: {', '.join(EXAMPLE_KEYS)}", line=n)
        if "messages" in obj:
            out.append(_conversation(path, n, obj))
            continue
        if "prompt" not in obj:
            raise DataError(path, 'missing key "prompt" (a non-empty string)', line=n)
        prompt = _string(path, n, "prompt", obj["prompt"], allow_empty=False)
        system = _optional_string(path, n, "system_prompt", obj.get("system_prompt"), allow_empty=True)
        response = _optional_string(path, n, "response", obj.get("response"), allow_empty=False)
        out.append(Example(prompt, system, response, source=f"{path.name}:{n}"))
    return out


def _conversation(path: Path, n: int, obj: dict[str, Any]) -> Example:
    """A `messages` line: [system?] then user/assistant alternating; the last user message is the prompt."""
    both = sorted({"prompt", "system_prompt"} & set(obj))
    if both:
        raise DataError(path, f'"messages" and "{both[0]}" together; a conversation carries its own prompt and '
                              "system message", line=n)
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(path, '"messages" must be a non-empty array of {"role", "content"} objects', line=n)
    system, turns, pending = None, [], None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise DataError(path, f'messages[{i}] must be an object with exactly "role" and "content"', line=n)
        role = m["role"]
        content = _string(path, n, f"messages[{i}].content", m["content"], allow_empty=role == "system")
        expected = "user" if pending is None else "assistant"
        if role == "system" and i == 0:
            system = content
        elif role != expected:
            raise DataError(path, f"messages[{i}] has role {role!r}; expected {expected!r} (an optional system "
                                  "message first, then user and assistant turns in turn)", line=n)
        elif role == "user":
            pending = content
        else:
            turns.append((pending, content))
            pending = None
    response = _optional_string(path, n, "response", obj.get("response"), allow_empty=False)
    if pending is None:  # ends with the assistant: that reply is the response
        if not turns:
            raise DataError(path, '"messages" has no user message', line=n)
        if response is not None:
            raise DataError(path, '"messages" ends with an assistant reply and "response" is given too; keep one',
                            line=n)
        pending, response = turns.pop()
    return Example(pending, system, response, source=f"{path.name}:{n}", history=tuple(turns))


def _string(path: Path, line: int | None, key: str, value: Any, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise DataError(path, f'"{key}" must be a string, got {type_name(value)}', line=line)
    if not allow_empty and not value.strip():
        raise DataError(path, f'"{key}" is an empty string; expected text', line=line)
    return value


def _optional_string(path: Path, line: int | None, key: str, value: Any, allow_empty: bool) -> str | None:
    return None if value is None else _string(path, line, key, value, allow_empty)


def _load_prompts_json(path: Path) -> list[Example]:
    doc = read_json_document(path, '{"prompts": [...], "system_prompts": [...]} (system_prompts optional)')
    obj = doc.value
    if not isinstance(obj, dict):
        raise DataError(path, f'expected an object {{"prompts": [...], "system_prompts": [...]}}, '
                              f"got {type_name(obj)}", line=doc.line())
    unknown = sorted(set(obj) - set(PROMPTS_JSON_KEYS))
    if unknown:
        raise DataError(path, f"unknown key {unknown[0]!r}; allowed keys: {', '.join(PROMPTS_JSON_KEYS)}",
                        line=doc.line(unknown[0]))
    if "prompts" not in obj:
        raise DataError(path, 'missing key "prompts" (a non-empty array of strings)', line=doc.line())
    prompts = _string_list(path, doc, "prompts", allow_empty_items=False)
    systems: list[str | None] = [None]
    if obj.get("system_prompts") is not None:
        systems = list(_string_list(path, doc, "system_prompts", allow_empty_items=True))
    return [Example(p, s, source=f"{path.name}:{doc.line('prompts', i)}")
            for i, p in enumerate(prompts) for s in systems]


def _string_list(path: Path, doc: Any, key: str, allow_empty_items: bool) -> list[str]:
    value = doc.value[key]
    if not isinstance(value, list) or not value:
        what = "an empty array" if value == [] else type_name(value)
        raise DataError(path, f'"{key}" must be a non-empty array of strings, got {what}', line=doc.line(key))
    return [_string(path, doc.line(key, i), f"{key}[{i}]", v, allow_empty_items) for i, v in enumerate(value)]


def load_steering(path: Path) -> SteeringSpec:
    path = Path(path)
    doc = read_json_document(path, '{"questions": [...], "direction": "positive"|"negative", "eval_prompt"?: "..."}')
    obj = doc.value
    if not isinstance(obj, dict):
        raise DataError(path, f"expected an object with questions and direction, got {type_name(obj)}",
                        line=doc.line())
    unknown = sorted(set(obj) - set(STEERING_KEYS))
    if unknown:
        raise DataError(path, f"unknown key {unknown[0]!r}; allowed keys: {', '.join(STEERING_KEYS)}",
                        line=doc.line(unknown[0]))
    for key in ("questions", "direction"):
        if key not in obj:
            raise DataError(path, f'missing key "{key}"', line=doc.line())
    questions = _string_list(path, doc, "questions", allow_empty_items=False)
    seen: dict[str, int] = {}
    for i, q in enumerate(questions):
        if q in seen:
            raise DataError(path, f"duplicate question (same as questions[{seen[q]}]); each question once",
                            line=doc.line("questions", i))
        seen[q] = i
    direction = obj["direction"]
    if direction not in DIRECTIONS:
        raise DataError(path, f'"direction" must be one of {", ".join(map(repr, DIRECTIONS))}, got {direction!r}',
                        line=doc.line("direction"))
    eval_prompt = _optional_string(path, doc.line("eval_prompt"), "eval_prompt", obj.get("eval_prompt"),
                                   allow_empty=False)
    return SteeringSpec(questions=list(questions), direction=DIRECTIONS[direction], eval_prompt=eval_prompt)


def _category_and_cascade(trait_dir: Path, root: Path) -> tuple[str, list[Path]]:
    """The trait's category and the extraction.yaml files that apply to it, most general first."""
    root = root.resolve()
    if trait_dir.is_relative_to(root) and trait_dir != root:
        rel = trait_dir.relative_to(root)
        levels = [root / Path(*rel.parts[:i]) for i in range(len(rel.parts) + 1)]
        category = rel.parent.as_posix()
        return ("" if category == "." else category), [d / OVERRIDES_FILE for d in levels]
    # A directory outside the traits root still gets the project-wide defaults, then its own file.
    return trait_dir.parent.name, [root / OVERRIDES_FILE, trait_dir / OVERRIDES_FILE]


def load_overrides(trait_dir: Path, root: Path | None = None) -> dict[str, Any]:
    """Merge the extraction.yaml cascade (global -> category -> trait); later files win key by key."""
    return load_located_overrides(trait_dir, root)[0]


def load_located_overrides(trait_dir: Path, root: Path | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The merged extraction.yaml settings and, per config key they set, the "file:line" that set it."""
    root = Path(root) if root is not None else default_traits_root()
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in _category_and_cascade(Path(trait_dir).resolve(), root)[1]:
        if not f.is_file():
            continue
        values, lines = read_yaml_mapping_lines(f)
        for key, value in values.items():
            if key not in OVERRIDE_KEYS:
                raise DataError(f, f"unknown key {key!r}; allowed keys: {', '.join(OVERRIDE_KEYS)}",
                                line=lines.get((key,)))
            if key != "generation":
                merged[key] = value
                sources[OVERRIDE_KEYS[key]] = f"{f}:{lines.get((key,))}"
                continue
            if not isinstance(value, dict):
                raise DataError(f, f'"generation" must be a mapping of {", ".join(GENERATION_KEYS)}, '
                                   f"got {type_name(value)}", line=lines.get((key,)))
            for sub, v in value.items():
                if sub not in GENERATION_KEYS:
                    raise DataError(f, f"unknown key generation.{sub}; allowed: {', '.join(GENERATION_KEYS)}",
                                    line=lines.get((key, str(sub))))
                merged.setdefault("generation", {})[sub] = v
                sources[f"extraction.generation.{sub}"] = f"{f}:{lines.get((key, sub))}"
    return merged, sources


def _check_stray_files(trait_dir: Path) -> None:
    """A typo like negativ.jsonl would silently make a trait single-polarity; catch near-misses."""
    for f in sorted(trait_dir.iterdir()):
        if f.name in _KNOWN_FILES or f.suffix not in (*FORMATS, ".yaml", ".yml") or not f.is_file():
            continue
        close = difflib.get_close_matches(f.name, sorted(_KNOWN_FILES), n=1, cutoff=0.8)
        if close:
            raise DataError(f, f"unrecognised file name; did you mean {close[0]}? (rename it, or move it out if it is not trait data)")


def load_trait(trait_dir: str | Path, root: Path | None = None) -> TraitDataset:
    """Load and validate a whole trait directory; raises DataError naming file:line on any problem."""
    trait_dir = Path(trait_dir)
    if not trait_dir.is_dir():
        raise DataError(trait_dir, "trait directory not found")
    trait_dir = trait_dir.resolve()
    root = Path(root) if root is not None else default_traits_root()
    _check_stray_files(trait_dir)
    files = {stem: polarity_file(trait_dir, stem) for stem in POLARITIES}
    if files["positive"] is None:
        inside = list_traits(trait_dir)
        hint = f"; this looks like a category holding {', '.join(inside)}" if inside else ""
        raise DataError(trait_dir, f"no positive file; expected one of "
                                   f"{', '.join('positive' + e for e in FORMATS)}{hint}")
    sets = {stem: load_examples(f) if f is not None else [] for stem, f in files.items()}
    paired = files["negative"] is not None
    if paired:
        _check_pair_counts(files["positive"], sets["positive"], files["negative"], sets["negative"])
    definition = None
    if (trait_dir / "definition.txt").is_file():
        definition = read_text(trait_dir / "definition.txt", "the judge rubric as plain text").strip()
    steering = load_steering(trait_dir / "steering.json") if (trait_dir / "steering.json").is_file() else None
    category, _ = _category_and_cascade(trait_dir, root)
    overrides, override_sources = load_located_overrides(trait_dir, root)
    return TraitDataset(
        name=trait_dir.name,
        category=category,
        path=trait_dir,
        positive=sets["positive"],
        negative=sets["negative"],
        ood_positive=sets["ood_positive"],
        ood_negative=sets["ood_negative"],
        definition=definition,
        steering=steering,
        overrides=overrides,
        paired=paired,
        override_sources=override_sources,
    )


def _check_pair_counts(pos_file: Path | None, pos: list[Example], neg_file: Path | None, neg: list[Example]) -> None:
    if len(pos) == len(neg):
        return
    assert pos_file is not None and neg_file is not None
    longer_file, longer = (pos_file, pos) if len(pos) > len(neg) else (neg_file, neg)
    first_unpaired = longer[min(len(pos), len(neg))].source.rsplit(":", 1)[-1]
    raise DataError(longer_file, f"unequal pair counts: {pos_file.name} has {len(pos)} examples, "
                                 f"{neg_file.name} has {len(neg)}; paired files need the same count "
                                 f"(first unpaired example here)", line=int(first_unpaired))
