"""Series the PACS pipeline gave up on (identity, permanent, error), shown beside the worklist.

Revision ID: 0003_pipeline_failures
Revises: 0002_notifications
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_pipeline_failures"
down_revision = "0002_notifications"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worklist_pipeline_failures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("failure_class", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("failed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_worklist_pipeline_failures"),
        sa.UniqueConstraint("series_uid", name="uq_worklist_pipeline_failures_series_uid"),
    )


def downgrade() -> None:
    op.drop_table("worklist_pipeline_failures")
