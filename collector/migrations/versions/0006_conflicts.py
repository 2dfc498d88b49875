"""Conflicting transactions: a business key claimed twice with different money or card.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 10:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import collector.schema

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conflicts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("tid", sa.String(length=8), nullable=False),
        sa.Column("rrn", sa.String(length=12), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("first_event_id", sa.String(length=36), nullable=False),
        sa.Column("differences", collector.schema.ScrubbedText(length=1024), nullable=False),
        sa.Column("payload", collector.schema.ScrubbedJSON(), nullable=False),
        sa.Column("stored_at", collector.schema.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("conflicts", schema=None) as batch_op:
        batch_op.create_index("ix_conflicts_key", ["tid", "rrn"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("conflicts", schema=None) as batch_op:
        batch_op.drop_index("ix_conflicts_key")
    op.drop_table("conflicts")
