"""Low-level readers shared by trait and prompt-set loading.

Every reader fails with a `DataError` that names the file and the 1-based line, so a typo in a
dataset stops a run before any model loads. Text policy, applied to every file:

- UTF-8 only; a leading byte-order mark is accepted silently (decoded as ``utf-8-sig``) because
  Windows editors add one and it carries no meaning.
- Undecodable bytes are reported with their line and byte offset.
- A line longer than 1 MiB is rejected: no prompt is that long, so it is a mis-saved binary or a
  minified dump, and failing early beats tokenising megabytes. (Pretty-print big JSON documents.)
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field
from json.decoder import scanstring
from pathlib import Path
from typing import Any

import yaml

from traitlab.errors import ConfigError, DataError

MAX_LINE_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"
_WS = re.compile(r"[ \t\n\r]*")

JsonPath = tuple[str | int, ...]


def relative_name(name: str, root: Path, key: str, example: str, path_key: str, what: str) -> Path:
    """A dataset name as a path below `root`; a name that could escape it ('..', absolute, '~') or is empty
    is a ConfigError on `key` that points to `path_key` for `what` (a file, a directory) elsewhere."""
    rel = Path(name)
    if not name.strip() or rel.is_absolute() or ".." in rel.parts or name.startswith("~"):
        raise ConfigError(key, f"{name!r} must be a relative name like {example} under {root} "
                               f"(no '..', no absolute path); use {path_key}= for {what} elsewhere")
    return rel


def resolved_inside(candidate: Path, root: Path, name: str, key: str, path_key: str, what: str) -> Path:
    """`candidate` resolved, unless a symlink takes it outside `root` (ConfigError on `key`)."""
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ConfigError(key, f"{name!r} leads outside {root} (symlink to {resolved}); "
                               f"use {path_key}= to load {what} elsewhere")
    return resolved


def read_text(path: str | Path, expected: str, allow_empty: bool = False) -> str:
    """Decode a whole file after the checks above; `expected` describes the format for the empty-file error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, f"file not found; expected {expected}") from None
    except IsADirectoryError:
        raise DataError(path, f"is a directory; expected a file with {expected}") from None
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror}); expected a readable file with {expected}") from None
    offset = len(_BOM) if data.startswith(_BOM) else 0
    _check_line_lengths(path, data, offset)
    try:
        text = data[offset:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = offset + e.start
        line = data.count(b"\n", 0, at) + 1
        raise DataError(path, f"not UTF-8 text (byte 0x{data[at]:02x} at byte offset {at}); save the file as UTF-8",
                        line=line) from None
    if not text.strip() and not allow_empty:
        raise DataError(path, f"empty file; expected {expected}")
    return text


def _check_line_lengths(path: Path, data: bytes, start: int) -> None:
    line = 1
    while start <= len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        if end - start > MAX_LINE_BYTES:
            raise DataError(path, f"line longer than 1 MiB ({end - start} bytes); expected one short record per line",
                            line=line)
        start = end + 1
        line += 1


def _lines(text: str) -> list[tuple[int, str]]:
    # Split on "\n" only: str.splitlines() also breaks on U+2028 etc., which would make our line
    # numbers disagree with the editor's.
    return [(i, raw.rstrip("\r")) for i, raw in enumerate(text.split("\n"), start=1)]


def read_nonblank_lines(path: str | Path, expected: str = "one prompt per line") -> list[tuple[int, str]]:
    """(line number, stripped text) for each non-blank line."""
    text = read_text(path, expected)
    return [(n, s.strip()) for n, s in _lines(text) if s.strip()]


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f'duplicate key "{k}"')
        out[k] = v
    return out


def read_jsonl(path: str | Path, expected: str = "one JSON object per line") -> list[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; bad JSON and duplicate keys name their line."""
    path = Path(path)
    out = []
    for n, line in _lines(read_text(path, expected)):
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=_reject_duplicate_keys)
        except json.JSONDecodeError as e:
            raise DataError(path, f"invalid JSON ({e.msg} at column {e.colno}); expected {expected}", line=n) from None
        except ValueError as e:
            raise DataError(path, f"{e}; expected {expected}", line=n) from None
        out.append((n, value))
    return out


@dataclass
class LocatedJson:
    """A parsed JSON document plus the line where each value starts, so checks can point at it."""

    value: Any
    _lines: dict[JsonPath, int] = field(default_factory=dict, repr=False)

    def line(self, *where: str | int) -> int | None:
        """Line of the value at `where` (keys and indices), falling back to its nearest located parent."""
        where_t: JsonPath = tuple(where)
        while where_t not in self._lines and where_t:
            where_t = where_t[:-1]
        return self._lines.get(where_t)


def read_json_document(path: str | Path, expected: str) -> LocatedJson:
    """Parse a whole JSON file; syntax errors and duplicate keys name their line."""
    path = Path(path)
    text = read_text(path, expected)
    try:
        value = json.loads(text)
        return LocatedJson(value, _value_lines(path, text))
    except json.JSONDecodeError as e:
        raise DataError(path, f"invalid JSON ({e.msg} at column {e.colno}); expected {expected}",
                        line=e.lineno) from None
    except RecursionError:
        raise DataError(path, f"JSON nested too deeply; expected {expected}") from None


def _value_lines(path: Path, text: str) -> dict[JsonPath, int]:
    """Map each value's JSON path to its start line. Runs on text json.loads already accepted."""
    newlines = [i for i, c in enumerate(text) if c == "\n"]
    decoder = json.JSONDecoder()
    out: dict[JsonPath, int] = {}

    def line_at(i: int) -> int:
        return bisect.bisect_left(newlines, i) + 1

    def ws(i: int) -> int:
        return _WS.match(text, i).end()  # type: ignore[union-attr]

    def walk(i: int, where: JsonPath) -> int:
        i = ws(i)
        out[where] = line_at(i)
        c = text[i]
        if c not in "{[":
            return decoder.raw_decode(text, i)[1]
        close = "}" if c == "{" else "]"
        i = ws(i + 1)
        if text[i] == close:
            return i + 1
        index = 0
        seen: set[str] = set()
        while True:
            if c == "{":
                key, i = scanstring(text, i + 1)
                if key in seen:
                    raise DataError(path, f'duplicate key "{key}"', line=line_at(i))
                seen.add(key)
                i = ws(i) + 1  # past ':'
                i = walk(i, (*where, key))
            else:
                i = walk(i, (*where, index))
                index += 1
            i = ws(i)
            if text[i] == close:
                return i + 1
            i = ws(i + 1)  # past ','

    walk(0, ())
    return out


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty mapping, unlike other formats)."""
    return read_yaml_mapping_lines(path)[0]


def read_yaml_mapping_lines(path: str | Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """`read_yaml_mapping` plus the 1-based line of each key: {("a",): 3, ("a", "b"): 4} for nested keys."""
    path = Path(path)
    text = read_text(path, "a YAML mapping", allow_empty=True)
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, where: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    lines[(*where, key.value)] = key.start_mark.line + 1
                    walk(value, (*where, key.value))

    try:
        walk(yaml.compose(text, Loader=yaml.SafeLoader), ())
        value = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark is not None else None
        raise DataError(path, f"invalid YAML ({e.problem}); expected a mapping of key: value", line=line) from None
    except yaml.YAMLError as e:
        raise DataError(path, f"invalid YAML ({e}); expected a mapping of key: value") from None
    if value is None:
        return {}, lines
    if not isinstance(value, dict):
        raise DataError(path, f"expected a mapping of key: value at the top level, got {type(value).__name__}", line=1)
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise DataError(path, f"keys must be strings, got {bad[0]!r}")
    return value, lines


def type_name(value: Any) -> str:
    """JSON's name for a Python value's type, for messages a dataset author understands."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
