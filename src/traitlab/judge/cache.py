"""Persistent judge cache: what the judge said about a rendered prompt, so re-scoring needs no judge.

We cache the judge's raw answer (its top logprobs, or a perplexity), not the final score, so changing
`min_weight` or the relevance rule re-scores from the cache without calling the judge again.
Keys are a content hash of (backend, judge model, rendered prompt, extras such as top-k): a changed
prompt is a new key, never a stale hit. SQLite in WAL mode with a busy timeout lets parallel jobs
(joblib/submitit workers) share one file without "database is locked"; each row carries a checksum and
a file sqlite cannot open is moved aside and rebuilt, because a cache must never stop a study.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from traitlab.io import content_hash

log = logging.getLogger(__name__)

_SCHEMA = "CREATE TABLE IF NOT EXISTS judge_cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, " \
          "checksum TEXT NOT NULL, created REAL NOT NULL)"
BUSY_TIMEOUT_MS = 30_000
_CHUNK = 500  # stay under SQLite's host-parameter limit in IN (...) queries


def cache_key(backend: str, model: str, prompt: str, **extra: Any) -> str:
    """Content hash of everything that determines the judge's answer (never credentials)."""
    return content_hash("judge-v1", backend, model, prompt, sorted(extra.items()))


def scale_key(backend: str, model: str, base_url: str | None = None) -> str:
    """Key of the answer scale (9 or 100) a judge model was found to use, stored beside its logprobs."""
    return content_hash("judge-scale-v1", backend, model, base_url)


def _checksum(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


class ScoreCache:
    """Key -> JSON value store. `path=None` keeps it in memory (repeated calls in one process are free)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path).expanduser() if path else None
        self._lock = threading.Lock()
        self._mem: dict[str, Any] = {}
        self._conn: sqlite3.Connection | None = None
        if self.path is not None:
            self._conn = self._open()

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_SCHEMA)
        conn.commit()
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise
            assert self.path is not None
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.warning("judge cache %s is unreadable (%s); moved to %s and starting a new one", self.path, e, aside)
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.unlink()
            return self._connect()

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Values for the keys present; damaged rows count as missing."""
        keys = list(dict.fromkeys(keys))
        if self._conn is None:
            return {k: self._mem[k] for k in keys if k in self._mem}
        found: dict[str, Any] = {}
        with self._lock:
            for i in range(0, len(keys), _CHUNK):
                part = keys[i:i + _CHUNK]
                marks = ",".join("?" * len(part))
                try:
                    rows = self._conn.execute(
                        f"SELECT key, value, checksum FROM judge_cache WHERE key IN ({marks})", part
                    ).fetchall()
                except sqlite3.DatabaseError as e:
                    log.warning("judge cache %s read failed (%s); treating as misses", self.path, e)
                    return found
                for key, value, checksum in rows:
                    if _checksum(value) != checksum:
                        log.warning("judge cache %s: damaged entry %s ignored", self.path, key)
                        continue
                    try:
                        found[key] = json.loads(value)
                    except json.JSONDecodeError:
                        continue
        return found

    def put_many(self, items: Mapping[str, Any]) -> None:
        if not items:
            return
        if self._conn is None:
            self._mem.update(items)
            return
        now = time.time()
        rows = []
        for key, value in items.items():
            text = json.dumps(value, sort_keys=True)
            rows.append((key, text, _checksum(text), now))
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO judge_cache (key, value, checksum, created) VALUES (?, ?, ?, ?)", rows
            )
            self._conn.commit()

    def get(self, key: str) -> Any | None:
        return self.get_many([key]).get(key)

    def put(self, key: str, value: Any) -> None:
        self.put_many({key: value})

    def __contains__(self, key: str) -> bool:
        return key in self.get_many([key])

    def __len__(self) -> int:
        if self._conn is None:
            return len(self._mem)
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM judge_cache").fetchone()[0])

    def close(self) -> None:
        if self._conn is not None:
            with self._lock:
                self._conn.close()
                self._conn = None

