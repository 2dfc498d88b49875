"""The one way in: a batch of validated messages stored in one database transaction.

`Intake.ingest` splits a batch by kind: transactions and settlement results take effect in
order (`TransactionIntake`, `SettlementIntake`); status, batch, presence and dead-letter
events touch nothing else and are stored each kind in one go, repeats dropped by event id.
On PostgreSQL the batch's terminals are locked first, so collectors sharing the database
match a terminal's rows one at a time. `new_deadletter` builds what the doors store for a
message they could not accept.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, text

from collector.schema import batches, deadletters, presence, status_events
from collector.store.engine import Engines
from collector.store.inserts import (
    BatchInsert,
    DeadletterInsert,
    EventInsert,
    PresenceUpsert,
    StatusInsert,
)
from collector.store.rows import IngestReport
from collector.store.settlements import SettlementIntake
from collector.store.transactions import TransactionIntake
from collector.store.writes import BulkWriter
from posmon.pan import scrub
from posmon.wire.models import (
    BatchEvent,
    DeadLetter,
    PresenceEvent,
    SettlementEvent,
    StatusEvent,
    TxnEvent,
    WireMessage,
)


class Intake:
    """Stores batches for one store."""

    def __init__(
        self,
        engines: Engines,
        writer: BulkWriter,
        transactions: TransactionIntake,
        settlements: SettlementIntake,
    ) -> None:
        self._engines = engines
        self._writer = writer
        self._transactions = transactions
        self._settlements = settlements

    def ingest(
        self,
        messages: Sequence[WireMessage],
        source: str,
        now: datetime,
        *,
        durable: bool = True,
    ) -> IngestReport:
        """Store a batch of validated messages in one database transaction.

        With `durable=False`, on PostgreSQL the commit returns before its WAL is on disk:
        the batch is visible to the alert engine at once, and it is on disk once a later
        `sync()` has returned. Nothing may be acknowledged in between.

        Transactions and settlement results take effect in order: consecutive ones of one
        kind are stored together (`TransactionIntake`, `SettlementIntake`), with the same result as
        one at a time. Status, batch, presence and dead-letter events touch nothing else
        and nothing reads them while storing: each kind is stored in one go, in its own
        order, so the status every few transactions does not split the transactions into
        many small runs, each paying its statements.
        """
        report = IngestReport()
        ordered: list[WireMessage] = []
        events: dict[type[WireMessage], list[WireMessage]] = {}
        for message in messages:
            if isinstance(message, TxnEvent | SettlementEvent):
                ordered.append(message)
            else:
                events.setdefault(type(message), []).append(message)
        with (self._engines.writes if durable else self._engines.derived).begin() as conn:
            if self._engines.is_postgres:
                self._lock_terminals(conn, ordered)
            for _, group in itertools.groupby(ordered, key=type):
                run = list(group)
                if isinstance(run[0], TxnEvent):
                    txns = [m for m in run if isinstance(m, TxnEvent)]
                    self._transactions.store(conn, txns, now, report)
                else:
                    results = [m for m in run if isinstance(m, SettlementEvent)]
                    self._settlements.store(conn, results, source, now, report)
            for kind, run in events.items():
                if kind is PresenceEvent:
                    for message in run:
                        assert isinstance(message, PresenceEvent)
                        self._presence(conn, message)
                    report.stored["presence"] += len(run)
                else:
                    self._events(conn, run, report)
        return report

    def _events(self, conn: Connection, run: Sequence[WireMessage], report: IngestReport) -> None:
        """Store consecutive status, batch or dead-letter events; repeats (event id) dropped."""
        table, to_row, kind = _EVENT_TABLES.get(type(run[0]), (None, None, ""))
        if table is None or to_row is None:
            raise TypeError(f"the collector does not store {run[0].SCHEMA}")
        rows: dict[str, EventInsert] = {}
        for message in run:
            row = to_row(message)
            rows.setdefault(row["event_id"], row)
        inserted = self._writer.insert_rows(conn, table, list(rows.values()), returning="event_id")
        report.add_stored(kind, len(inserted))
        report.add_repeats(kind, len(run) - len(inserted))

    def _lock_terminals(self, conn: Connection, messages: Sequence[WireMessage]) -> None:
        # One statement for the whole batch, taken in the order of the lock keys, so two
        # collectors locking overlapping sets of terminals cannot deadlock.
        tids = sorted({m.tid for m in messages if isinstance(m, TxnEvent | SettlementEvent)})
        if tids:
            conn.execute(
                text(
                    "SELECT pg_advisory_xact_lock(key) FROM (SELECT DISTINCT hashtext(tid) AS key"
                    " FROM unnest(CAST(:tids AS text[])) AS tid ORDER BY key) AS keys"
                ),
                {"tids": tids},
            )

    def _presence(self, conn: Connection, message: PresenceEvent) -> None:
        row: PresenceUpsert = {
            "agent_id": message.agent_id,
            "state": message.state.value,
            "tids": list(message.tids),
            "version": message.version,
            "observed_at": message.observed_at,
        }
        statement = self._writer.insert(presence).values(row)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["agent_id"],
                set_={name: statement.excluded[name] for name in row if name != "agent_id"},
                where=presence.c.observed_at <= statement.excluded.observed_at,
            )
        )


def _status_row(status: StatusEvent) -> StatusInsert:
    return {
        "event_id": str(status.event_id),
        "agent_id": status.agent_id,
        "tid": status.tid,
        "link_up": status.link_up,
        "network": status.network.value,
        "saf_pending": status.saf_pending,
        "serial_ok": status.serial_ok,
        "heartbeat_only": bool(status.heartbeat_only),
        "observed_at": status.observed_at,
        "rssi_dbm": status.rssi_dbm,
        "host_rtt_ms": status.host_rtt_ms,
        "battery_pct": status.battery_pct,
        "paper": status.paper.value if status.paper else None,
        "firmware": status.firmware,
    }


def _batch_row(batch: BatchEvent) -> BatchInsert:
    return {
        "event_id": str(batch.event_id),
        "agent_id": batch.agent_id,
        "tid": batch.tid,
        "mid": batch.mid,
        "batch": batch.batch,
        "count": batch.count,
        "total": batch.total,
        "currency": batch.currency,
        "result": batch.result.value,
        "terminal_time": batch.terminal_time,
        "observed_at": batch.observed_at,
    }


def _deadletter_row(letter: DeadLetter) -> DeadletterInsert:
    return {
        "event_id": str(letter.event_id),
        "source": letter.source,
        "reason": letter.reason,
        "payload": letter.payload,
        "topic": letter.topic,
        "observed_at": letter.observed_at,
    }


def new_deadletter(source: str, reason: str, payload: bytes, topic: str | None) -> DeadLetter:
    """A dead letter for a message the collector could not accept (payload masked)."""
    # Masked whole, then cut to the dead letter's limits: cut first, a card number across
    # the cut would be left too short to be one, its first digits kept in clear.
    return DeadLetter(
        event_id=uuid.uuid4(),
        source=source,
        reason=scrub(reason)[:1024],
        payload=scrub(payload.decode("utf-8", errors="backslashreplace"))[:65536],
        observed_at=datetime.now(UTC),
        topic=topic,
    )


_EVENT_TABLES: dict[type, tuple[Table, Callable[[Any], EventInsert], str]] = {
    StatusEvent: (status_events, _status_row, "status"),
    BatchEvent: (batches, _batch_row, "batch"),
    DeadLetter: (deadletters, _deadletter_row, "deadletter"),
}
