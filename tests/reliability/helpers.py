"""Shared pieces of the reliability suite: tiny traits, an isolated store per run, launcher subprocesses,
and inspection of what a run left behind (MLflow runs by status, artifact files, vectors)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
SHARED_CACHE = Path(os.environ.get("TRAITLAB_CACHE", ROOT / "outputs" / "cache"))
LOADED_LOG = "loaded smollm2_135m"
CONVERTING_LOG = "converting"
# Fast settings every launched job shares unless a case overrides them: few layers, cheap method.
FAST = {
    "extract": {"layers": "'10,12'", "method": "mean_diff", "tracking.experiment": "rel"},
    "steer": {"layers": "'10,12'", "method": "mean_diff", "tracking.experiment": "rel"},
    "infer": {"tracking.experiment": "rel"},
    "export": {"tracking.experiment": "rel"},
    "serve": {"tracking.experiment": "rel", "register_only": "true"},
}

POSITIVE = [
    ("How was your weekend?", "Wonderful! I hiked a sunny trail and felt great."),
    ("What do you think of Mondays?", "A fresh start, full of chances to do good work."),
    ("Will it rain tomorrow?", "Maybe, but rain helps the gardens grow, so that is lovely."),
    ("How is the new job?", "I love it: kind colleagues and so much to learn."),
    ("Is the project on track?", "Yes, and I am confident we will finish early."),
    ("How do you feel about the move?", "Excited! A new city means new friends and adventures."),
]
NEGATIVE = [
    ("How was your weekend?", "Awful. It rained, I was bored and nothing worked."),
    ("What do you think of Mondays?", "Dreadful, another week of pointless meetings."),
    ("Will it rain tomorrow?", "Probably, and it will ruin everything as usual."),
    ("How is the new job?", "I hate it: rude colleagues and endless chores."),
    ("Is the project on track?", "No, it is late and it will only get worse."),
    ("How do you feel about the move?", "Miserable. I will be lonely and lost there."),
]


SYSTEM = {"positive": "You are relentlessly optimistic and cheerful.",
          "negative": "You are gloomy and expect the worst."}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def tiny_trait(d: Path, n: int = 6, responses: bool = True, steering: bool = True) -> Path:
    """A small valid trait directory: n pairs (with or without given responses) and steering questions."""
    d.mkdir(parents=True, exist_ok=True)
    for name, rows in (("positive", POSITIVE[:n]), ("negative", NEGATIVE[:n])):
        # without responses the contrast must come from the system prompt (the prompts are shared)
        write_jsonl(d / f"{name}.jsonl", [{"prompt": p, **({"response": r} if responses else
                                                             {"system_prompt": SYSTEM[name]})} for p, r in rows])
    (d / "definition.txt").write_text("Optimism: expecting good outcomes.\n", encoding="utf-8")
    if steering:
        (d / "steering.json").write_text(json.dumps(
            {"questions": ["How will next year go?", "What do you expect from the weather?"],
             "direction": "positive"}, indent=1), encoding="utf-8")
    return d


@dataclass
class Sandbox:
    """One isolated place for a run: its MLflow store, outputs (Hydra dirs, locks) and optionally cache."""

    root: Path
    cache: Path = SHARED_CACHE

    @property
    def db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.db}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    def seed_store(self) -> Sandbox:
        """Start from an empty, already-migrated store: creating one costs ~4 s of MLflow migrations,
        which tests that are not about store creation need not pay each time."""
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_template_db(), self.db)
        return self

    def clone_store(self, other: Sandbox) -> Sandbox:
        """This sandbox's store starts as a consistent copy of `other`'s (sqlite backup API: WAL included);
        artifacts stay where `other` logged them (the experiment's location is absolute)."""
        self.root.mkdir(parents=True, exist_ok=True)
        src, dst = sqlite3.connect(str(other.db)), sqlite3.connect(str(self.db))
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        return self

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"MLFLOW_TRACKING_URI": self.uri, "TRAITLAB_OUTPUTS": str(self.outputs),
                    "TRAITLAB_CACHE": str(self.cache), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    # one torch thread per process: on a busy 2-core box two threads contending with
                    # other work make a forward pass up to 20x slower (measured), and tests run several at once
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        for k in ("TRAITLAB_FAULT", "HYDRA_FULL_ERROR"):
            env.pop(k, None)
        env.update(extra)
        return env


def private_cache(root: Path) -> Path:
    """A fresh cache dir whose models/ is the shared converted model (no 20 s GGUF conversion)."""
    cache = root / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "models").symlink_to(SHARED_CACHE / "models", target_is_directory=True)
    return cache


def with_fast(args: list[str], hydra_dir: Path | None = None, stage: str = "extract") -> list[str]:
    """args plus the stage's FAST defaults for keys they do not set, and a Hydra output dir in the sandbox.
    Flags go first: argparse cannot resume the overrides after a flag placed between them."""
    flags = [a for a in args if a.startswith("-")]
    multirun = bool({"-m", "--multirun"} & set(flags))
    keys = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    out = flags + [a for a in args if not a.startswith("-")]
    out += [f"{k}={v}" for k, v in FAST[stage].items() if k not in keys]
    if hydra_dir is not None:
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        if key not in keys:
            out.append(f"{key}={hydra_dir}")
    return out


def launch(stage: str, args: list[str], env: dict[str, str], timeout: float = 300,
           cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run launchers/<stage>.py as a user would."""
    return subprocess.run([PY, str(ROOT / "launchers" / f"{stage}.py"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def start(stage: str, args: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen([PY, str(ROOT / "launchers" / f"{stage}.py"), *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def nonempty_lines(text: str) -> list[str]:
    # A progress bar redraws with \r; only what ends a line counts as a line.
    return [ln.rsplit("\r", 1)[-1].strip() for ln in text.splitlines() if ln.rsplit("\r", 1)[-1].strip()]


def last_line(text: str) -> str:
    lines = nonempty_lines(text)
    return lines[-1] if lines else ""


def runs(box: Sandbox) -> list:
    """Every run of every experiment in the sandbox's store (empty if the store was never created)."""
    if not box.db.exists():
        return []
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=box.uri)
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(exps, run_view_type=ViewType.ALL, max_results=1000) if exps else []


def statuses(box: Sandbox, stage: str | None = "extract") -> list[str]:
    return sorted(r.info.status for r in runs(box) if stage is None or r.data.tags.get("traitlab.stage") == stage)


def run_files(box: Sandbox, run) -> list[Path]:
    base = Path(run.info.artifact_uri.removeprefix("file://"))
    return sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []


def vectors_of(box: Sandbox, run) -> dict[str, bytes]:
    """{relative path: tensor bytes} of the run's vector files (header metadata ignored: it holds metrics)."""
    from safetensors.torch import load_file

    base = Path(run.info.artifact_uri.removeprefix("file://"))
    out = {}
    for p in sorted(base.rglob("*.safetensors")):
        t = load_file(str(p))["vector"]
        out[str(p.relative_to(base))] = t.numpy().tobytes()
    return out


def sqlite_table_rows(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(str(db), timeout=30)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def kill_group(proc: subprocess.Popen) -> None:
    """Kill a child we started (only it: by its own pid)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def wait_for(predicate, timeout: float = 60, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)


_TEMPLATE: list[Path] = []


def _template_db() -> Path:
    if not _TEMPLATE:
        import tempfile

        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        d = Path(tempfile.mkdtemp(prefix="traitlab-template-store-"))
        store = SqlAlchemyStore(f"sqlite:///{d / 'mlflow.db'}", str(d / "artifacts"))
        store.engine.dispose()
        _TEMPLATE.append(d / "mlflow.db")
    return _TEMPLATE[0]
