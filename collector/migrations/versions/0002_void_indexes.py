"""Partial indexes for voids and reversals; drop the index the business key duplicates.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ORIG_RRN = sa.text("orig_rrn IS NOT NULL")
_ORIG_STAN = sa.text("orig_stan IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("transactions") as batch_op:
        batch_op.drop_index("ix_transactions_tid_rrn")
        batch_op.drop_index("ix_transactions_original")
    op.create_index(
        "ix_transactions_original", "transactions", ["tid", "orig_rrn"],
        sqlite_where=_ORIG_RRN, postgresql_where=_ORIG_RRN,
    )  # fmt: skip
    op.create_index(
        "ix_transactions_original_stan", "transactions", ["tid", "batch", "orig_stan"],
        sqlite_where=_ORIG_STAN, postgresql_where=_ORIG_STAN,
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_transactions_original_stan", table_name="transactions")
    op.drop_index("ix_transactions_original", table_name="transactions")
    op.create_index("ix_transactions_original", "transactions", ["tid", "orig_rrn"])
    op.create_index("ix_transactions_tid_rrn", "transactions", ["tid", "rrn"])
