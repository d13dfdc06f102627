"""Errors that print as one readable line: where (file:line or config key) and what was expected."""

from __future__ import annotations

from pathlib import Path


class TraitlabError(Exception):
    """Base class: the message is the whole story, shown without a traceback by the launchers."""


class ConfigError(TraitlabError):
    """A config key holds a value we cannot use."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config {key}: {message}")


class DataError(TraitlabError):
    """A data file is malformed; names the file and, when known, the 1-based line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


class ModelError(TraitlabError):
    """The model or its architecture is not usable as asked."""
