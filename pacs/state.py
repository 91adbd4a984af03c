"""The worker's memory: one SQLite row per series it has seen, kept across restarts.

Statuses: ``processing`` (an attempt is under way; after a crash it is simply tried again),
``retry`` (a failure that may clear; ``next_attempt`` says when: never final),
``blocked`` (the API or PACS refused the worker's credentials, 401/403: tried again after the
longest back-off, and at once when the worker starts with another configuration),
``done`` (results stored in the PACS), ``skipped`` (not for this worker: not CT, too large,
no CT images, or one of its own outputs) and ``failed`` (a deterministic failure: trying
again gives the same answer; ``failure_class`` and ``reason`` say which and why).
``skipped`` and ``failed`` stay so until an operator re-queues them (``python -m pacs
requeue``). ``failure_class``: ``transient``, ``config``, ``permanent``, ``identity`` or
``error`` (unexpected; ``failed`` after ``error_max_attempts``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
# Columns added later, with their types (added to an older state file when it is opened).
ADDED_COLUMNS = {
    "failure_class": "TEXT",
    "config": "TEXT",
    "superseded": "TEXT",
    "errors": "INTEGER NOT NULL DEFAULT 0",
}

# An older worker made ``failed`` final after its last attempt whatever the cause (mostly an
# API or PACS away), and ``skipped`` a series for good on the API's 401/403: both come back.
UPGRADE_REQUEUE = """
UPDATE series SET status='retry', attempts=0, next_attempt=0,
    reason='re-queued on upgrade: ' || COALESCE(reason, '')
WHERE own_output=0 AND (status='failed' OR (status='skipped' AND (
    reason LIKE 'API refused the series (401)%' OR reason LIKE 'API refused the series (403)%')))
"""

FINAL = frozenset({"done", "skipped", "failed"})
STATUSES = ("processing", "retry", "blocked", "done", "skipped", "failed")


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
    failure_class: str | None = None
    config: str | None = None
    superseded: str | None = None  # SR instance UIDs this series' current SR replaced
    updated_at: float = 0.0  # time of the row's last change (e.g. when it was queued)
    errors: int = 0  # attempts ended by an unexpected error since the series was (re-)queued


class SeriesLog(Protocol):
    """What one attempt at a series reads and records (``Worker._process``): the state file
    itself, or (broker mode) a recorder whose one call the poller replays on its state file."""

    def start(self, series_uid: str, study_uid: str, instance_count: int) -> int: ...

    def get(self, series_uid: str) -> SeriesState | None: ...

    def done(
        self, series_uid: str, study_uid: str, *, instance_count: int, result: str,
        sr_uid: str, sr_series_uid: str, sc_series_uid: str | None, reason: str | None = None,
        superseded: str | None = None,
    ) -> None: ...  # fmt: skip

    def skip(
        self, series_uid: str, study_uid: str, reason: str, *, own_output: bool = False,
        instance_count: int | None = None,
    ) -> None: ...  # fmt: skip

    def retry(
        self, series_uid: str, study_uid: str, reason: str, next_attempt: float,
        failure_class: str = "transient",
    ) -> None: ...  # fmt: skip

    def block(
        self, series_uid: str, study_uid: str, reason: str, config: str, next_attempt: float
    ) -> None: ...

    def fail(
        self, series_uid: str, study_uid: str, reason: str, failure_class: str = "permanent"
    ) -> None: ...


def errors_after(earlier: SeriesState | None, failure_class: str) -> int:
    """A series' ``errors`` once an attempt that ended in ``failure_class`` is counted: only
    ``error`` (unexpected) attempts count towards ``error_max_attempts``."""
    errors = earlier.errors if earlier is not None else 0
    return errors + 1 if failure_class == "error" else errors


class StateDB:
    """Thread-safe access to the state file (one connection, one lock, WAL journal)."""

    def __init__(self, path: Path, resume: bool = True) -> None:
        """``resume``: the worker's own start (attempts left under way are due again); an
        operator command opens the file with False, leaving a running worker's rows alone."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(series)")}
            for name, kind in ADDED_COLUMNS.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE series ADD COLUMN {name} {kind}")
            if "failure_class" not in have:  # a state file of a worker before failure classes
                self._db.execute(UPGRADE_REQUEUE)
            if resume:  # an attempt under way when the worker stopped is due again now
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

    def attempt_number(self, series_uid: str) -> int:
        """The number the next attempt at the series gets: 1 for the first, and after a
        ``retry`` or ``blocked`` one more than the attempts so far."""
        current = self.get(series_uid)
        again = current is not None and current.status in ("retry", "blocked")
        return (current.attempts if current and again else 0) + 1

    def start(self, series_uid: str, study_uid: str, instance_count: int) -> int:
        """Mark an attempt as under way; returns its number (1 for the first). A retried
        attempt keeps the last failure's ``reason`` and ``failure_class`` until it ends, so
        the row says why the series is being tried again."""
        attempts = self.attempt_number(series_uid)
        fresh = {"reason": None, "failure_class": None, "errors": 0}
        last_failure = {} if attempts > 1 else fresh
        self._upsert(
            series_uid,
            study_uid,
            status="processing",
            attempts=attempts,
            instance_count=instance_count,
            **last_failure,
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
        superseded: str | None = None,
    ) -> None:
        """Results stored; ``superseded``: the earlier SR instance UID the new one replaces
        (kept, with any before it, in the row's ``superseded`` list)."""
        current = self.get(series_uid)
        replaced = (current.superseded or "").split() if current else []
        if superseded and superseded not in replaced:
            replaced.append(superseded)
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
            failure_class=None,
            superseded=" ".join(replaced) or None,
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

    def retry(
        self,
        series_uid: str,
        study_uid: str,
        reason: str,
        next_attempt: float,
        failure_class: str = "transient",
    ) -> None:
        self._upsert(
            series_uid, study_uid, status="retry", reason=reason, next_attempt=next_attempt,
            failure_class=failure_class, errors=self._errors(series_uid, failure_class),
        )  # fmt: skip

    def block(
        self, series_uid: str, study_uid: str, reason: str, config: str, next_attempt: float
    ) -> None:
        """A configuration failure under the configuration with fingerprint ``config``."""
        self._upsert(
            series_uid, study_uid, status="blocked", reason=reason, config=config,
            next_attempt=next_attempt, failure_class="config",
        )  # fmt: skip

    def fail(
        self, series_uid: str, study_uid: str, reason: str, failure_class: str = "permanent"
    ) -> None:
        self._upsert(
            series_uid, study_uid, status="failed", reason=reason, failure_class=failure_class,
            errors=self._errors(series_uid, failure_class),
        )  # fmt: skip

    def _errors(self, series_uid: str, failure_class: str) -> int:
        """The row's ``errors`` once an attempt of ``failure_class`` is recorded."""
        return errors_after(self.get(series_uid), failure_class)

    def requeue(
        self, statuses: tuple[str, ...] = ("failed", "skipped", "blocked"),
        series_uids: tuple[str, ...] = (),
    ) -> int:  # fmt: skip
        """Due again at once with fresh attempts: rows in ``statuses`` (only ``series_uids``
        when given); the worker's own outputs stay skipped. Returns how many."""
        where = f"status IN ({', '.join('?' for _ in statuses)}) AND own_output=0"
        params: list[object] = list(statuses)
        if series_uids:
            where += f" AND series_uid IN ({', '.join('?' for _ in series_uids)})"
            params += list(series_uids)
        with self._lock:
            cursor = self._db.execute(
                "UPDATE series SET status='retry', attempts=0, errors=0, next_attempt=0, "
                f"reason='re-queued: ' || COALESCE(reason, ''), updated_at=? WHERE {where}",
                (time.time(), *params),
            )
        return int(cursor.rowcount)

    def requeue_config(self, fingerprint: str) -> int:
        """Re-queue series blocked under another configuration than ``fingerprint``."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE series SET status='retry', attempts=0, errors=0, next_attempt=0, "
                "reason='re-queued (configuration changed): ' || COALESCE(reason, ''), "
                "updated_at=? WHERE status='blocked' AND COALESCE(config, '') != ?",
                (time.time(), fingerprint),
            )
        return int(cursor.rowcount)

    def counts(self) -> dict[str, int]:
        """Series per status (every status, 0 when none)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status, COUNT(*) FROM series GROUP BY status"
            ).fetchall()
        found = {str(row[0]): int(row[1]) for row in rows}
        return {status: found.get(status, 0) for status in STATUSES}


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
        failure_class=row["failure_class"],
        config=row["config"],
        superseded=row["superseded"],
        updated_at=row["updated_at"],
        errors=row["errors"],
    )
