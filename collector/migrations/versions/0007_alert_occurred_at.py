"""Alerts record when their fault happened (alerts.occurred_at): bank outages are
measured on it, not on when the collector heard of each failure.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 18:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import collector.schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("occurred_at", collector.schema.UtcDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index("ix_alerts_bank_occurred", ["bank_code", "occurred_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_bank_occurred")
        batch_op.drop_column("occurred_at")
