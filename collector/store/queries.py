"""Read queries for the API, the CLI and the simulators: stored facts by their keys.

Each runs on the store's read engine (on SQLite, never taking the write lock) and hands
out the typed rows of `collector.store.rows`.
"""

from __future__ import annotations

from sqlalchemy import Engine, select

from collector.correlate import Outcome
from collector.schema import (
    outcome_log,
    settlements,
    transactions,
)
from collector.store.rows import StoredSettlement, StoredTransaction
from posmon.wire.models import TxnKind


class Queries:
    """Reads of one store."""

    def __init__(self, reads: Engine) -> None:
        self._reads = reads

    def transaction(
        self, tid: str, rrn: str, kind: TxnKind = TxnKind.SALE
    ) -> StoredTransaction | None:
        """One stored transaction by its business key, with its outcome."""
        key = transactions.c
        with self._reads.connect() as conn:
            row = (
                conn.execute(
                    select(transactions).where(
                        key.tid == tid, key.rrn == rrn, key.kind == kind.value
                    )
                )
                .mappings()
                .first()
            )
        return StoredTransaction.from_row(row) if row is not None else None

    def settlement(self, settlement_id: str) -> StoredSettlement | None:
        """One stored settlement result by its id, with its verdict."""
        with self._reads.connect() as conn:
            row = (
                conn.execute(
                    select(settlements).where(settlements.c.settlement_id == settlement_id)
                )
                .mappings()
                .first()
            )
        return StoredSettlement.from_row(row) if row is not None else None

    def outcome_history(self, tid: str, rrn: str) -> list[Outcome]:
        """The outcomes a transaction went through, oldest first."""
        key = transactions.c
        with self._reads.connect() as conn:
            rows = conn.execute(
                select(outcome_log.c.outcome)
                .join(transactions, transactions.c.id == outcome_log.c.transaction_id)
                .where(key.tid == tid, key.rrn == rrn)
                .order_by(outcome_log.c.id)
            ).scalars()
            return [Outcome(outcome) for outcome in rows]
