"""Four-option multiple-choice sets for the capability check: `datasets/capability/<name>.jsonl` or any file.

Layout is MMLU's columns: question, A, B, C, D, answer (a letter A-D), as

- **jsonl**: one object per line with those keys, plus an optional ``category`` (``subject`` is read as
  the same thing, as in MMLU exports), or
- **csv**: rows of six fields in that order, like MMLU's own csv files (no header), or with a header row
  that names the columns (any order; an extra ``category``/``subject`` column is allowed).

Every problem is a `DataError` naming ``file:line`` and what was expected, raised while loading, so a bad
file stops a run before any model loads. Two options with the same text are rejected: the item could not
have one unambiguous correct letter.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlab import paths
from traitlab.data.readers import read_jsonl, read_text, relative_name, resolved_inside, type_name
from traitlab.errors import ConfigError, DataError
from traitlab.io import content_hash

LETTERS = ("A", "B", "C", "D")
COLUMNS = ("question", *LETTERS, "answer")
CATEGORY_KEYS = ("category", "subject")
FORMATS = (".jsonl", ".csv")
_EXPECTED_JSONL = '{"question": "...", "A": "...", "B": "...", "C": "...", "D": "...", "answer": "A".."D"}'
_EXPECTED_CSV = "question,A,B,C,D,answer (six fields; answer a letter A-D)"


@dataclass(frozen=True)
class ChoiceItem:
    """One question with four options; `answer` is the index (0-3) of the correct option."""

    question: str
    options: tuple[str, str, str, str]
    answer: int
    category: str = ""
    line: int = 0  # 1-based line of the record in its file, for messages about it

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


@dataclass
class ChoiceSet:
    name: str
    path: Path
    items: list[ChoiceItem]

    def fingerprint(self) -> str:
        return content_hash("choice-set-v1", [(i.question, i.options, i.answer, i.category) for i in self.items])

    def categories(self) -> list[str]:
        return sorted({i.category for i in self.items})

    def composition(self) -> dict[str, dict[str, int]]:
        """Counts per category and per correct letter (a set should not favour one letter)."""
        return {"category": dict(sorted(Counter(i.category for i in self.items).items())),
                "answer": {L: sum(i.answer_letter == L for i in self.items) for L in LETTERS}}


def default_choice_sets_root() -> Path:
    return paths.datasets_dir() / "capability"


def list_choice_sets(root: Path | None = None) -> list[str]:
    root = Path(root) if root is not None else default_choice_sets_root()
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*") if p.suffix in FORMATS)


def resolve_choice_set(name: str | None = None, path: str | Path | None = None, root: Path | None = None) -> Path:
    """The file of a set given by `name` (under datasets/capability/, suffix optional) or by any `path`."""
    if (name is None) == (path is None):
        raise ConfigError("capability", "give exactly one of a set name (capability.set=starter) or a file "
                                        "(capability.path=/some/mmlu.csv)")
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError("capability.path", f"{p} is not a file; expected a .jsonl or .csv multiple-choice "
                                                 "file (question, A, B, C, D, answer)")
        return p.resolve()
    assert name is not None
    root = Path(root) if root is not None else default_choice_sets_root()
    rel = relative_name(name, root, "capability.set", "starter", "capability.path", "a file")
    candidates = [root / rel] if rel.suffix in FORMATS else [root / f"{name}{s}" for s in FORMATS]
    found = [c for c in candidates if c.is_file()]
    if not found:
        available = list_choice_sets(root)
        hint = f"available: {', '.join(available)}" if available else "no sets found there"
        raise ConfigError("capability.set", f"no multiple-choice set {name!r} under {root}; {hint}")
    if len(found) > 1:
        raise ConfigError("capability.set", f"{name!r} exists as both {found[0].name} and {found[1].name} "
                                            f"under {root}; name the file with its suffix")
    return resolved_inside(found[0], root, name, "capability.set", "capability.path", "a file")


def load_choice_set(name: str | None = None, path: str | Path | None = None, root: Path | None = None) -> ChoiceSet:
    """Resolve and validate a multiple-choice set; any problem is a DataError naming file:line."""
    file = resolve_choice_set(name, path, root)
    if file.suffix == ".jsonl":
        items = _read_jsonl(file)
    elif file.suffix == ".csv":
        items = _read_csv(file)
    else:
        raise DataError(file, f"unknown multiple-choice format {file.suffix!r}; expected one of {', '.join(FORMATS)}")
    if not items:
        raise DataError(file, "no questions; expected at least one row of question, A, B, C, D, answer")
    return ChoiceSet(name=name or file.stem, path=file, items=items)


# ----------------------------------------------------------------------------------------- one record


def _item(path: Path, line: int, fields: dict[str, Any], expected: str) -> ChoiceItem:
    """A validated item from a record's fields (jsonl object or csv row mapped to column names)."""
    texts = {}
    for key in COLUMNS[:-1]:
        value = fields.get(key)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise DataError(path, f'"{key}" must be text, got {type_name(value)}; expected {expected}', line=line)
        text = str(value).strip()
        if not text:
            raise DataError(path, f'"{key}" is empty; expected {expected}', line=line)
        texts[key] = text
    answer = fields.get("answer")
    letter = answer.strip().upper() if isinstance(answer, str) else None
    if letter not in LETTERS:
        raise DataError(path, f'"answer" is {answer!r}; expected one of the letters A, B, C, D', line=line)
    options = tuple(texts[L] for L in LETTERS)
    seen: dict[str, str] = {}
    for L, text in zip(LETTERS, options, strict=True):
        key = " ".join(text.lower().split())
        if key in seen:
            raise DataError(path, f"options {seen[key]} and {L} are the same text ({text!r}); expected four "
                                  "different options so one letter is unambiguously correct", line=line)
        seen[key] = L
    category = ""
    for key in CATEGORY_KEYS:
        value = fields.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise DataError(path, f'"{key}" must be text, got {type_name(value)}', line=line)
            category = value.strip()
    return ChoiceItem(question=texts["question"], options=options,  # type: ignore[arg-type]
                      answer=LETTERS.index(letter), category=category, line=line)


def _read_jsonl(path: Path) -> list[ChoiceItem]:
    allowed = set(COLUMNS) | set(CATEGORY_KEYS) | {"id"}
    items = []
    for line, obj in read_jsonl(path, _EXPECTED_JSONL):
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object {_EXPECTED_JSONL}, got {type_name(obj)}", line=line)
        missing = [k for k in COLUMNS if k not in obj]
        if missing:
            raise DataError(path, f"missing key(s) {', '.join(repr(k) for k in missing)}; expected {_EXPECTED_JSONL}",
                            line=line)
        unknown = sorted(k for k in obj if k not in allowed)
        if unknown:
            raise DataError(path, f"unknown key {unknown[0]!r}; expected the keys {', '.join(COLUMNS)} "
                                  f"(optional: {', '.join(CATEGORY_KEYS)}, id)", line=line)
        if "category" in obj and "subject" in obj:
            raise DataError(path, 'both "category" and "subject" given; expected one of them', line=line)
        items.append(_item(path, line, obj, _EXPECTED_JSONL))
    return items


def _read_csv(path: Path) -> list[ChoiceItem]:
    text = read_text(path, _EXPECTED_CSV)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    items: list[ChoiceItem] = []
    columns: list[str] | None = None
    end = 0  # physical line where the previous record ended; a record starts on the next non-blank line
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row or all(not f.strip() for f in row):
                continue
            if columns is None and not items and _is_header(row):
                columns = _header_columns(path, start, row)
                continue
            names = columns or list(COLUMNS)
            if len(row) != len(names):
                raise DataError(path, f"{len(row)} fields; expected {len(names)} "
                                      f"({', '.join(names)})" + ("" if columns else f": {_EXPECTED_CSV}"),
                                line=start)
            items.append(_item(path, start, dict(zip(names, row, strict=True)), _EXPECTED_CSV))
    except csv.Error as e:
        raise DataError(path, f"malformed csv ({e}); expected {_EXPECTED_CSV}, fields with commas in double quotes",
                        line=reader.line_num or 1) from None
    return items


def _is_header(row: list[str]) -> bool:
    return {f.strip().lower() for f in row} >= {"question", "answer"}


def _header_columns(path: Path, line: int, row: list[str]) -> list[str]:
    names = [f.strip() for f in row]
    canon = [n.upper() if n.upper() in LETTERS else n.lower() for n in names]
    allowed = set(COLUMNS) | set(CATEGORY_KEYS)
    unknown = [n for n, c in zip(names, canon, strict=True) if c not in allowed]
    if unknown:
        raise DataError(path, f"unknown column {unknown[0]!r} in the header; expected {', '.join(COLUMNS)} "
                              f"(optional: {', '.join(CATEGORY_KEYS)})", line=line)
    dupes = [c for c, n in Counter(canon).items() if n > 1]
    if dupes:
        raise DataError(path, f"column {dupes[0]!r} appears twice in the header", line=line)
    missing = [c for c in COLUMNS if c not in canon]
    if missing:
        raise DataError(path, f"header lacks the column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}",
                        line=line)
    if "category" in canon and "subject" in canon:
        raise DataError(path, 'header has both "category" and "subject"; expected one of them', line=line)
    return canon
