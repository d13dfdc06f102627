"""Flatten a resolved config into MLflow params, with secrets redacted before anything is stored."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential|auth)", re.IGNORECASE)
_SECRET_ENV = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "ANTHROPIC_API_KEY")


def is_secret_key(key: str) -> bool:
    """`*_key_env` names an environment variable, which is not itself secret."""
    leaf = key.rsplit(".", 1)[-1]
    return bool(_SECRET_KEY.search(leaf)) and not leaf.endswith("_env")


def redact(obj: Any, prefix: str = "") -> Any:
    """Copy of a nested dict/list with the values of secret-looking keys replaced."""
    if isinstance(obj, Mapping):
        return {
            k: (REDACTED if is_secret_key(f"{prefix}{k}") and v not in (None, "") else redact(v, f"{prefix}{k}."))
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [redact(v, prefix) for v in obj]
    return obj


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; values stringified and cut to MLflow's param limit."""
    out: dict[str, str] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif prefix:
        out[prefix[:-1]] = str(obj)[:6000]
    return out


def secret_values() -> list[str]:
    """Values of well-known secret env vars, to scrub from any free text we store."""
    import os

    return [v for v in (os.environ.get(k) for k in _SECRET_ENV) if v and len(v) >= 6]


def scrub(text: str) -> str:
    for v in secret_values():
        text = text.replace(v, REDACTED)
    return text
