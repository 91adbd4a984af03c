"""The worker's memory: one SQLite row per series it has seen, kept across restarts.

Statuses: ``processing`` (an attempt is under way; after a crash it is simply tried again),
``retry`` (a transient failure; ``next_attempt`` says when), ``done`` (results stored in the
PACS), ``skipped`` (not a CT series, unreadable, or one of the worker's own outputs: never
tried again) and ``failed`` (gave up after the last attempt).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid     TEXT PRIMARY KEY,
    study_uid      TEXT NOT NULL,
    status         TEXT NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_attempt   REAL NOT NULL DEFAULT 0,
    instance_count INTEGER,
    reason         TEXT,
    result         TEXT,
    sr_uid         TEXT,
    sr_series_uid  TEXT,
    sc_series_uid  TEXT,
    own_output     INTEGER NOT NULL DEFAULT 0,
    updated_at     REAL NOT NULL
);
"""

FINAL = frozenset({"done", "skipped", "failed"})


@dataclass(frozen=True)
class SeriesState:
    """One row of the ``series`` table."""

    series_uid: str
    study_uid: str
    status: str
    attempts: int
    next_attempt: float
    instance_count: int | None
    reason: str | None
    result: str | None
    sr_uid: str | None
    sr_series_uid: str | None
    sc_series_uid: str | None
    own_output: bool


class StateDB:
    """Thread-safe access to the state file (one connection, one lock, WAL journal)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            # An attempt that was under way when the worker stopped is due again now.
            self._db.execute(
                "UPDATE series SET status='retry', next_attempt=0 WHERE status='processing'"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, series_uid: str) -> SeriesState | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM series WHERE series_uid=?", (series_uid,)
            ).fetchone()
        return _row(row) if row else None

    def all(self) -> list[SeriesState]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM series ORDER BY updated_at").fetchall()
        return [_row(row) for row in rows]

    def is_own_output(self, series_uid: str) -> bool:
        """Whether ``series_uid`` is a series this worker wrote (an SR or heatmap series)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM series WHERE series_uid=? AND own_output=1 "
                "UNION SELECT 1 FROM series WHERE sr_series_uid=? OR sc_series_uid=?",
                (series_uid, series_uid, series_uid),
            ).fetchone()
        return row is not None

    def _upsert(self, series_uid: str, study_uid: str, **values: object) -> None:
        values["updated_at"] = time.time()
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{name}=excluded.{name}" for name in values)
        with self._lock:
            self._db.execute(
                f"INSERT INTO series (series_uid, study_uid, {columns}) VALUES (?, ?, {marks}) "
                f"ON CONFLICT(series_uid) DO UPDATE SET {updates}",
                (series_uid, study_uid, *values.values()),
            )

    def start(self, series_uid: str, study_uid: str, instance_count: int) -> int:
        """Mark an attempt as under way; returns its number (1 for the first)."""
        current = self.get(series_uid)
        attempts = (current.attempts if current and current.status == "retry" else 0) + 1
        self._upsert(
            series_uid,
            study_uid,
            status="processing",
            attempts=attempts,
            instance_count=instance_count,
            reason=None,
        )
        return attempts

    def done(
        self,
        series_uid: str,
        study_uid: str,
        *,
        instance_count: int,
        result: str,
        sr_uid: str,
        sr_series_uid: str,
        sc_series_uid: str | None,
        reason: str | None = None,
    ) -> None:
        self._upsert(
            series_uid,
            study_uid,
            status="done",
            instance_count=instance_count,
            result=result,
            sr_uid=sr_uid,
            sr_series_uid=sr_series_uid,
            sc_series_uid=sc_series_uid,
            reason=reason,
        )

    def skip(
        self,
        series_uid: str,
        study_uid: str,
        reason: str,
        *,
        own_output: bool = False,
        instance_count: int | None = None,
    ) -> None:
        self._upsert(
            series_uid,
            study_uid,
            status="skipped",
            reason=reason,
            own_output=int(own_output),
            instance_count=instance_count,
        )

    def retry(self, series_uid: str, study_uid: str, reason: str, next_attempt: float) -> None:
        self._upsert(
            series_uid, study_uid, status="retry", reason=reason, next_attempt=next_attempt
        )

    def fail(self, series_uid: str, study_uid: str, reason: str) -> None:
        self._upsert(series_uid, study_uid, status="failed", reason=reason)


def _row(row: sqlite3.Row) -> SeriesState:
    return SeriesState(
        series_uid=row["series_uid"],
        study_uid=row["study_uid"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt=row["next_attempt"],
        instance_count=row["instance_count"],
        reason=row["reason"],
        result=row["result"],
        sr_uid=row["sr_uid"],
        sr_series_uid=row["sr_series_uid"],
        sc_series_uid=row["sc_series_uid"],
        own_output=bool(row["own_output"]),
    )
