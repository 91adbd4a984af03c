"""The worker's memory: one row per series it has seen, kept across restarts, in a SQLite
file (``PACS_STATE_DB``) or, for the broker's pollers, PostgreSQL (``PACS_STATE_URL``).

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

One implementation for both databases: SQLAlchemy Core over the same SQL (``ON CONFLICT``
upserts, ``COALESCE``, ``||``), the one difference being how the database tells the time
(:data:`DB_NOW`). The schema is created and upgraded when a process opens the state, on
PostgreSQL under a transaction-scoped advisory lock, so pollers starting together do it one
after the other.

The poller's lease (broker mode, docs/pacs-broker.md): one row in ``poller_lease`` names the
poller that polls, until ``expires_at`` (the database's clock, so the pollers' clocks do not
matter). :meth:`StateDB.hold_lease` takes it (absent or expired: its ``term`` goes up by one)
or renews it; while held, every state write renews it **in the write's own transaction** and
fails with :class:`LeaseLost`, writing nothing, when it is no longer this holder's: a poller
that hung past its lease and wakes cannot overwrite what the new holder recorded (fencing).
On PostgreSQL the renewal's row lock also makes a taker wait for the holder's transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

# DOUBLE PRECISION: epoch seconds (PostgreSQL's REAL is 4 bytes; SQLite reads it as REAL).
SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS series (
    series_uid     TEXT PRIMARY KEY,
    study_uid      TEXT NOT NULL,
    status         TEXT NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_attempt   DOUBLE PRECISION NOT NULL DEFAULT 0,
    instance_count INTEGER,
    reason         TEXT,
    result         TEXT,
    sr_uid         TEXT,
    sr_series_uid  TEXT,
    sc_series_uid  TEXT,
    own_output     INTEGER NOT NULL DEFAULT 0,
    updated_at     DOUBLE PRECISION NOT NULL
)""",
    """
CREATE TABLE IF NOT EXISTS poller_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    term       INTEGER NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
)""",
)
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

# pg_advisory_xact_lock's key for creating/upgrading the schema ("pacsst" in ASCII).
SCHEMA_LOCK_KEY = 0x706163737374
LEASE = "poller"  # the one lease's name (its row's primary key)
# The database's clock in epoch seconds, per dialect: every lease comparison uses it.
DB_NOW = {
    "postgresql": "EXTRACT(EPOCH FROM clock_timestamp())",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
SQLITE_BUSY_TIMEOUT_S = 30.0

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


class LeaseLost(RuntimeError):
    """A fenced state write by a poller whose lease expired or passed to another poller: the
    write was rolled back."""


def state_engine(location: Path | str) -> Engine:
    """The engine of the state: ``location`` a SQLite file (or ``:memory:``) or an SQLAlchemy
    URL (``postgresql+psycopg://…``, ``sqlite:///…``). SQLite: WAL, synchronous writes, and
    transactions that start ``BEGIN IMMEDIATE`` (the write lock up front, waiting up to
    ``SQLITE_BUSY_TIMEOUT_S`` for it), so a fenced write is one atomic transaction."""
    if isinstance(location, str) and "://" in location:
        url = make_url(location)
        if url.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True)
        database = url.database or ":memory:"
    else:
        database = str(location)
    memory = database == ":memory:"
    if not memory:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        f"sqlite:///{database}",
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        **({"poolclass": StaticPool} if memory else {}),  # one in-memory database
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # BEGIN is ours (below), not pysqlite's
        cursor = dbapi_connection.cursor()
        # Connections opening a new file together race to switch it to WAL; the loser gets
        # "database is locked" at once (SQLite's deadlock rule skips the busy timeout).
        for wait in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, None):
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if wait is None or "locked" not in str(exc):
                    raise
                time.sleep(wait)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class StateDB:
    """Thread-safe access to the state (one lock; each call its own transaction)."""

    def __init__(self, location: Path | str, resume: bool = True) -> None:
        """``location``: a SQLite file or a database URL (:func:`state_engine`). ``resume``:
        the single-process worker's own start (attempts left under way are due again); a
        poller or an operator command opens it with False, leaving rows under way alone."""
        self.location = location
        self.engine = state_engine(location)
        self.now = DB_NOW[self.engine.dialect.name]
        self._lock = threading.Lock()
        # (holder, term or None when not held, seconds) once ``hold_lease`` was called
        self._fence: tuple[str, int | None, float] | None = None
        with self._lock, self.engine.begin() as db:
            if db.dialect.name == "postgresql":  # pollers starting together: one at a time
                db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            for statement in SCHEMA:
                db.execute(text(statement))
            have = {column["name"] for column in inspect(db).get_columns("series")}
            for name, kind in ADDED_COLUMNS.items():
                if name not in have:
                    db.execute(text(f"ALTER TABLE series ADD COLUMN {name} {kind}"))
            if "failure_class" not in have:  # a state file of a worker before failure classes
                db.execute(text(UPGRADE_REQUEUE))
            if resume:  # an attempt under way when the worker stopped is due again now
                db.execute(
                    text(
                        "UPDATE series SET status='retry', next_attempt=0 WHERE status='processing'"
                    )
                )

    def close(self) -> None:
        with self._lock:
            self.engine.dispose()

    def _read(self, sql: str, **params: object) -> list[Any]:
        with self._lock, self.engine.connect() as db:
            return list(db.execute(text(sql), params))

    def _write(self, sql: str, **params: object) -> int:
        """One write in its own transaction, fenced by the lease while one is held; returns
        the rows it changed."""
        with self._lock, self.engine.begin() as db:
            if self._fence is not None:  # a poller's state: written only under its lease
                holder, term, seconds = self._fence
                renewed = (
                    term is not None
                    and db.execute(
                        text(
                            f"UPDATE poller_lease SET expires_at = {self.now} + :seconds "
                            f"WHERE name = :name AND holder = :holder AND term = :term "
                            f"AND expires_at > {self.now}"
                        ),
                        {"seconds": seconds, "name": LEASE, "holder": holder, "term": term},
                    ).rowcount
                    == 1
                )
                if not renewed:
                    self._fence = (holder, None, seconds)  # until hold_lease takes it again
                    raise LeaseLost(f"{holder} does not hold the lease (term {term})")
            return int(db.execute(text(sql), params).rowcount)

    # ---- the poller's lease -------------------------------------------------------------
    def hold_lease(self, holder: str, seconds: float) -> int | None:
        """Renew ``holder``'s lease, or take it when nobody holds it or it expired; then
        ``seconds`` more from the database's clock. Returns the lease's term (one more at
        each change of holder: a fencing token) while ``holder`` holds it, else None. From
        then on every write of this state is fenced: done only while held (renewing it),
        else refused with :class:`LeaseLost`."""
        params = {"name": LEASE, "holder": holder, "seconds": seconds}
        with self._lock, self.engine.begin() as db:
            db.execute(
                text(
                    "INSERT INTO poller_lease (name, holder, term, expires_at) "
                    f"VALUES (:name, :holder, 1, {self.now} + :seconds) "
                    "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, "
                    "expires_at = excluded.expires_at, term = CASE WHEN poller_lease.holder = "
                    "excluded.holder AND poller_lease.expires_at > "
                    f"{self.now} THEN poller_lease.term ELSE poller_lease.term + 1 END "
                    "WHERE poller_lease.holder = excluded.holder OR poller_lease.expires_at <= "
                    f"{self.now}"
                ),
                params,
            )
            row = db.execute(
                text(f"SELECT holder, term, expires_at > {self.now} FROM poller_lease "
                     "WHERE name = :name"),
                params,
            ).one()  # fmt: skip
        term = int(row[1]) if row[0] == holder and bool(row[2]) else None
        self._fence = (holder, term, seconds)
        return term

    def lease_holder(self) -> tuple[str, int, float] | None:
        """Who holds the lease: (holder, term, seconds left by the database's clock); None
        when nobody ever did."""
        rows = self._read(
            f"SELECT holder, term, expires_at - {self.now} FROM poller_lease WHERE name = :name",
            name=LEASE,
        )
        return (str(rows[0][0]), int(rows[0][1]), float(rows[0][2])) if rows else None

    def release_lease(self, holder: str) -> None:
        """Give the lease up at once (a poller stopping): another takes it at its next try;
        this state's writes are no longer fenced."""
        self._fence = None
        with self._lock, self.engine.begin() as db:
            db.execute(
                text(f"UPDATE poller_lease SET expires_at = {self.now} "
                     "WHERE name = :name AND holder = :holder"),
                {"name": LEASE, "holder": holder},
            )  # fmt: skip

    # ---- the series ---------------------------------------------------------------------
    def get(self, series_uid: str) -> SeriesState | None:
        rows = self._read("SELECT * FROM series WHERE series_uid = :uid", uid=series_uid)
        return _row(rows[0]) if rows else None

    def all(self) -> list[SeriesState]:
        return [_row(row) for row in self._read("SELECT * FROM series ORDER BY updated_at")]

    def is_own_output(self, series_uid: str) -> bool:
        """Whether ``series_uid`` is a series this worker wrote (an SR or heatmap series)."""
        return bool(
            self._read(
                "SELECT 1 FROM series WHERE series_uid = :uid AND own_output = 1 "
                "UNION SELECT 1 FROM series WHERE sr_series_uid = :uid OR sc_series_uid = :uid",
                uid=series_uid,
            )
        )

    def _upsert(self, series_uid: str, study_uid: str, **values: object) -> None:
        values["updated_at"] = time.time()
        columns = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        updates = ", ".join(f"{name} = excluded.{name}" for name in values)
        self._write(
            f"INSERT INTO series (series_uid, study_uid, {columns}) "
            f"VALUES (:series_uid, :study_uid, {marks}) "
            f"ON CONFLICT(series_uid) DO UPDATE SET {updates}",
            series_uid=series_uid,
            study_uid=study_uid,
            **values,
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
        params: dict[str, object] = {f"s{i}": status for i, status in enumerate(statuses)}
        where = f"status IN ({', '.join(f':s{i}' for i in range(len(statuses)))}) AND own_output=0"
        if series_uids:
            uids = {f"u{i}": uid for i, uid in enumerate(series_uids)}
            where += f" AND series_uid IN ({', '.join(f':{name}' for name in uids)})"
            params.update(uids)
        return self._write(
            "UPDATE series SET status='retry', attempts=0, errors=0, next_attempt=0, "
            f"reason='re-queued: ' || COALESCE(reason, ''), updated_at=:now WHERE {where}",
            now=time.time(),
            **params,
        )

    def requeue_config(self, fingerprint: str) -> int:
        """Re-queue series blocked under another configuration than ``fingerprint``."""
        return self._write(
            "UPDATE series SET status='retry', attempts=0, errors=0, next_attempt=0, "
            "reason='re-queued (configuration changed): ' || COALESCE(reason, ''), "
            "updated_at=:now WHERE status='blocked' AND COALESCE(config, '') != :fingerprint",
            now=time.time(),
            fingerprint=fingerprint,
        )

    def counts(self) -> dict[str, int]:
        """Series per status (every status, 0 when none)."""
        rows = self._read("SELECT status, COUNT(*) FROM series GROUP BY status")
        found = {str(row[0]): int(row[1]) for row in rows}
        return {status: found.get(status, 0) for status in STATUSES}


def _row(found: Any) -> SeriesState:
    row = found._mapping
    return SeriesState(
        series_uid=row["series_uid"],
        study_uid=row["study_uid"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt=float(row["next_attempt"]),
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
        updated_at=float(row["updated_at"]),
        errors=row["errors"],
    )
