"""The worklist: analysed studies and the radiologists' reads.

Revision ID: 0001_worklist
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_worklist"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worklist_studies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("series_uid", sa.String(length=64), nullable=True),
        sa.Column("identifiers", sa.JSON(), nullable=True),
        sa.Column("arrived_at", sa.DateTime(), nullable=False),
        sa.Column("analysed_at", sa.DateTime(), nullable=False),
        sa.Column("verdict", sa.String(length=32), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("operating_point", sa.String(length=16), nullable=False),
        sa.Column("top_slices", sa.JSON(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("manufacturer", sa.String(length=64), nullable=True),
        sa.Column("manufacturer_model", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_worklist_studies"),
        sa.UniqueConstraint("study_uid", "series_uid", name="uq_worklist_studies_uids"),
    )
    op.create_index("ix_worklist_studies_order", "worklist_studies", ["flagged", "arrived_at"])
    op.create_index("ix_worklist_studies_status", "worklist_studies", ["status"])
    op.create_table(
        "worklist_reviews",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("fracture", sa.Boolean(), nullable=False),
        sa.Column("levels", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("reader", sa.String(length=16), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["worklist_studies.id"],
            name="fk_worklist_reviews_study_id_worklist_studies",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_worklist_reviews"),
    )
    op.create_index("ix_worklist_reviews_study_id", "worklist_reviews", ["study_id"])


def downgrade() -> None:
    op.drop_index("ix_worklist_reviews_study_id", table_name="worklist_reviews")
    op.drop_table("worklist_reviews")
    op.drop_index("ix_worklist_studies_status", table_name="worklist_studies")
    op.drop_index("ix_worklist_studies_order", table_name="worklist_studies")
    op.drop_table("worklist_studies")
