"""The collector's store: the one module that speaks SQL (SQLAlchemy Core).

Everything that enters the collector, by whichever door, goes through `Store.ingest()`:
one database transaction per batch, in which messages are stored (repeats dropped by
event id and by business key), transactions get their expectation, settlements are
matched and judged, and outcome changes are logged. Only after the commit does the caller
acknowledge the messages.

SQLite (WAL) is the embedded default for one collector. On PostgreSQL several collectors
share the database: per-terminal advisory locks serialise the matching of a terminal's
transactions and settlements across collectors, and the overdue scan claims rows with
`FOR UPDATE SKIP LOCKED`, so each overdue transaction is reported exactly once.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    RowMapping,
    and_,
    create_engine,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from collector.correlate import (
    CANCELS,
    EXPECTS_MONEY,
    Outcome,
    TxnState,
    after_cancel,
    initial_outcome,
    judge,
)
from collector.schema import (
    batches,
    collectors,
    deadletters,
    outcome_log,
    presence,
    settlements,
    status_events,
    transactions,
)
from collector.terms import SettlementTerms
from posmon.wire.models import (
    BatchEvent,
    DeadLetter,
    PresenceEvent,
    SettlementEvent,
    SettlementStatus,
    StatusEvent,
    TxnEvent,
    TxnKind,
    WireMessage,
)

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
_MONEY_KINDS = [kind.value for kind in EXPECTS_MONEY]
_CANCEL_KINDS = [kind.value for kind in CANCELS]


@dataclass(frozen=True, slots=True)
class OutcomeChange:
    """A transaction (or an orphan settlement) that changed outcome in a batch."""

    tid: str
    rrn: str
    outcome: Outcome
    previous: Outcome | None
    settlement_id: str | None
    at: datetime


@dataclass(slots=True)
class IngestReport:
    """What one batch did: counts by kind, repeats dropped, outcome changes."""

    stored: Counter[str] = field(default_factory=Counter)
    repeats: Counter[str] = field(default_factory=Counter)
    changes: list[OutcomeChange] = field(default_factory=list)


class Store:
    """The collector's database (see the module docstring)."""

    def __init__(
        self,
        url: str,
        terms: SettlementTerms,
        *,
        collector_id: str = "collector",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        skew_days: int = 1,
    ) -> None:
        self.url = url
        self.terms = terms
        self.collector_id = collector_id
        self.clock = clock
        self.skew = timedelta(days=skew_days)
        self.engine = _engine(url)
        self.is_postgres = self.engine.dialect.name == "postgresql"

    # --- lifecycle ----------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest migration (a no-op when it is current)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            if self.is_postgres:
                # Two collectors starting together must not both create the tables.
                connection.execute(text("SELECT pg_advisory_xact_lock(727001)"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    # --- the one way in -----------------------------------------------------------------

    def ingest(self, messages: Sequence[WireMessage], source: str = "mqtt") -> IngestReport:
        """Store a batch of validated messages in one database transaction."""
        report = IngestReport()
        now = self.clock()
        with self.engine.begin() as conn:
            if self.is_postgres:
                self._lock_terminals(conn, messages)
            for message in messages:
                kind = message.SCHEMA.split(".", 1)[1].split("/", 1)[0]
                if self._store_one(conn, message, source, now, report):
                    report.stored[kind] += 1
                else:
                    report.repeats[kind] += 1
        return report

    def _store_one(
        self,
        conn: Connection,
        message: WireMessage,
        source: str,
        now: datetime,
        report: IngestReport,
    ) -> bool:
        if isinstance(message, TxnEvent):
            return self._transaction(conn, message, now, report)
        if isinstance(message, SettlementEvent):
            return self._settlement(conn, message, source, now, report)
        if isinstance(message, StatusEvent):
            return self._insert_new(conn, status_events, _status_row(message))
        if isinstance(message, BatchEvent):
            return self._insert_new(conn, batches, _batch_row(message))
        if isinstance(message, DeadLetter):
            return self._insert_new(conn, deadletters, _deadletter_row(message))
        if isinstance(message, PresenceEvent):
            self._presence(conn, message)
            return True
        raise TypeError(f"the collector does not store {message.SCHEMA}")

    def _lock_terminals(self, conn: Connection, messages: Sequence[WireMessage]) -> None:
        # Sorted, so two collectors locking overlapping sets cannot deadlock.
        tids = sorted({m.tid for m in messages if isinstance(m, TxnEvent | SettlementEvent)})
        for tid in tids:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:tid))"), {"tid": tid})

    # --- transactions -------------------------------------------------------------------

    def _transaction(
        self, conn: Connection, txn: TxnEvent, now: datetime, report: IngestReport
    ) -> bool:
        outcome = initial_outcome(txn.kind, txn.approved)
        row = _txn_row(txn, self.terms.local_date(txn.terminal_time), now)
        if outcome is Outcome.PENDING:
            row["expected_net"] = self.terms.for_merchant(txn.mid).expected_net(txn.amount)
            row["deadline"] = self.terms.deadline(txn.mid, txn.terminal_time)
        row["outcome"] = outcome.value
        inserted = conn.execute(
            self._insert(transactions)
            .values(row)
            .on_conflict_do_nothing()
            .returning(transactions.c.id)
        ).first()
        if inserted is None:
            return False
        txn_id = inserted[0]
        if txn.kind in CANCELS and txn.approved:
            original = self._original_of(conn, txn)
            if original is not None:
                self._cancel(conn, original, txn, now, report)
        elif outcome is Outcome.PENDING:
            if self._cancelled_already(conn, txn):
                self._set_outcome(
                    conn,
                    txn_id,
                    OutcomeChange(txn.tid, txn.rrn, Outcome.CANCELLED, Outcome.PENDING, None, now),
                    "voided before it arrived",
                    report,
                )
            for orphan in self._orphans_for(conn, txn):
                self._apply(conn, self._txn_by_id(conn, txn_id), orphan, now, report)
        return True

    def _original_of(self, conn: Connection, void: TxnEvent) -> RowMapping | None:
        key = transactions.c
        conditions = []
        if void.orig_rrn is not None:
            conditions.append(key.rrn == void.orig_rrn)
        if void.orig_stan is not None:
            conditions.append(and_(key.batch == void.batch, key.stan == void.orig_stan))
        if not conditions:
            return None
        return (
            conn.execute(
                select(transactions)
                .where(key.tid == void.tid, key.kind.in_(_MONEY_KINDS), or_(*conditions))
                .order_by(key.id)
                .limit(1)
            )
            .mappings()
            .first()
        )

    def _cancelled_already(self, conn: Connection, txn: TxnEvent) -> bool:
        key = transactions.c
        return (
            conn.execute(
                select(key.id)
                .where(
                    key.tid == txn.tid,
                    key.kind.in_(_CANCEL_KINDS),
                    key.approved.is_(True),
                    or_(
                        key.orig_rrn == txn.rrn,
                        and_(key.batch == txn.batch, key.orig_stan == txn.stan),
                    ),
                )
                .limit(1)
            ).first()
            is not None
        )

    def _cancel(
        self,
        conn: Connection,
        original: RowMapping,
        void: TxnEvent,
        now: datetime,
        report: IngestReport,
    ) -> None:
        previous = Outcome(original["outcome"])
        new = after_cancel(previous)
        if new is not None:
            self._set_outcome(
                conn,
                original["id"],
                OutcomeChange(
                    original["tid"], original["rrn"], new, previous, original["settlement_id"], now
                ),
                f"{void.kind} {void.rrn}",
                report,
            )

    def _orphans_for(self, conn: Connection, txn: TxnEvent) -> list[RowMapping]:
        key = settlements.c
        local_date = self.terms.local_date(txn.terminal_time)
        return list(
            conn.execute(
                select(settlements)
                .where(
                    key.outcome == Outcome.ORPHAN.value,
                    key.tid == txn.tid,
                    or_(
                        key.rrn == txn.rrn,
                        and_(
                            key.batch == txn.batch,
                            key.stan == txn.stan,
                            key.txn_date.between(local_date - self.skew, local_date + self.skew),
                        ),
                    ),
                )
                .order_by(key.settled_at, key.settlement_id)
            ).mappings()
        )

    # --- settlements --------------------------------------------------------------------

    def _settlement(
        self,
        conn: Connection,
        result: SettlementEvent,
        source: str,
        now: datetime,
        report: IngestReport,
    ) -> bool:
        row = _settlement_row(result, source, now)
        inserted = conn.execute(
            self._insert(settlements)
            .values(row)
            .on_conflict_do_nothing()
            .returning(settlements.c.settlement_id)
        ).first()
        if inserted is None:
            return False
        txn = self._match(conn, result)
        if txn is None:
            orphan = OutcomeChange(
                result.tid, result.rrn, Outcome.ORPHAN, None, result.settlement_id, now
            )
            report.changes.append(orphan)
            self._log(conn, None, orphan, "no transaction matches (yet)")
            return True
        self._apply(conn, txn, row, now, report)
        return True

    def _match(self, conn: Connection, result: SettlementEvent) -> RowMapping | None:
        key = transactions.c
        by_rrn = (
            conn.execute(
                select(transactions)
                .where(key.tid == result.tid, key.rrn == result.rrn, key.kind.in_(_MONEY_KINDS))
                .order_by(key.id)
                .limit(1)
            )
            .mappings()
            .first()
        )
        if by_rrn is not None or result.batch is None or result.stan is None:
            return by_rrn
        return (
            conn.execute(
                select(transactions)
                .where(
                    key.tid == result.tid,
                    key.batch == result.batch,
                    key.stan == result.stan,
                    key.txn_date.between(result.txn_date - self.skew, result.txn_date + self.skew),
                    key.kind.in_(_MONEY_KINDS),
                )
                .order_by(key.id)
                .limit(1)
            )
            .mappings()
            .first()
        )

    def _apply(
        self,
        conn: Connection,
        txn: RowMapping,
        result: RowMapping | dict[str, Any],
        now: datetime,
        report: IngestReport,
    ) -> None:
        state = TxnState(Outcome(txn["outcome"]), txn["expected_net"], txn["settlement_id"])
        verdict = judge(
            state, result["settlement_id"], SettlementStatus(result["status"]), result["net_amount"]
        )
        conn.execute(
            update(settlements)
            .where(settlements.c.settlement_id == result["settlement_id"])
            .values(transaction_id=txn["id"], outcome=verdict.settlement.value)
        )
        if verdict.txn is not None and (
            verdict.txn is not state.outcome or verdict.credited_by != state.credited_by
        ):
            self._set_outcome(
                conn,
                txn["id"],
                OutcomeChange(
                    txn["tid"],
                    txn["rrn"],
                    verdict.txn,
                    state.outcome,
                    verdict.credited_by or result["settlement_id"],
                    now,
                ),
                verdict.note,
                report,
            )

    def _set_outcome(
        self,
        conn: Connection,
        txn_id: int,
        change: OutcomeChange,
        note: str,
        report: IngestReport,
    ) -> None:
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
        conn.execute(
            outcome_log.insert().values(
                transaction_id=txn_id,
                settlement_id=change.settlement_id,
                outcome=change.outcome.value,
                previous=change.previous.value if change.previous else None,
                at=change.at,
                collector_id=self.collector_id,
                note=note or None,
            )
        )

    # --- overdue ------------------------------------------------------------------------

    def mark_overdue(self, now: datetime, limit: int = 500) -> list[OutcomeChange]:
        """Claim PENDING transactions past their deadline, mark them OVERDUE, return them.

        Rows are claimed with `FOR UPDATE SKIP LOCKED` (PostgreSQL), so collectors running
        this at once each get different rows and each overdue is reported once.
        """
        key = transactions.c
        report = IngestReport()
        with self.engine.begin() as conn:
            due = conn.execute(
                select(key.id, key.tid, key.rrn, key.settlement_id)
                .where(key.outcome == Outcome.PENDING.value, key.deadline <= now)
                .order_by(key.deadline)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for txn_id, tid, rrn, settlement_id in due:
                self._set_outcome(
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
        with self.engine.connect() as conn:
            value = conn.execute(
                select(func.min(key.deadline)).where(key.outcome == Outcome.PENDING.value)
            ).scalar()
        return value if isinstance(value, datetime) else None

    # --- reading ------------------------------------------------------------------------

    def transaction(
        self, tid: str, rrn: str, kind: TxnKind = TxnKind.SALE
    ) -> dict[str, Any] | None:
        """One stored transaction by its business key, with its outcome."""
        key = transactions.c
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(transactions).where(
                        key.tid == tid, key.rrn == rrn, key.kind == kind.value
                    )
                )
                .mappings()
                .first()
            )
        return dict(row) if row is not None else None

    def settlement(self, settlement_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(settlements).where(settlements.c.settlement_id == settlement_id)
                )
                .mappings()
                .first()
            )
        return dict(row) if row is not None else None

    def outcome_history(self, tid: str, rrn: str) -> list[str]:
        """The outcomes a transaction went through, oldest first."""
        key = transactions.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(outcome_log.c.outcome)
                .join(transactions, transactions.c.id == outcome_log.c.transaction_id)
                .where(key.tid == tid, key.rrn == rrn)
                .order_by(outcome_log.c.id)
            ).scalars()
            return list(rows)

    def counts(self) -> dict[str, int]:
        """Rows per table, and transactions per outcome."""
        result: dict[str, int] = {}
        with self.engine.connect() as conn:
            for table in (
                transactions,
                settlements,
                status_events,
                batches,
                deadletters,
                presence,
                outcome_log,
            ):
                result[table.name] = conn.execute(
                    select(func.count()).select_from(table)
                ).scalar_one()
            for outcome, count in conn.execute(
                select(transactions.c.outcome, func.count()).group_by(transactions.c.outcome)
            ):
                result[f"outcome.{outcome}"] = count
        return result

    def record_collector(
        self, started_at: datetime, subscriptions: list[str], counters: dict[str, Any]
    ) -> None:
        """Say this collector is alive, with what it subscribes to and its counters."""
        row = {
            "collector_id": self.collector_id,
            "started_at": started_at,
            "seen_at": datetime.now(UTC),
            "subscriptions": subscriptions,
            "counters": counters,
        }
        statement = self._insert(collectors).values(row)
        with self.engine.begin() as conn:
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["collector_id"],
                    set_={name: statement.excluded[name] for name in row if name != "collector_id"},
                )
            )

    def collectors(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                dict(row)
                for row in conn.execute(
                    select(collectors).order_by(collectors.c.collector_id)
                ).mappings()
            ]

    # --- helpers ------------------------------------------------------------------------

    def _insert(self, table: Any) -> Any:
        dialect = postgresql if self.is_postgres else sqlite
        return dialect.insert(table)

    def _insert_new(self, conn: Connection, table: Any, row: dict[str, Any]) -> bool:
        statement: Insert = self._insert(table).values(row).on_conflict_do_nothing()
        return bool(conn.execute(statement).rowcount)

    def _presence(self, conn: Connection, message: PresenceEvent) -> None:
        row = {
            "agent_id": message.agent_id,
            "state": message.state.value,
            "tids": list(message.tids),
            "version": message.version,
            "observed_at": message.observed_at,
        }
        statement = self._insert(presence).values(row)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["agent_id"],
                set_={name: statement.excluded[name] for name in row if name != "agent_id"},
                where=presence.c.observed_at <= statement.excluded.observed_at,
            )
        )

    def _txn_by_id(self, conn: Connection, txn_id: int) -> RowMapping:
        return (
            conn.execute(select(transactions).where(transactions.c.id == txn_id)).mappings().one()
        )


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
            # Take the write lock at BEGIN: a reader that later writes cannot deadlock.
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def _txn_row(txn: TxnEvent, local_date: Any, now: datetime) -> dict[str, Any]:
    return {
        "event_id": str(txn.event_id),
        "agent_id": txn.agent_id,
        "tid": txn.tid,
        "mid": txn.mid,
        "kind": txn.kind.value,
        "amount": txn.amount,
        "currency": txn.currency,
        "pan_masked": txn.pan_masked,
        "rc": txn.rc,
        "approved": txn.approved,
        "rrn": txn.rrn,
        "stan": txn.stan,
        "batch": txn.batch,
        "txn_date": local_date,
        "terminal_time": txn.terminal_time,
        "observed_at": txn.observed_at,
        "stored_at": now,
        "auth_code": txn.auth_code,
        "issuer": txn.issuer,
        "entry_mode": txn.entry_mode.value if txn.entry_mode else None,
        "orig_stan": txn.orig_stan,
        "orig_rrn": txn.orig_rrn,
        "extra": txn.extra,
    }


def _settlement_row(result: SettlementEvent, source: str, now: datetime) -> dict[str, Any]:
    row = result.model_dump(exclude={"schema_"}, mode="python")
    row["status"] = result.status.value
    row["kind"] = result.kind.value
    row.update(source=source, received_at=now, transaction_id=None, outcome=Outcome.ORPHAN.value)
    return row


def _status_row(status: StatusEvent) -> dict[str, Any]:
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


def _batch_row(batch: BatchEvent) -> dict[str, Any]:
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


def _deadletter_row(letter: DeadLetter) -> dict[str, Any]:
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
    return DeadLetter(
        event_id=uuid.uuid4(),
        source=source,
        reason=reason[:1024],
        payload=payload.decode("utf-8", errors="backslashreplace")[:65536],
        observed_at=datetime.now(UTC),
        topic=topic,
    )


def iter_chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Consecutive lists of at most `size` items."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
