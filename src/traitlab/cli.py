"""Entry points shared by launchers/*.py and the traitlab-* console scripts.

Errors reach the user as one line (what was wrong, where, what was expected); the traceback only with
HYDRA_FULL_ERROR=1. Hydra is told to raise instead of printing its own multi-line report so that its
config errors (unknown option, unknown key) are condensed the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("traitlab")

# Runs to mark FAILED if the process dies on an error before finishing them (set by the sweep callback).
open_parent_runs: list[tuple[Any, str]] = []


def one_line(err: BaseException) -> str:
    """Condense an exception (and Hydra/OmegaConf causes) into one readable line."""
    parts = []
    seen = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).strip()
        override = getattr(e, "override", None)  # Hydra's parse errors do not name the override themselves
        if isinstance(override, str) and override and override not in text:
            text = f"override {redact_override(override)!r}: {text}"
        if text and text not in parts:
            parts.append(text)
        e = e.__cause__
    text = "; ".join(parts) or type(err).__name__
    text = re.sub(r"\n\s*\n", "; ", text)
    text = re.sub(r"\s*\n\s*", " ", text)
    text = re.sub(r":\s*;", ":", text)
    from traitlab.tracking.params import scrub

    return scrub(text)


def redact_override(override: str) -> str:
    """'+model.extra.hf_token=abc' -> '+model.extra.hf_token=***': overrides end up in messages and tags."""
    from traitlab.tracking.params import REDACTED, is_secret_key

    key, sep, _ = override.partition("=")
    return f"{key}{sep}{REDACTED}" if sep and is_secret_key(key.lstrip("+~")) else override


_HYDRA_JOB_ERROR = "Error executing job with overrides: "


class _HydraJobErrorFilter:
    """sys.stderr minus Hydra's own "Error executing job with overrides: [...]" line, which it writes
    before re-raising: our one-line error follows it, and the raw overrides may hold a secret."""

    def __init__(self, stream: Any):
        self._stream = stream
        self.failed_job: str | None = None

    def write(self, text: str) -> int:
        if text.startswith(_HYDRA_JOB_ERROR):
            self.failed_job = text[len(_HYDRA_JOB_ERROR):].strip()
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _failed_job_note(raw: str | None) -> str:
    """' in job [a=1, b=2]' for a multirun (which job failed matters there), '' for a single run."""
    if not raw or not any(a in ("-m", "--multirun") for a in sys.argv[1:]):
        return ""
    import ast

    try:
        overrides = [redact_override(str(o)) for o in ast.literal_eval(raw)]
    except (ValueError, SyntaxError):
        return ""
    return f" in job [{', '.join(overrides)}]"


def run_app(main: Callable[[], Any]) -> None:
    """Run a @hydra.main function, turning any error into one line and exit code 2."""
    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    real_stderr = sys.stderr
    stderr = _HydraJobErrorFilter(real_stderr)
    sys.stderr = stderr
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:
        for client, run_id in open_parent_runs:
            with contextlib.suppress(Exception):  # reporting the original error matters more
                client.set_terminated(run_id, status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        sys.stderr = real_stderr
        if user_full_error:
            raise
        if isinstance(e, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        kind = type(e).__name__
        print(f"error ({kind}){_failed_job_note(stderr.failed_job)}: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    finally:
        sys.stderr = real_stderr


def bootstrap() -> None:
    """Register structured configs and point Hydra at conf/."""
    from traitlab.config.store import register_configs

    os.environ.setdefault("TQDM_MININTERVAL", "1")
    register_configs()


def conf_path() -> str:
    from traitlab.paths import conf_dir

    return str(Path(conf_dir()).resolve())


def reject_unknown_keys(cfg: Any, prefix: str = "") -> None:
    """Fail on keys a structured config does not declare. `+extraction.valsplit=0.3` force-adds a key Hydra
    would otherwise reject, and OmegaConf.to_object then drops it without a word: a typo must not be a no-op."""
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    from traitlab.errors import ConfigError

    if not isinstance(cfg, DictConfig):
        return
    kind = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(kind):
        fields = [f.name for f in dataclasses.fields(kind)]
        for key in cfg:
            if key not in fields:
                raise ConfigError(f"{prefix}{key}", f"unknown key; valid keys here: {', '.join(fields)}")
    for key in cfg:
        if key != "hydra":
            reject_unknown_keys(cfg._get_node(key), f"{prefix}{key}.")


def _checked(task: Callable[[Any], Any]) -> Callable[[Any], Any]:
    import functools

    @functools.wraps(task)  # Hydra unwraps __wrapped__ to name the job after the real task
    def run(cfg: Any) -> Any:
        reject_unknown_keys(cfg)
        return task(cfg)

    return run


# Keys whose values are written in the position / layer DSLs (core/positions.py, core/layers.py), in every
# stage: position.spec (extract, steer, export, serve), position (generate, chat: a DSL string; elsewhere a
# group choice, which Hydra takes quoted too), layers, monitor_layers (generate, chat), inference.position.
# Their brackets, colons and commas clash with Hydra's override grammar, and bash strips the quotes a person
# types.
DSL_KEYS = ("position.spec", "position", "layers", "monitor_layers", "inference.position")
_HYDRA_VALUE = re.compile(r"^(null|\$\{.*|(range|choice|interval|glob|shuffle|sort|tag|extend_list)\(.*)$")


def _split_top_level(value: str) -> list[str]:
    """'response[:5],prompt[-1]' -> ['response[:5]', 'prompt[-1]']: commas inside brackets stay."""
    parts, depth, cur = [], 0, ""
    for ch in value:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def _quoted(value: str, key: str) -> str:
    if key in ("layers", "monitor_layers") and value.startswith("[") and value.endswith("]"):
        value = value[1:-1]  # layers=[10,12]: one list, in the DSL's own comma form
    return f"'{value}'" if "'" not in value else f'"{value}"'


def quote_dsl_overrides(args: list[str]) -> list[str]:
    """Quote DSL values so Hydra's grammar takes them as written: `position.spec=response[:5]` ->
    `position.spec='response[:5]'`, `layers=best,best+5` -> `layers='best,best+5'`.

    In a multirun (-m) a comma outside brackets still sweeps, each value quoted alone
    (`position.spec=response[:5],prompt[-1]` is two jobs); there `layers=[10,12]` is one job over layers 10
    and 12. Values already quoted, null, interpolations and Hydra's sweep functions (range(...)) pass as given.
    """
    multirun = any(a in ("-m", "--multirun") for a in args)
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        bare = key.lstrip("+~")
        if not sep or arg.startswith("-") or bare not in DSL_KEYS or not value or value[0] in "'\"" \
                or _HYDRA_VALUE.match(value):
            out.append(arg)
            continue
        values = _split_top_level(value) if multirun else [value]
        out.append(f"{key}=" + ",".join(v if not v or v[0] in "'\"" else _quoted(v, bare) for v in values))
    return out


def launch(stage: str) -> None:
    """Run stage `stage`: conf/<stage>.yaml composed by Hydra, task in traitlab.apps.<stage>.task."""
    import importlib

    import hydra

    bootstrap()
    sys.argv[1:] = quote_dsl_overrides(sys.argv[1:])
    task = _checked(importlib.import_module(f"traitlab.apps.{stage}").task)
    run_app(hydra.main(version_base="1.3", config_path=conf_path(), config_name=stage)(task))


def extract() -> None:
    launch("extract")


def steer() -> None:
    launch("steer")


def infer() -> None:
    launch("infer")


def analyze() -> None:
    launch("analyze")


def generate() -> None:
    launch("generate")


def chat() -> None:
    launch("chat")


def export() -> None:
    launch("export")


def serve() -> None:
    launch("serve")


# `traitlab <subcommand> [overrides...]`: name -> (entry point taking no arguments, one-line help). A new
# subcommand joins by adding a row; its entry point reads sys.argv[1:] like any console script.
SUBCOMMANDS: dict[str, tuple[Callable[[], None], str]] = {
    "extract": (extract, "stage 1: extract trait vectors (Hydra overrides: trait=... method=... layers=...)"),
    "steer": (steer, "stage 2: validate vectors by steering, Optuna coefficient search"),
    "infer": (infer, "stage 3: per-token trait scores and views"),
    "analyze": (analyze, "analyses: geometry, logit lens, correlation, dynamics, top spans, model diff"),
    "generate": (generate, "stage 4: generate with vectors applied, traits monitored per token, side by side"),
    "chat": (chat, "chat with the steered model in this terminal; tokens coloured by a monitored trait"),
    "export": (export, "write vectors as a llama.cpp control-vector GGUF"),
    "serve": (serve, "register a steering configuration as an MLflow model for `mlflow models serve`"),
}


def main(argv: list[str] | None = None) -> None:
    """The `traitlab` command: dispatch to a subcommand with the remaining arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        width = max(map(len, SUBCOMMANDS))
        rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items())
        print(f"usage: traitlab <subcommand> [overrides...]\n\nsubcommands:\n{rows}\n\n"
              "`traitlab <subcommand> --help` shows a subcommand's options.")
        sys.exit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}; expected one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"traitlab {name}", *rest]
    SUBCOMMANDS[name][0]()


if __name__ == "__main__":
    main()
