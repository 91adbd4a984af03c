"""Webhook notifications: the outbox of flagged entries and its dead letters.

Revision ID: 0002_notifications
Revises: 0001_worklist
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_notifications"
down_revision = "0001_worklist"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worklist_notifications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.String(length=36), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["worklist_studies.id"],
            name="fk_worklist_notifications_study_id_worklist_studies",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_worklist_notifications"),
        sa.UniqueConstraint("delivery_id", name="uq_worklist_notifications_delivery_id"),
        sa.UniqueConstraint("study_id", name="uq_worklist_notifications_study_id"),
    )
    op.create_index(
        "ix_worklist_notifications_due", "worklist_notifications", ["state", "next_attempt_at"]
    )
    op.create_table(
        "worklist_dead_letters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("notification_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.String(length=36), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("failed_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["worklist_notifications.id"],
            name="fk_worklist_dead_letters_notification_id_worklist_notifications",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_worklist_dead_letters"),
        sa.UniqueConstraint("notification_id", name="uq_worklist_dead_letters_notification_id"),
    )
    op.create_index("ix_worklist_dead_letters_study_id", "worklist_dead_letters", ["study_id"])


def downgrade() -> None:
    op.drop_index("ix_worklist_dead_letters_study_id", table_name="worklist_dead_letters")
    op.drop_table("worklist_dead_letters")
    op.drop_index("ix_worklist_notifications_due", table_name="worklist_notifications")
    op.drop_table("worklist_notifications")
