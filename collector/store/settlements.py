"""Storing a run of settlement results: repeats dropped, each matched and judged in order.

The acquirer's results (by MQTT, HTTP or a settlement file) are inserted at once, matched
to their transactions (`Matcher.match_all`), judged one after the other against the
transaction's state as judged so far (`outcomes.judge`), and the verdicts written with
one statement per table; one without a transaction stays an orphan until its
transaction arrives (`TransactionIntake`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, bindparam, update

from collector.correlate import Outcome
from collector.schema import outcome_log, settlements, transactions
from collector.store.inserts import (
    OutcomeLogInsert,
    SettlementInsert,
    SettlementVerdict,
    TxnOutcomeUpdate,
)
from collector.store.matching import Matcher
from collector.store.outcomes import OutcomeWriter, judge
from collector.store.rows import IngestReport, OutcomeChange, TxnOutcome
from collector.store.writes import BulkWriter
from posmon.wire.models import SettlementEvent

_ORPHAN = Outcome.ORPHAN.value


class SettlementIntake:
    """Stores runs of settlement results for one store."""

    def __init__(self, writer: BulkWriter, matcher: Matcher, outcomes: OutcomeWriter) -> None:
        self._writer = writer
        self._matcher = matcher
        self._outcomes = outcomes

    def store(
        self,
        conn: Connection,
        results: Sequence[SettlementEvent],
        source: str,
        now: datetime,
        report: IngestReport,
    ) -> None:
        """Store consecutive settlement results exactly as one at a time, in a few statements.

        A result whose settlement id is stored already, or came earlier in the run, is a
        repeat. The new ones are inserted at once, matched to transactions with two
        set-based queries (matching reads only a transaction's keys, which settlements never
        change), then judged in order against a copy of each transaction's state, so two
        results for one transaction see each other as they would one at a time. The
        verdicts are written with one statement per table, outcome log in order.
        """
        rows: dict[str, SettlementInsert] = {}
        for result in results:
            if result.settlement_id in rows:
                report.repeats["settlement"] += 1
            else:
                rows[result.settlement_id] = _settlement_row(result, source, now)
        inserted = set(
            self._writer.insert_rows(
                conn, settlements, list(rows.values()), returning="settlement_id", copy=True
            )
        )
        report.repeats["settlement"] += len(rows) - len(inserted)
        if not inserted:
            return
        new = [row for sid, row in rows.items() if sid in inserted]
        report.stored["settlement"] += len(new)
        matches = self._matcher.match_all(conn, new)
        txns: dict[int, TxnOutcome] = {}  # state as judged so far, by transaction id
        # Bound parameters of the three statements below, and the outcome log's rows.
        verdicts: list[SettlementVerdict] = []
        txn_updates: dict[int, TxnOutcomeUpdate] = {}
        logs: list[OutcomeLogInsert] = []
        for row in new:
            match = matches.get(row["settlement_id"])
            if match is None:
                orphan = OutcomeChange(
                    row["tid"], row["rrn"], Outcome.ORPHAN, None, row["settlement_id"], now
                )
                report.changes.append(orphan)
                logs.append(self._outcomes.log_row(None, orphan, "no transaction matches (yet)"))
                continue
            txn = txns.setdefault(match.id, match)
            outcome, change, note = judge(
                txn, row["settlement_id"], row["status"], row["net_amount"], now
            )
            verdicts.append(
                {"b_id": row["settlement_id"], "b_txn": txn.id, "b_outcome": outcome.value}
            )
            if change is not None:
                txns[txn.id] = replace(
                    txn, outcome=change.outcome, settlement_id=change.settlement_id
                )
                txn_updates[txn.id] = {
                    "b_id": txn.id,
                    "b_outcome": change.outcome.value,
                    "b_at": change.at,
                    "b_settlement": change.settlement_id,
                }
                report.changes.append(change)
                logs.append(self._outcomes.log_row(txn.id, change, note))
        if verdicts:
            conn.execute(
                update(settlements)
                .where(settlements.c.settlement_id == bindparam("b_id"))
                .values(transaction_id=bindparam("b_txn"), outcome=bindparam("b_outcome")),
                verdicts,
            )
        if txn_updates:
            # The last state of each transaction is what one-at-a-time updates leave.
            conn.execute(
                update(transactions)
                .where(transactions.c.id == bindparam("b_id"))
                .values(
                    outcome=bindparam("b_outcome"),
                    outcome_at=bindparam("b_at"),
                    settlement_id=bindparam("b_settlement"),
                ),
                list(txn_updates.values()),
            )
        if logs:
            self._writer.insert_rows(conn, outcome_log, logs, copy=True)


def _settlement_row(result: SettlementEvent, source: str, now: datetime) -> SettlementInsert:
    # The model's fields as validated: its __dict__, not a getattr per field (hot path).
    # Their names are SettlementInsert's keys (held to it in tests/test_collector_store.py).
    fields = vars(result).copy()
    del fields["schema_"]
    row = cast(SettlementInsert, fields)
    # `_value_`: the member's value without the enum property's lookup (a million rows).
    row["status"] = result.status._value_
    row["kind"] = result.kind._value_
    row["source"] = source
    row["received_at"] = now
    row["transaction_id"] = None
    row["outcome"] = _ORPHAN
    return row
