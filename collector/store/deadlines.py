"""Deadlines: PENDING transactions past theirs marked OVERDUE, and the next one due.

The overdue watch (`collector.overdue`) calls these on its own clock. On PostgreSQL rows
are claimed with `FOR UPDATE SKIP LOCKED`, so collectors running the scan at once each
get different rows and each overdue is reported once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from collector.correlate import Outcome
from collector.schema import transactions
from collector.store.engine import Engines
from collector.store.outcomes import OutcomeWriter
from collector.store.rows import IngestReport, OutcomeChange


class Deadlines:
    """The overdue scan of one store."""

    def __init__(self, engines: Engines, outcomes: OutcomeWriter) -> None:
        self._engines = engines
        self._outcomes = outcomes

    def mark_overdue(self, now: datetime, limit: int = 500) -> list[OutcomeChange]:
        """Claim PENDING transactions past their deadline, mark them OVERDUE, return them."""
        key = transactions.c
        report = IngestReport()
        with self._engines.writes.begin() as conn:
            due = conn.execute(
                select(key.id, key.tid, key.rrn, key.settlement_id)
                .where(key.outcome == Outcome.PENDING.value, key.deadline <= now)
                .order_by(key.deadline)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for txn_id, tid, rrn, settlement_id in due:
                self._outcomes.set_outcome(
                    conn,
                    txn_id,
                    OutcomeChange(tid, rrn, Outcome.OVERDUE, Outcome.PENDING, settlement_id, now),
                    "deadline passed",
                    report,
                )
        return report.changes

    def next_deadline(self) -> datetime | None:
        """The earliest deadline still open, to know how long the overdue scan may sleep."""
        key = transactions.c
        with self._engines.reads.connect() as conn:
            value = conn.execute(
                select(func.min(key.deadline)).where(key.outcome == Outcome.PENDING.value)
            ).scalar()
        return value if isinstance(value, datetime) else None
