"""The worklist's tables (SQLAlchemy 2 declarative): one row per analysed series, one row per
read of it. The schema itself is Alembic's (``migrations/versions``); these classes must
match it (``tests/backend/worklist`` compares them)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID_LENGTH = 64  # a DICOM UI value's maximum length
NOTE_LENGTH = 2000


class WorklistStatus(StrEnum):
    """Where a study stands: `new` (not yet looked at) -> `opened` (GET /worklist/{id}) ->
    `reviewed` (a radiologist's read recorded)."""

    new = "new"
    opened = "opened"
    reviewed = "reviewed"


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time, stored as naive UTC (SQLite keeps no zone), read back as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("worklist times must carry a time zone")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class WorklistStudy(Base):
    """One analysed series (the PACS worker's, or an upload saved with ``save=true``)."""

    __tablename__ = "worklist_studies"
    __table_args__ = (
        # One entry per series: the worker's retries update it instead of adding another.
        UniqueConstraint("study_uid", "series_uid", name="uq_worklist_studies_uids"),
        # The worklist's order: flagged first, then by arrival.
        Index("ix_worklist_studies_order", "flagged", "arrived_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(16))  # "pacs" or "upload"
    study_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    series_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    # Only the identifiers WORKLIST_IDENTIFIERS names (none by default).
    identifiers: Mapped[dict[str, str] | None] = mapped_column(JSON)
    arrived_at: Mapped[datetime] = mapped_column(UTCDateTime())
    analysed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    verdict: Mapped[str] = mapped_column(String(32))
    flagged: Mapped[bool] = mapped_column(Boolean)
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    operating_point: Mapped[str] = mapped_column(String(16))
    top_slices: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    manufacturer_model: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=WorklistStatus.new.value, index=True)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    reviews: Mapped[list[Review]] = relationship(
        back_populates="study", order_by="Review.id", cascade="all, delete-orphan"
    )


class Review(Base):
    """One radiologist's read of a study; a later read adds a row (history), never edits."""

    __tablename__ = "worklist_reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(
        ForeignKey("worklist_studies.id", ondelete="CASCADE"), index=True
    )
    fracture: Mapped[bool] = mapped_column(Boolean)
    levels: Mapped[list[str]] = mapped_column(JSON)  # C1..C7, possibly empty
    note: Mapped[str | None] = mapped_column(Text)
    reader: Mapped[str | None] = mapped_column(String(16))  # the token's id; None: no auth
    reviewed_at: Mapped[datetime] = mapped_column(UTCDateTime())

    study: Mapped[WorklistStudy] = relationship(back_populates="reviews")


class NotificationState(StrEnum):
    """Where a notification stands: `pending` (due at ``next_attempt_at``) -> `delivered`
    (the receiver answered 2xx) or `dead` (every attempt failed: a dead letter)."""

    pending = "pending"
    delivered = "delivered"
    dead = "dead"


class Notification(Base):
    """The outbox: one webhook notification per flagged entry, written in the transaction
    that flags it, delivered by ``services/notification.py`` (never twice for one entry)."""

    __tablename__ = "worklist_notifications"
    __table_args__ = (
        # What the deliverer asks for: pending rows whose time has come.
        Index("ix_worklist_notifications_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # One notification per entry, ever: a re-posted or re-flagged entry adds none.
    study_id: Mapped[int] = mapped_column(
        ForeignKey("worklist_studies.id", ondelete="CASCADE"), unique=True
    )
    delivery_id: Mapped[str] = mapped_column(String(36), unique=True)  # X-Triage-Delivery
    body: Mapped[dict[str, Any]] = mapped_column(JSON)  # what is sent (and signed)
    state: Mapped[str] = mapped_column(String(16), default=NotificationState.pending.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Pending: when it is due (a claimed one: when its claim lapses). Else None.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)


class DeadLetter(Base):
    """A notification that was never accepted: its body, the attempts and the last error,
    for an operator to look into (and send by hand)."""

    __tablename__ = "worklist_dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    notification_id: Mapped[int] = mapped_column(
        ForeignKey("worklist_notifications.id", ondelete="CASCADE"), unique=True
    )
    study_id: Mapped[int] = mapped_column(Integer, index=True)
    delivery_id: Mapped[str] = mapped_column(String(36))
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PipelineFailure(Base):
    """A series the PACS pipeline gave up on for good (failure classes ``identity``,
    ``permanent``, ``error``: issue 27), as the worker or the broker's poller reported it:
    shown next to the worklist until an analysis of the same series succeeds."""

    __tablename__ = "worklist_pipeline_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    series_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    failure_class: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime())
