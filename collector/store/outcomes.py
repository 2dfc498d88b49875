"""Outcomes: judging a settlement against its transaction, and writing what changed.

`judge` is the store's side of `collector.correlate.judge` (typed rows in, the settlement's
outcome and the transaction's change out). `OutcomeWriter` writes a change: the
transaction's outcome, a line in the outcome log (with this collector's id), and the change
in the batch's report, which is what the alert engine and the overdue watch see.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, update

from collector.correlate import Outcome, TxnState
from collector.correlate import judge as judge_verdict
from collector.schema import outcome_log, settlements, transactions
from collector.store.inserts import OutcomeLogInsert
from collector.store.rows import IngestReport, OrphanSettlement, OutcomeChange, TxnOutcome
from posmon.wire.models import SettlementStatus


class OutcomeWriter:
    """Writes outcome changes, each with its line in the outcome log."""

    def __init__(self, collector_id: str) -> None:
        self._collector_id = collector_id

    def apply(
        self,
        conn: Connection,
        txn: TxnOutcome,
        orphan: OrphanSettlement,
        now: datetime,
        report: IngestReport,
    ) -> None:
        """Judge a waiting settlement against its transaction, now arrived; write the
        settlement's verdict and any change."""
        outcome, change, note = judge(
            txn, orphan.settlement_id, orphan.status, orphan.net_amount, now
        )
        conn.execute(
            update(settlements)
            .where(settlements.c.settlement_id == orphan.settlement_id)
            .values(transaction_id=txn.id, outcome=outcome.value)
        )
        if change is not None:
            self.set_outcome(conn, txn.id, change, note, report)

    def set_outcome(
        self,
        conn: Connection,
        txn_id: int,
        change: OutcomeChange,
        note: str,
        report: IngestReport,
    ) -> None:
        """Write a transaction's change of outcome, log it, and add it to the report."""
        conn.execute(
            update(transactions)
            .where(transactions.c.id == txn_id)
            .values(
                outcome=change.outcome.value,
                outcome_at=change.at,
                settlement_id=change.settlement_id,
            )
        )
        self._log(conn, txn_id, change, note)
        report.changes.append(change)

    def _log(self, conn: Connection, txn_id: int | None, change: OutcomeChange, note: str) -> None:
        conn.execute(outcome_log.insert().values(self.log_row(txn_id, change, note)))

    def log_row(self, txn_id: int | None, change: OutcomeChange, note: str) -> OutcomeLogInsert:
        """The outcome log's row for a change, as insert values (the bulk path of
        `collector.store.settlements` inserts many at once with `BulkWriter`)."""
        return {
            "transaction_id": txn_id,
            "settlement_id": change.settlement_id,
            "outcome": change.outcome._value_,
            "previous": change.previous._value_ if change.previous else None,
            "at": change.at,
            "collector_id": self._collector_id,
            "note": note or None,
        }


def judge(
    txn: TxnOutcome,
    settlement_id: str,
    status: SettlementStatus | str,
    net_amount: int,
    now: datetime,
) -> tuple[Outcome, OutcomeChange | None, str]:
    """A settlement's own outcome, and its transaction's change if it has one."""
    state = TxnState(txn.outcome, txn.expected_net, txn.settlement_id)
    verdict = judge_verdict(state, settlement_id, SettlementStatus(status), net_amount)
    if verdict.txn is None or (
        verdict.txn is state.outcome and verdict.credited_by == state.credited_by
    ):
        return verdict.settlement, None, verdict.note
    change = OutcomeChange(
        txn.tid,
        txn.rrn,
        verdict.txn,
        state.outcome,
        verdict.credited_by or settlement_id,
        now,
    )
    return verdict.settlement, change, verdict.note
