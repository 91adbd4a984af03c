"""The worklist's one repository: every read and write of the tables goes through
:class:`WorklistStore` (the routes never hold a session).

The engine is the Settings' ``worklist_database_url``: a SQLite file by default, PostgreSQL
(psycopg 3) when ``DATABASE_URL`` is set. :meth:`WorklistStore.migrate` upgrades the schema
to Alembic's head; the app calls it at start-up (``main.lifespan``), before its port opens:
an embedded SQLite file has no operator to run a separate command, and a server that starts
on an old schema would answer 500s. On PostgreSQL the upgrade holds a transaction-scoped
advisory lock, so replicas starting together upgrade one after the other (the others find
the schema at head). ``python -m backend.app.worklist upgrade`` runs the same upgrade
by hand (before a rollout, say).

Notifications (the webhook's outbox): with ``notify``, the transaction that lists a flagged
entry, or turns an entry flagged, also writes its one :class:`Notification` row (unique per
entry, so a re-posted or re-flagged entry adds none); ``services/notification.py`` claims
due rows (:meth:`WorklistStore.claim_notifications`), delivers them and records the outcome.
A claim moves the row's ``next_attempt_at`` a lease ahead in the claiming transaction; on
PostgreSQL the due rows are read ``FOR UPDATE SKIP LOCKED``, so two replicas claiming at
once never get the same row (each skips the rows the other has locked, and finds them not
due once it commits). SQLite's one writer at a time (``BEGIN IMMEDIATE``) does the same.

SQLite: every transaction starts ``BEGIN IMMEDIATE`` (the write lock up front, waiting up
to ``SQLITE_BUSY_TIMEOUT_S`` for it) in WAL mode, so two concurrent writers (two readers
reviewing one study) queue instead of failing with "database is locked".
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, delete, event, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from backend.app.worklist.models import (
    DeadLetter,
    Notification,
    NotificationState,
    PipelineFailure,
    Review,
    WorklistStatus,
    WorklistStudy,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0
# pg_advisory_xact_lock's key for the schema upgrade (any constant; "cspine" in ASCII).
MIGRATION_LOCK_KEY = 0x637370696E65
FLAGGED_VERDICT = "Potentially Fracture"
MAX_PAGE_SIZE = 200


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_store_engine(url: str) -> Engine:
    """The engine of ``url``; SQLite gets its folder, WAL, foreign keys and immediate
    transactions (see the module's docstring)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
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
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def alembic_config(url: str) -> Config:
    """Alembic's configuration without an ini file: the migrations folder and ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@dataclass(frozen=True)
class NewStudy:
    """One analysed series, as the API hands it in (``POST /worklist``, ``save=true``)."""

    source: str  # "pacs" or "upload"
    study_uid: str | None
    series_uid: str | None
    arrived_at: datetime
    analysed_at: datetime
    verdict: str
    score: float
    threshold: float
    operating_point: str
    top_slices: list[dict[str, Any]]
    model_name: str
    model_version: str
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    identifiers: dict[str, str] | None = None


@dataclass(frozen=True)
class NewReview:
    """A radiologist's read: fracture or not, the levels (C1..C7), a note; who and when."""

    fracture: bool
    levels: list[str] = field(default_factory=list)
    note: str | None = None
    reader: str | None = None
    reviewed_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Filters:
    """``GET /worklist``'s filters; None or empty: no filter."""

    statuses: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = ()
    arrived_from: datetime | None = None
    arrived_to: datetime | None = None


@dataclass(frozen=True)
class PendingNotification:
    """A claimed notification: what to send, and how many attempts (this one included)."""

    id: int
    study_id: int
    delivery_id: str
    body: dict[str, Any]
    attempts: int
    arrived_at: datetime


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def notification_body(study: WorklistStudy, delivery_id: str) -> dict[str, Any]:
    """What the webhook receives about a flagged entry (JSON; docs/worklist.md)."""
    return {
        "event": "study.flagged",
        "delivery_id": delivery_id,
        "worklist_id": study.id,
        "study_uid": study.study_uid,
        "series_uid": study.series_uid,
        "verdict": study.verdict,
        "score": study.score,
        "threshold": study.threshold,
        "operating_point": study.operating_point,
        "model": {"name": study.model_name, "version": study.model_version},
        "arrived_at": _iso(study.arrived_at),
        "analysed_at": _iso(study.analysed_at),
        "link": f"/worklist/{study.id}",
    }


@dataclass(frozen=True)
class ReviewedStudy:
    """What monitoring needs of a reviewed study: the product's call and the latest read."""

    flagged: bool
    verdict: str
    fracture: bool
    model_name: str
    model_version: str
    manufacturer: str | None
    manufacturer_model: str | None
    arrived_at: datetime


@dataclass(frozen=True)
class AnalysedStudy:
    """What drift monitoring needs of any entry: its answer and score, model and arrival."""

    verdict: str
    score: float
    model_name: str
    model_version: str
    arrived_at: datetime


class WorklistStore:
    """The repository over one database (see the module's docstring)."""

    def __init__(self, url: str, *, notify: bool = False) -> None:
        self.url = url
        self.notify = notify  # write a notification for each entry that becomes flagged
        self.engine = create_store_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    def migrate(self) -> None:
        """Upgrade the schema to Alembic's head (PostgreSQL: under an advisory lock)."""
        config = alembic_config(self.url)
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    def record(self, entry: NewStudy) -> tuple[WorklistStudy, bool]:
        """Add ``entry``, or update the analysis of the entry of the same study and series
        UIDs (a retried or repeated analysis; its status and reads are kept). Returns the
        row and whether it is new."""
        for _attempt in range(2):  # a concurrent first insert of the same series: update it
            try:
                return self._record(entry)
            except IntegrityError:
                continue
        return self._record(entry)

    def _record(self, entry: NewStudy) -> tuple[WorklistStudy, bool]:
        values = {
            "source": entry.source,
            "study_uid": entry.study_uid,
            "series_uid": entry.series_uid,
            "identifiers": entry.identifiers or None,
            "arrived_at": entry.arrived_at,
            "analysed_at": entry.analysed_at,
            "verdict": entry.verdict,
            "flagged": entry.verdict == FLAGGED_VERDICT,
            "score": entry.score,
            "threshold": entry.threshold,
            "operating_point": entry.operating_point,
            "top_slices": entry.top_slices,
            "model_name": entry.model_name,
            "model_version": entry.model_version,
            "manufacturer": entry.manufacturer,
            "manufacturer_model": entry.manufacturer_model,
        }
        with self._session() as session:
            if entry.series_uid is not None:  # analysed after all: no longer a failure
                session.execute(
                    delete(PipelineFailure).where(PipelineFailure.series_uid == entry.series_uid)
                )
            known = None
            if entry.study_uid is not None and entry.series_uid is not None:
                known = session.scalars(
                    select(WorklistStudy)
                    .where(WorklistStudy.study_uid == entry.study_uid)
                    .where(WorklistStudy.series_uid == entry.series_uid)
                    .options(selectinload(WorklistStudy.reviews))
                ).one_or_none()
            if known is not None:
                was_flagged = known.flagged
                values.pop("arrived_at")  # the first arrival stays the study's age
                for name, value in values.items():
                    setattr(known, name, value)
                if known.flagged and not was_flagged:
                    self._enqueue(session, known)
                return known, False
            study = WorklistStudy(**values, status=WorklistStatus.new.value)
            study.reviews = []
            session.add(study)
            session.flush()
            if study.flagged:
                self._enqueue(session, study)
            return study, True

    def _enqueue(self, session: Session, study: WorklistStudy) -> None:
        """The entry's notification, in the caller's transaction (the outbox), unless
        notifications are off or the entry already has one."""
        if not self.notify:
            return
        exists = session.scalar(select(Notification.id).where(Notification.study_id == study.id))
        if exists is not None:
            return
        now = utcnow()
        delivery_id = str(uuid.uuid4())
        session.add(
            Notification(
                study_id=study.id,
                delivery_id=delivery_id,
                body=notification_body(study, delivery_id),
                state=NotificationState.pending.value,
                attempts=0,
                created_at=now,
                next_attempt_at=now,
            )
        )
        session.flush()

    def claim_notifications(self, limit: int, lease_s: float) -> list[PendingNotification]:
        """Up to ``limit`` due notifications, each claimed for ``lease_s`` seconds (due
        again then, should this process die before recording the outcome) and its attempt
        counted. PostgreSQL: ``FOR UPDATE SKIP LOCKED`` (see the module's docstring)."""
        now = utcnow()
        with self._session() as session:
            rows = session.execute(
                select(Notification, WorklistStudy.arrived_at)
                .join(WorklistStudy, WorklistStudy.id == Notification.study_id)
                .where(
                    Notification.state == NotificationState.pending.value,
                    Notification.next_attempt_at <= now,
                )
                .order_by(Notification.next_attempt_at, Notification.id)
                .limit(limit)
                .with_for_update(skip_locked=True, of=Notification)
            ).all()
            claimed = []
            for row, arrived_at in rows:
                row.attempts += 1
                row.next_attempt_at = now + timedelta(seconds=lease_s)
                claimed.append(
                    PendingNotification(
                        id=row.id,
                        study_id=row.study_id,
                        delivery_id=row.delivery_id,
                        body=dict(row.body),
                        attempts=row.attempts,
                        arrived_at=arrived_at,
                    )
                )
            return claimed

    def notification_delivered(self, notification_id: int) -> None:
        """The receiver answered 2xx: done."""
        self._settle(
            notification_id,
            state=NotificationState.delivered.value,
            delivered_at=utcnow(),
            next_attempt_at=None,
            last_error=None,
        )

    def notification_failed(self, notification_id: int, error: str, retry_at: datetime) -> None:
        """An attempt failed: due again at ``retry_at``."""
        self._settle(notification_id, next_attempt_at=retry_at, last_error=error)

    def notification_dead(self, claimed: PendingNotification, url: str, error: str) -> None:
        """The last attempt failed: the notification is dead, and a dead letter records it."""
        now = utcnow()
        with self._session() as session:
            settled = self._settle_in(
                session,
                claimed.id,
                state=NotificationState.dead.value,
                next_attempt_at=None,
                last_error=error,
            )
            if settled:
                session.add(
                    DeadLetter(
                        notification_id=claimed.id,
                        study_id=claimed.study_id,
                        delivery_id=claimed.delivery_id,
                        url=url,
                        body=claimed.body,
                        attempts=claimed.attempts,
                        last_error=error,
                        failed_at=now,
                    )
                )

    def _settle(self, notification_id: int, **values: Any) -> None:
        with self._session() as session:
            self._settle_in(session, notification_id, **values)

    @staticmethod
    def _settle_in(session: Session, notification_id: int, **values: Any) -> bool:
        """Record an outcome on a still pending notification (whether there was one)."""
        updated = session.execute(
            update(Notification)
            .where(
                Notification.id == notification_id,
                Notification.state == NotificationState.pending.value,
            )
            .values(**values)
        )
        return bool(getattr(updated, "rowcount", 0))

    def notifications(self) -> list[Notification]:
        """Every notification, oldest first (operators, tests)."""
        with self._session() as session:
            return list(session.scalars(select(Notification).order_by(Notification.id)).all())

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, oldest first."""
        with self._session() as session:
            return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)).all())

    def record_failure(
        self, study_uid: str, series_uid: str, failure_class: str, reason: str, failed_at: datetime
    ) -> PipelineFailure:
        """A series the PACS pipeline gave up on; the same series again replaces it."""
        with self._session() as session:
            row = session.scalars(
                select(PipelineFailure).where(PipelineFailure.series_uid == series_uid)
            ).one_or_none()
            if row is None:
                row = PipelineFailure(series_uid=series_uid)
                session.add(row)
            row.study_uid, row.failure_class = study_uid, failure_class
            row.reason, row.failed_at = reason, failed_at
            session.flush()
            return row

    def failures(self) -> list[PipelineFailure]:
        """The series the pipeline gave up on (and not analysed since), the latest first."""
        with self._session() as session:
            return list(
                session.scalars(
                    select(PipelineFailure).order_by(
                        PipelineFailure.failed_at.desc(), PipelineFailure.id.desc()
                    )
                ).all()
            )

    def failure_counts(self) -> dict[str, int]:
        """How many series the pipeline gave up on, by failure class."""
        with self._session() as session:
            rows = session.execute(
                select(PipelineFailure.failure_class, func.count()).group_by(
                    PipelineFailure.failure_class
                )
            ).all()
        return {str(name): int(count) for name, count in rows}

    def replay_dead_letter(self, letter_id: int) -> DeadLetter | None:
        """Send a dead letter's notification again: pending now, its attempts counted from
        zero, under the same delivery id (``X-Triage-Delivery``: a receiver that did take it
        can tell); the dead letter is removed (a new one is written should every attempt fail
        again). None: no dead letter with this id."""
        with self._session() as session:
            letter = session.get(DeadLetter, letter_id)
            if letter is None:
                return None
            session.execute(
                update(Notification)
                .where(Notification.id == letter.notification_id)
                .values(
                    state=NotificationState.pending.value,
                    attempts=0,
                    next_attempt_at=utcnow(),
                    last_error=None,
                )
            )
            session.delete(letter)
            return letter

    def page(self, filters: Filters, offset: int, limit: int) -> tuple[list[WorklistStudy], int]:
        """One page of the worklist (flagged first, then the longest waiting) and the total
        number of entries that pass ``filters``."""
        conditions: list[Any] = []
        if filters.statuses:
            conditions.append(WorklistStudy.status.in_(filters.statuses))
        if filters.verdicts:
            conditions.append(WorklistStudy.verdict.in_(filters.verdicts))
        if filters.arrived_from is not None:
            conditions.append(WorklistStudy.arrived_at >= filters.arrived_from)
        if filters.arrived_to is not None:
            conditions.append(WorklistStudy.arrived_at < filters.arrived_to)
        with self._session() as session:
            total = session.scalar(
                select(func.count()).select_from(WorklistStudy).where(*conditions)
            )
            rows = session.scalars(
                select(WorklistStudy)
                .where(*conditions)
                .order_by(
                    WorklistStudy.flagged.desc(),
                    WorklistStudy.arrived_at.asc(),
                    WorklistStudy.id.asc(),
                )
                .offset(offset)
                .limit(min(limit, MAX_PAGE_SIZE))
                .options(selectinload(WorklistStudy.reviews))
            ).all()
            return list(rows), int(total or 0)

    def open(self, study_id: int) -> WorklistStudy | None:
        """The entry with its reads; a ``new`` one becomes ``opened`` (once: a reviewed study
        stays reviewed). None when there is no such entry."""
        with self._session() as session:
            session.execute(
                update(WorklistStudy)
                .where(
                    WorklistStudy.id == study_id, WorklistStudy.status == WorklistStatus.new.value
                )
                .values(status=WorklistStatus.opened.value, opened_at=utcnow())
            )
            return self._get(session, study_id)

    def get(self, study_id: int) -> WorklistStudy | None:
        with self._session() as session:
            return self._get(session, study_id)

    @staticmethod
    def _get(session: Session, study_id: int) -> WorklistStudy | None:
        return session.scalars(
            select(WorklistStudy)
            .where(WorklistStudy.id == study_id)
            .options(selectinload(WorklistStudy.reviews))
            .execution_options(populate_existing=True)
        ).one_or_none()

    def review(self, study_id: int, read: NewReview) -> WorklistStudy | None:
        """Add ``read`` to the study's reads (earlier ones stay: history) and mark it
        reviewed; the study with every read, or None when there is no such study."""
        with self._session() as session:
            updated = session.execute(
                update(WorklistStudy)
                .where(WorklistStudy.id == study_id)
                .values(status=WorklistStatus.reviewed.value)
            )
            if getattr(updated, "rowcount", 0) == 0:
                return None
            session.add(
                Review(
                    study_id=study_id,
                    fracture=read.fracture,
                    levels=list(read.levels),
                    note=read.note,
                    reader=read.reader,
                    reviewed_at=read.reviewed_at,
                )
            )
            session.flush()
            return self._get(session, study_id)

    def reviewed(self) -> list[ReviewedStudy]:
        """Every reviewed study with its latest read (the one that counts)."""
        return [
            ReviewedStudy(
                flagged=study.flagged,
                verdict=study.verdict,
                fracture=read.fracture,
                model_name=study.model_name,
                model_version=study.model_version,
                manufacturer=study.manufacturer,
                manufacturer_model=study.manufacturer_model,
                arrived_at=study.arrived_at,
            )
            for study, read in self.latest_reads()
        ]

    def latest_reads(
        self, read_since: datetime | None = None
    ) -> list[tuple[WorklistStudy, Review]]:
        """Every reviewed entry with its latest read, by entry id (detached rows); with
        ``read_since``, only those whose latest read is at or after it."""
        latest = select(func.max(Review.id).label("id")).group_by(Review.study_id).subquery()
        query = (
            select(WorklistStudy, Review)
            .join(Review, Review.study_id == WorklistStudy.id)
            .join(latest, latest.c.id == Review.id)
            .order_by(WorklistStudy.id)
        )
        if read_since is not None:
            query = query.where(Review.reviewed_at >= read_since)
        with self._session() as session:
            rows = session.execute(query).all()
            session.expunge_all()
            return [(study, read) for study, read in rows]

    def analysed(self) -> list[AnalysedStudy]:
        """Every entry's answer (reviewed or not), by arrival: what drift monitoring reads."""
        with self._session() as session:
            rows = session.execute(
                select(
                    WorklistStudy.verdict,
                    WorklistStudy.score,
                    WorklistStudy.model_name,
                    WorklistStudy.model_version,
                    WorklistStudy.arrived_at,
                ).order_by(WorklistStudy.arrived_at, WorklistStudy.id)
            ).all()
            return [AnalysedStudy(*row) for row in rows]


def kept_identifiers(sent: dict[str, str] | None, allowed: Iterable[str]) -> dict[str, str] | None:
    """Of the identifiers a caller sent, only those WORKLIST_IDENTIFIERS names."""
    names = set(allowed)
    kept = {key: value for key, value in (sent or {}).items() if key in names}
    return kept or None
