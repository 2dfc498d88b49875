"""Storing a run of transactions: repeats, conflicts, expectations, cancels and orphans.

A run of consecutive transactions of a batch is stored as one at a time would be, in a
few statements: repeats (by event id and by business key) dropped, a repeat with other
money or another card kept as a conflict, each new transaction inserted with its
expectation (`collector.terms`), then cancels applied and waiting orphan settlements
judged (`Matcher` finds them, `OutcomeWriter` writes what changed).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import cast

from sqlalchemy import Connection, and_, select

from collector.correlate import CANCELS, EXPECTS_MONEY, Outcome, after_cancel, initial_outcome
from collector.schema import conflicts, transactions
from collector.store.inserts import ConflictInsert, TxnInsert
from collector.store.matching import Matcher, is_cancel_of, is_orphan_of
from collector.store.outcomes import OutcomeWriter
from collector.store.rows import IngestReport, OutcomeChange, TxnOutcome
from collector.store.writes import BulkWriter
from collector.terms import SettlementTerms
from posmon.wire.models import TxnEvent


class TransactionIntake:
    """Stores runs of transactions for one store."""

    def __init__(
        self,
        terms: SettlementTerms,
        skew: timedelta,
        writer: BulkWriter,
        matcher: Matcher,
        outcomes: OutcomeWriter,
    ) -> None:
        self._terms = terms
        self._skew = skew
        self._writer = writer
        self._matcher = matcher
        self._outcomes = outcomes

    def store(
        self, conn: Connection, txns: Sequence[TxnEvent], now: datetime, report: IngestReport
    ) -> None:
        """Store consecutive transactions exactly as one at a time, in a few statements.

        A transaction whose event id or business key (tid, rrn, kind) is stored already, or
        came earlier in the run, is a repeat. The new ones are inserted at once with their
        expectation (expected net, deadline). Then, in order: an approved VOID or REVERSAL
        cancels its original (stored, or new in this run); a sale or completion is cancelled
        by an approved cancel stored before the run ("voided before it arrived") and takes
        the orphan settlements waiting for it. Cancels and orphans are found with three
        set-based queries for the run; only transactions that have one cost more.
        """
        rows: dict[str, TxnInsert] = {}
        keys: set[tuple[str, str, str]] = set()
        first: list[tuple[str, TxnEvent]] = []  # each event id and business key once
        for txn in txns:
            event_id = str(txn.event_id)
            key = (txn.tid, txn.rrn, txn.kind._value_)
            if event_id not in rows and key not in keys:
                keys.add(key)
                rows[event_id] = self._txn_row(txn, event_id, now)
                first.append((event_id, txn))
        inserted = set(
            self._writer.insert_rows(conn, transactions, list(rows.values()), returning="event_id")
        )
        new = [txn for event_id, txn in first if event_id in inserted]
        report.add_stored("txn", len(new))
        report.add_repeats("txn", len(txns) - len(new))
        if len(new) < len(txns):
            self._conflicts(conn, [txn for txn in txns if str(txn.event_id) not in inserted], now)
        if not new:
            return
        money = [txn for txn in new if txn.kind in EXPECTS_MONEY]
        cancels = self._matcher.cancels_of(conn, [txn for txn in money if txn.approved], inserted)
        orphans = self._matcher.orphans_of(conn, money)
        for txn in new:
            if txn.kind in CANCELS:
                if txn.approved:
                    original = self._matcher.original_of(conn, txn)
                    if original is not None:
                        self._cancel(conn, original, txn, now, report)
                continue
            if txn.kind not in EXPECTS_MONEY:
                continue
            if txn.approved and any(is_cancel_of(cancel, txn) for cancel in cancels):
                self._outcomes.set_outcome(
                    conn,
                    _txn_id(conn, txn),
                    OutcomeChange(txn.tid, txn.rrn, Outcome.CANCELLED, Outcome.PENDING, None, now),
                    "voided before it arrived",
                    report,
                )
            # A declined sale takes its orphans too (they become UNEXPECTED), as `Matcher.match_all`
            # would have linked them had the sale come first.
            local_date = self._terms.local_date(txn.terminal_time)
            waiting = [o for o in orphans if is_orphan_of(o, txn, local_date, self._skew)]
            for orphan in waiting:
                orphans.remove(orphan)
                self._outcomes.apply(
                    conn, _txn_by_id(conn, _txn_id(conn, txn)), orphan, now, report
                )

    def _txn_row(self, txn: TxnEvent, event_id: str, now: datetime) -> TxnInsert:
        """A transaction's row, with its expectation when it is owed money."""
        outcome = initial_outcome(txn.kind, txn.approved)
        row = _fields_row(txn, event_id, self._terms.local_date(txn.terminal_time), now)
        row["expected_net"] = row["deadline"] = None
        if outcome is Outcome.PENDING:
            row["expected_net"] = self._terms.for_merchant(txn.mid).expected_net(txn.amount)
            row["deadline"] = self._terms.deadline(txn.mid, txn.terminal_time)
        row["outcome"] = outcome._value_
        return row

    def _conflicts(self, conn: Connection, repeats: Sequence[TxnEvent], now: datetime) -> None:
        """Keep the repeats whose business key is held by another event with other money or
        another card (`conflicts`); plain repeats (the same event again, or the same facts
        under a new event id) are dropped as before."""
        key = transactions.c
        first = {
            (row["tid"], row["rrn"], row["kind"]): row
            for row in self._matcher.keyed(
                conn,
                "business_keys",
                ("tid", "rrn", "kind"),
                sorted({(txn.tid, txn.rrn, txn.kind._value_) for txn in repeats}),
                lambda keys: select(
                    key.event_id, key.tid, key.rrn, key.kind, *_CONFLICT_COLUMNS
                ).join(
                    keys,
                    and_(key.tid == keys.c.tid, key.rrn == keys.c.rrn, key.kind == keys.c.kind),
                ),
            )
        }
        rows: list[ConflictInsert] = []
        for txn in repeats:
            held = first.get((txn.tid, txn.rrn, txn.kind._value_))
            if held is None or held["event_id"] == str(txn.event_id):
                continue
            differences = [
                f"{column.name} {held[column.name]!r} -> {getattr(txn, column.name)!r}"
                for column in _CONFLICT_COLUMNS
                if held[column.name] != getattr(txn, column.name)
            ]
            if differences:
                rows.append(
                    {
                        "event_id": str(txn.event_id),
                        "tid": txn.tid,
                        "rrn": txn.rrn,
                        "kind": txn.kind._value_,
                        "first_event_id": held["event_id"],
                        "differences": "; ".join(differences)[:1024],
                        "payload": txn.model_dump(mode="json", by_alias=True, exclude_none=True),
                        "stored_at": now,
                    }
                )
        if rows:
            self._writer.insert_rows(conn, conflicts, rows)

    def _cancel(
        self,
        conn: Connection,
        original: TxnOutcome,
        void: TxnEvent,
        now: datetime,
        report: IngestReport,
    ) -> None:
        previous = original.outcome
        new = after_cancel(previous)
        if new is not None:
            self._outcomes.set_outcome(
                conn,
                original.id,
                OutcomeChange(
                    original.tid, original.rrn, new, previous, original.settlement_id, now
                ),
                f"{void.kind} {void.rrn}",
                report,
            )


def _txn_id(conn: Connection, txn: TxnEvent) -> int:
    key = transactions.c
    return int(conn.execute(select(key.id).where(key.event_id == str(txn.event_id))).scalar_one())


def _txn_by_id(conn: Connection, txn_id: int) -> TxnOutcome:
    row = conn.execute(select(transactions).where(transactions.c.id == txn_id)).mappings().one()
    return TxnOutcome.from_row(row)


# What a repeat of a business key may not change without being a conflict: the money, the
# card and who it was for. (Times and the agent may differ on a resend.)
_CONFLICT_COLUMNS = (
    transactions.c.mid,
    transactions.c.amount,
    transactions.c.currency,
    transactions.c.approved,
    transactions.c.rc,
    transactions.c.pan_masked,
)


def _fields_row(txn: TxnEvent, event_id: str, local_date: date, now: datetime) -> TxnInsert:
    """The transaction's row but its expectation (`expected_net`, `deadline`, `outcome`),
    which `TransactionIntake._txn_row` sets next."""
    # The model's fields as validated: its __dict__, not a getattr per field (hot path).
    # Their names are TxnInsert's keys (held to it in tests/test_collector_store.py).
    fields = vars(txn).copy()
    del fields["schema_"]
    row = cast(TxnInsert, fields)
    row["event_id"] = event_id
    row["kind"] = txn.kind._value_
    entry_mode = txn.entry_mode
    row["entry_mode"] = entry_mode._value_ if entry_mode is not None else None
    row["txn_date"] = local_date
    row["stored_at"] = now
    return row
