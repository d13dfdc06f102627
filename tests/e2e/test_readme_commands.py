"""The README's command lines, run verbatim through bash: what a person types must reach the config intact.

Each `python launchers/...` line of the README's bash blocks runs as written (bash strips its quotes, as
for a person). A single run gets `--cfg job` appended (Hydra composes and prints the job's config, nothing
runs); a multirun gets a test launcher appended that composes every job and records its config. Every
`key=value` the line sets must arrive in the composed config as the value bash passed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from traitlab.cli import DSL_KEYS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# Lines that choose a cluster launcher would submit jobs; lines with a|b|c list alternatives or a <placeholder>
# to fill in are templates, not commands.
SKIP = re.compile(r"hydra/launcher=|\s\|\s|<[^>]+>")
# The lines this test is about: DSL values (brackets, colons, commas; the keys the launcher quotes), multiruns,
# and every analysis (list values such as prompt_set=[starter,smoke]).
DSL = re.compile(r"\s(" + "|".join(re.escape(k) for k in DSL_KEYS) + r")=|\s-m\s|^python launchers/analyze\.py")


def readme_commands() -> list[str]:
    """The `python launchers/...` commands of the README's bash blocks (continuations joined, && split) that
    set a DSL value or sweep."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.strip()
                code = part.split("  #")[0]
                if part.startswith("python launchers/") and not SKIP.search(code) and DSL.search(code):
                    commands.append(part)
    return commands


COMMANDS = readme_commands()


def _set_values(command: str) -> dict[str, str]:
    """key -> value as bash passes it (quotes removed), for the plain `key=value` overrides of a command."""
    words = shlex.split(command, comments=True)[2:]
    return {w.split("=", 1)[0]: w.split("=", 1)[1] for w in words
            if "=" in w and not w.startswith(("-", "+", "~", "hydra")) and "/" not in w.split("=", 1)[0]}


def _get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _as_typed(value) -> str:
    if isinstance(value, bool):  # typed true / false, composed as a YAML boolean
        return str(value).lower()
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def test_readme_has_the_dsl_commands() -> None:
    joined = "\n".join(COMMANDS)
    for needle in ("position.spec='response[:5]'", "layers='10-20'", "layers='best,best+5'", " -m ",
                   "monitor_layers=best,best+2"):
        assert needle in joined, needle
    assert any(" -m " in c and "position.spec=" in c for c in COMMANDS), "a multirun over position specs"


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One MLflow store for the module's multiruns (their sweep callback opens a parent run): created once,
    since creating a sqlite store costs far more than composing a config."""
    from traitlab.tracking.store import ensure_store

    uri = f"sqlite:///{tmp_path_factory.mktemp('readme_store') / 'mlflow.db'}"
    ensure_store(uri, "traitlab")
    return uri


@pytest.mark.parametrize("command", COMMANDS, ids=[c.split("  #")[0].strip() for c in COMMANDS])  # -k selects
def test_readme_command_runs_as_typed(command: str, tmp_path: Path, store_uri: str) -> None:
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # keeps the venv (a symlink
    (shim / "python").chmod(0o755)  # to its python would not)
    out = tmp_path / "jobs.jsonl"
    env = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}", TRAITLAB_COMPOSE_OUT=str(out),
               MLFLOW_TRACKING_URI=store_uri, TRAITLAB_OUTPUTS=str(tmp_path / "outputs"),
               PYTHONPATH=os.pathsep.join([str(HERE / "compose_only"), os.environ.get("PYTHONPATH", "")]))
    multirun = " -m " in command
    code = command.split("  #")[0]
    if multirun:
        code += (f" hydra.searchpath=[file://{HERE / 'compose_only'}] hydra/launcher=compose_only"
                 f" hydra.sweep.dir={tmp_path / 'sweep'}")
    else:
        code += " --cfg job"
    proc = subprocess.run(["bash", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    configs = ([json.loads(line)["config"] for line in out.read_text().splitlines()] if multirun
               else [yaml.safe_load(proc.stdout)])
    assert configs
    groups = {d.name for d in (ROOT / "conf").iterdir() if d.is_dir()} | {"trait"}  # trait: registered in code
    for key, typed in _set_values(code).items():
        if key.startswith("hydra.") or key in groups:
            continue  # config group choices (trait=starter/x) select files; the stage tests check their content
        got = {_as_typed(_get(c, key)) for c in configs}
        want = set(_split_sweep(typed)) if multirun else {typed}
        # the list form: layers=[10,12] is layers 10 and 12 in one job, monitor=[a,b] the list [a, b]
        want = {w[1:-1] if w.startswith("[") and w.endswith("]") else w for w in want}
        assert got == want, (key, got, want)


def _split_sweep(value: str) -> list[str]:
    """What a multirun sweeps over: the comma-separated items, a [...] group being one item."""
    return re.findall(r"(?:\[[^\]]*\]|[^,\[])+", value)
