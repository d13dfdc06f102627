"""The MLflow store: embedded sqlite by default, any tracking server via MLFLOW_TRACKING_URI.

MLflow 3.17 crashes when several processes create a fresh sqlite store at once (alembic "expected to
match one row"), so the store and the experiment are created once under a file lock; the database is
switched to WAL mode so parallel jobs can write while others read.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from traitlab.paths import project_root

log = logging.getLogger(__name__)
T = TypeVar("T")


def mlruns_dir() -> Path:
    return Path(os.environ.get("TRAITLAB_MLRUNS", project_root() / "mlruns"))


def tracking_uri(explicit: str | None = None) -> str:
    """explicit > $MLFLOW_TRACKING_URI > sqlite:///<project>/mlruns/mlflow.db."""
    if explicit:
        return explicit
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(mlruns_dir() / 'mlflow.db').resolve()}"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """Absolute artifact location for experiments of an embedded store (None: let the server decide)."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / "artifacts").resolve().as_uri()


def is_locked_error(err: BaseException) -> bool:
    text = str(err).lower()
    return "database is locked" in text or "database table is locked" in text


def with_retries(fn: Callable[..., T], attempts: int = 8) -> Callable[..., T]:
    """Retry a store call on sqlite lock contention with jittered backoff."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        for i in range(attempts):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - only lock errors are retried
                if not is_locked_error(e) or i == attempts - 1:
                    raise
                time.sleep(min(2.0, 0.05 * 2**i) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    return wrapper


class RetryingClient:
    """MlflowClient whose every call retries on 'database is locked'."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=uri)
        self.uri = uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        return with_retries(attr) if callable(attr) else attr


def ensure_store(uri: str | None = None, experiment: str = "traitlab") -> tuple[RetryingClient, str]:
    """Create (once, under a lock) the store and the experiment; return a client and the experiment id."""
    uri = tracking_uri(uri)
    db = _sqlite_path(uri)
    lock = None
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(db) + ".init.lock")
        lock.acquire(timeout=600)
    # MLflow logs its schema migration at INFO ("Creating initial MLflow database tables...") on stderr,
    # around our one-line messages: keep the library at WARNING like every other one.
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        client = RetryingClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = client.create_experiment(experiment, artifact_location=_experiment_artifacts(uri, experiment))
        else:
            exp_id = exp.experiment_id
        from traitlab.tracking.dashboard import prepare_experiment

        prepare_experiment(client, exp_id)  # the UI's classic run table, traitlab's columns, a description
        if db is not None:
            _enable_wal(db)
    finally:
        if lock is not None:
            lock.release()
    return client, exp_id


def _experiment_artifacts(uri: str, experiment: str) -> str | None:
    root = artifact_root(uri)
    if root is None:
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return f"{root}/{safe}"


def _enable_wal(db: Path) -> None:
    con = sqlite3.connect(str(db), timeout=30)
    try:
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "wal":
            con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()
