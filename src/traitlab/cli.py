"""Entry points shared by launchers/*.py and the traitlab-* console scripts.

Errors reach the user as one line (what was wrong, where, what was expected); the traceback only with
HYDRA_FULL_ERROR=1. Hydra is told to raise instead of printing its own multi-line report so that its
config errors (unknown option, unknown key) are condensed the same way.
"""

from __future__ import annotations

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
        if text and text not in parts:
            parts.append(text)
        e = e.__cause__
    text = "; ".join(parts) or type(err).__name__
    text = re.sub(r"\n\s*\n", "; ", text)
    text = re.sub(r"\s*\n\s*", " ", text)
    text = re.sub(r":\s*;", ":", text)
    from traitlab.tracking.params import scrub

    return scrub(text)


def run_app(main: Callable[[], Any]) -> None:
    """Run a @hydra.main function, turning any error into one line and exit code 2."""
    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:
        for client, run_id in open_parent_runs:
            try:
                client.set_terminated(run_id, status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            except Exception:  # noqa: BLE001 - reporting the original error matters more
                pass
        if user_full_error:
            raise
        if isinstance(e, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        kind = type(e).__name__
        print(f"error ({kind}): {one_line(e)}", file=sys.stderr)
        sys.exit(2)


def bootstrap() -> None:
    """Register structured configs and point Hydra at conf/."""
    from traitlab.config.store import register_configs

    os.environ.setdefault("TQDM_MININTERVAL", "1")
    register_configs()


def conf_path() -> str:
    from traitlab.paths import conf_dir

    return str(Path(conf_dir()).resolve())


STAGES = ("extract", "steer", "infer", "analyze")


def launch(stage: str) -> None:
    """Run stage `stage`: conf/<stage>.yaml composed by Hydra, task in traitlab.apps.<stage>.task."""
    import importlib

    import hydra

    bootstrap()
    task = importlib.import_module(f"traitlab.apps.{stage}").task
    run_app(hydra.main(version_base="1.3", config_path=conf_path(), config_name=stage)(task))


def extract() -> None:
    launch("extract")


def steer() -> None:
    launch("steer")


def infer() -> None:
    launch("infer")


def analyze() -> None:
    launch("analyze")
