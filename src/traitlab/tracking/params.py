"""Flatten a resolved config into MLflow params, with secrets redacted before anything is stored."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
# A key holds a secret when its last name part says so: `hf_token`, `auth_token`, `api_key`, `openai_api_key`,
# `client_secret`, `password`, `auth_header`. Judged on whole `_`/`-` separated parts, so ordinary settings
# that merely contain such a word (`max_new_tokens`, `max_tokens`, `tokenizer_name`, `author`) stay visible.
_SECRET_LAST_PARTS = {"token", "secret", "password", "passwd", "credential", "credentials", "apikey",
                      "authorization"}
_SECRET_ANY_PARTS = {"secret", "password", "passwd", "credential", "credentials", "auth"}
# Tokenizer settings named like `*_token` hold a vocabulary item, not a credential.
_TOKENIZER_TOKENS = {"pad_token", "bos_token", "eos_token", "unk_token", "sep_token", "cls_token", "mask_token",
                     "add_bos_token", "add_eos_token"}
_SECRET_ENV = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "ANTHROPIC_API_KEY")
_REGISTERED_ENV: set[str] = set()


def _names_secret(name: str, any_part: bool) -> bool:
    parts = [p for p in re.split(r"[_\-]", name.lower()) if p]
    if not parts:
        return False
    if parts[-1] in _SECRET_LAST_PARTS or parts[-2:] in (["api", "key"], ["access", "key"]):
        return True
    return any_part and any(p in _SECRET_ANY_PARTS for p in parts)


def is_secret_key(key: str) -> bool:
    """Whether a config key's value is a credential. `*_env` names an environment variable, not itself secret."""
    leaf = key.rsplit(".", 1)[-1].lower()
    if leaf.endswith("_env") or leaf in _TOKENIZER_TOKENS:
        return False
    return _names_secret(leaf, any_part=True)


def register_secret_env(name: str | None) -> None:
    """Treat the value of environment variable `name` as a credential from now on (e.g. judge.api_key_env)."""
    if name:
        _REGISTERED_ENV.add(name)


def _is_secret_env(name: str) -> bool:
    # Stricter than config keys: SSH_AUTH_SOCK and the like hold paths, not credentials.
    return name in _SECRET_ENV or name in _REGISTERED_ENV or _names_secret(name, any_part=False)


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
    """Values of credential environment variables (the well-known ones, any whose name says it holds a
    credential such as `*_TOKEN` or `*_API_KEY`, and those registered by a config), to scrub from free text."""
    import os

    return sorted({v for k, v in os.environ.items() if _is_secret_env(k) and v and len(v) >= 6}, key=len,
                  reverse=True)


def scrub(text: str) -> str:
    for v in secret_values():
        text = text.replace(v, REDACTED)
    return text


def config_secrets(obj: Any, prefix: str = "") -> list[str]:
    """The values (as text) of secret-looking keys in a nested config, to scrub from files Hydra writes."""
    out: list[str] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            key = f"{prefix}{k}"
            if is_secret_key(key) and isinstance(v, str | int) and not isinstance(v, bool) and len(str(v)) >= 4:
                out.append(str(v))
            else:
                out.extend(config_secrets(v, f"{key}."))
    elif isinstance(obj, list | tuple):
        for v in obj:
            out.extend(config_secrets(v, prefix))
    return out


def scrub_yaml_file(path: Any, secrets: list[str]) -> bool:
    """Replace every occurrence of `secrets` inside the strings of a YAML file (re-dumped, so it stays valid
    YAML); True if the file changed. Hydra writes the composed config and the raw overrides to its output
    dirs (.hydra/*.yaml, multirun.yaml), secrets included."""
    from pathlib import Path

    import yaml

    from traitlab.io import atomic_write_text

    path = Path(path)
    secrets = [s for s in secrets if s]
    if not secrets or not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if not any(s in text for s in secrets):
        return False

    def clean(x: Any) -> Any:
        if isinstance(x, str):
            for s in secrets:
                x = x.replace(s, REDACTED)
            return x
        if isinstance(x, dict):
            return {clean(k): clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        atomic_write_text(path, clean(text))  # not YAML after all: plain text replacement
        return True
    atomic_write_text(path, yaml.safe_dump(clean(data), sort_keys=False, allow_unicode=True))
    return True


_LOG_SECRETS: list[str] = []


def install_log_scrubber(secrets: list[str]) -> None:
    """Redact these values in every log record this process creates from now on, whoever logs it (Hydra's
    launchers log each job's raw overrides). A record factory, not a handler filter: Hydra re-configures
    logging handlers when it launches jobs, but leaves the factory alone."""
    import logging

    new = [s for s in secrets if s and s not in _LOG_SECRETS]
    if not new:
        return
    if not _LOG_SECRETS:
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                msg = record.getMessage()
            except Exception:  # noqa: BLE001 - a bad format string is the logging module's to report
                return record
            if any(s in msg for s in _LOG_SECRETS):
                for s in _LOG_SECRETS:
                    msg = msg.replace(s, REDACTED)
                record.msg, record.args = msg, ()
            return record

        logging.setLogRecordFactory(factory)
    _LOG_SECRETS.extend(new)
