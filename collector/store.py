"""The collector's store: the one module that speaks SQL (SQLAlchemy Core).

Everything that enters the collector, by whichever door, goes through `Store.ingest()`:
one database transaction per batch, in which messages are stored (repeats dropped by
event id and by business key), transactions get their expectation, settlements are
matched and judged, and outcome changes are logged. Only once the commit is on disk does
the caller acknowledge the messages: at once by default, or, with `durable=False`, after a
later `sync()` (the MQTT ingest: what it derives need not wait for the disk, its acks do).

SQLite (WAL) is the embedded default for one collector. On PostgreSQL several collectors
share the database: per-terminal advisory locks serialise the matching of a terminal's
transactions and settlements across collectors, and the overdue scan claims rows with
`FOR UPDATE SKIP LOCKED`, so each overdue transaction is reported exactly once.
"""

from __future__ import annotations

import itertools
import json
import logging
import operator
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Date,
    Engine,
    RowMapping,
    String,
    Table,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

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
    UtcDateTime,
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
_ORPHAN = Outcome.ORPHAN.value
# Keys per matching query: bounds the size of one statement's parameters and results.
_KEYS_PER_QUERY = 1000
# Parameters per multi-row INSERT: within SQLite's 32,766 and PostgreSQL's 65,535.
_PARAMETERS_PER_STATEMENT = 16_000
_MISSING = object()


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
        # Reads (the alert engine's tails, the overdue watch's, status, the API's) on their
        # own engine. SQLite: transactions that never take the write lock. PostgreSQL:
        # autocommit, each read its own statement-level snapshot as under READ COMMITTED,
        # without the BEGIN and ROLLBACK round trips a transaction around it would cost.
        self._reads = _engine(url, writer=False)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        # What the collector derives from stored facts (alerts, cases, notification marks,
        # the alert engine's cursors), and the MQTT ingest's batches until their `sync()`:
        # on PostgreSQL committed without waiting for the WAL to reach the disk. A commit
        # there waited up to 850 ms at times on this project's CI machine (the disk's
        # flush), and an alert waited with it. Nothing acknowledged to anyone rides on
        # these commits, and the WAL is written in order: a crash loses at most the last
        # fraction of a second of them, never one without the cursors saved after it, and
        # the engine derives those alerts again from the durable facts (the broker sends
        # the unacknowledged messages again).
        # SQLite in WAL mode with synchronous=NORMAL does not flush at each commit anyway.
        self.derived = _engine(url, durable=False) if self.is_postgres else self.engine
        self._insert_sqls: dict[tuple[str, tuple[str, ...], int, str | None], str] = {}
        self._converter_cache: dict[
            tuple[str, tuple[str, ...]], list[tuple[int, Callable[[Any], Any]]]
        ] = {}
        self._statements: dict[str, Any] = {}

    @property
    def reads(self) -> Engine:
        """The engine for reads: on SQLite one whose transactions do not take the write lock."""
        return self._reads

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
        self._reads.dispose()
        self.derived.dispose()

    # --- the one way in -----------------------------------------------------------------

    def ingest(
        self, messages: Sequence[WireMessage], source: str = "mqtt", *, durable: bool = True
    ) -> IngestReport:
        """Store a batch of validated messages in one database transaction.

        With `durable=False`, on PostgreSQL the commit returns before its WAL is on disk:
        the batch is visible to the alert engine at once, and it is on disk once a later
        `sync()` has returned. Nothing may be acknowledged in between.

        Transactions and settlement results take effect in order: consecutive ones of one
        kind are stored together (`_transactions`, `_settlements`), with the same result as
        one at a time. Status, batch, presence and dead-letter events touch nothing else
        and nothing reads them while storing: each kind is stored in one go, in its own
        order, so the status every few transactions does not split the transactions into
        many small runs, each paying its statements.
        """
        report = IngestReport()
        now = self.clock()
        ordered: list[WireMessage] = []
        events: dict[type[WireMessage], list[WireMessage]] = {}
        for message in messages:
            if isinstance(message, TxnEvent | SettlementEvent):
                ordered.append(message)
            else:
                events.setdefault(type(message), []).append(message)
        with (self.engine if durable else self.derived).begin() as conn:
            if self.is_postgres:
                self._lock_terminals(conn, ordered)
            for _, group in itertools.groupby(ordered, key=type):
                run = list(group)
                if isinstance(run[0], TxnEvent):
                    txns = [m for m in run if isinstance(m, TxnEvent)]
                    self._transactions(conn, txns, now, report)
                else:
                    results = [m for m in run if isinstance(m, SettlementEvent)]
                    self._settlements(conn, results, source, now, report)
            for kind, run in events.items():
                if kind is PresenceEvent:
                    for message in run:
                        assert isinstance(message, PresenceEvent)
                        self._presence(conn, message)
                    report.stored["presence"] += len(run)
                else:
                    self._events(conn, run, report)
        return report

    @property
    def sync_needed(self) -> bool:
        """True when a commit of `ingest(durable=False)` may not be on disk at its return."""
        return self.is_postgres

    def sync(self) -> None:
        """Return once every commit made before the call is on disk.

        PostgreSQL writes its WAL in order, and a transaction that has written WAL commits
        synchronously (the server's `synchronous_commit`) by flushing the WAL up to its own
        commit record: past every commit before it, asynchronous ones included. The write
        is the smallest there is, a transactional logical-decoding message (no table, no
        dead row; any role may emit one; a logical-decoding consumer sees it, prefixed
        `posmon-sync`). A transaction id alone is not enough: PostgreSQL commits a
        transaction that wrote no WAL without the flush. Where `synchronous_commit` is off
        for the database or role, it is turned on for this transaction (only).
        SQLite: there is nothing to wait for (WAL with synchronous=NORMAL, as ever).
        """
        if self.is_postgres:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(
                    "SELECT CASE WHEN current_setting('synchronous_commit') = 'off'"
                    " THEN set_config('synchronous_commit', 'on', true) END,"
                    " pg_logical_emit_message(true, 'posmon-sync', '')"
                )

    def _events(self, conn: Connection, run: Sequence[WireMessage], report: IngestReport) -> None:
        """Store consecutive status, batch or dead-letter events; repeats (event id) dropped."""
        table, to_row, kind = _EVENT_TABLES.get(type(run[0]), (None, None, ""))
        if table is None or to_row is None:
            raise TypeError(f"the collector does not store {run[0].SCHEMA}")
        rows: dict[str, dict[str, Any]] = {}
        for message in run:
            row = to_row(message)
            rows.setdefault(row["event_id"], row)
        inserted = self._insert_rows(conn, table, list(rows.values()), returning="event_id")
        _add(report.stored, kind, len(inserted))
        _add(report.repeats, kind, len(run) - len(inserted))

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

    # --- transactions -------------------------------------------------------------------

    def _transactions(
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
        rows: dict[str, dict[str, Any]] = {}
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
            self._insert_rows(conn, transactions, list(rows.values()), returning="event_id")
        )
        new = [txn for event_id, txn in first if event_id in inserted]
        _add(report.stored, "txn", len(new))
        _add(report.repeats, "txn", len(txns) - len(new))
        if not new:
            return
        money = [txn for txn in new if txn.kind in EXPECTS_MONEY]
        cancels = self._cancels_of(conn, [txn for txn in money if txn.approved], inserted)
        orphans = self._orphans_of(conn, money)
        for txn in new:
            if txn.kind in CANCELS:
                if txn.approved:
                    original = self._original_of(conn, txn)
                    if original is not None:
                        self._cancel(conn, original, txn, now, report)
                continue
            if txn.kind not in EXPECTS_MONEY:
                continue
            if txn.approved and any(_cancels(cancel, txn) for cancel in cancels):
                self._set_outcome(
                    conn,
                    self._txn_id(conn, txn),
                    OutcomeChange(txn.tid, txn.rrn, Outcome.CANCELLED, Outcome.PENDING, None, now),
                    "voided before it arrived",
                    report,
                )
            # A declined sale takes its orphans too (they become UNEXPECTED), as `_match_all`
            # would have linked them had the sale come first.
            local_date = self.terms.local_date(txn.terminal_time)
            waiting = [o for o in orphans if _orphan_of(o, txn, local_date, self.skew)]
            for orphan in waiting:
                orphans.remove(orphan)
                self._apply(
                    conn, self._txn_by_id(conn, self._txn_id(conn, txn)), orphan, now, report
                )

    def _txn_row(self, txn: TxnEvent, event_id: str, now: datetime) -> dict[str, Any]:
        """A transaction's row, with its expectation when it is owed money."""
        outcome = initial_outcome(txn.kind, txn.approved)
        row = _txn_row(txn, event_id, self.terms.local_date(txn.terminal_time), now)
        row["expected_net"] = row["deadline"] = None
        if outcome is Outcome.PENDING:
            row["expected_net"] = self.terms.for_merchant(txn.mid).expected_net(txn.amount)
            row["deadline"] = self.terms.deadline(txn.mid, txn.terminal_time)
        row["outcome"] = outcome._value_
        return row

    def _txn_id(self, conn: Connection, txn: TxnEvent) -> int:
        key = transactions.c
        return int(
            conn.execute(select(key.id).where(key.event_id == str(txn.event_id))).scalar_one()
        )

    def _cancels_of(
        self, conn: Connection, txns: Sequence[TxnEvent], new_ids: set[str]
    ) -> list[dict[str, Any]]:
        """Approved cancels stored before this run that name one of `txns` as original.

        By (tid, orig_rrn), an index search; and by (tid, batch, orig_stan), a search of the
        (tid, batch) prefix of the fallback index (a terminal's batch: hundreds of rows).
        Cancels new in the run (event ids in `new_ids`) are left to `_original_of`, in order.
        """
        if not txns:
            return []
        key = transactions.c
        found: list[dict[str, Any]] = []
        columns = (key.tid, key.batch, key.orig_rrn, key.orig_stan, key.event_id)
        cancel = and_(key.kind.in_(_CANCEL_KINDS), key.approved.is_(True))
        pairs = sorted({(txn.tid, txn.rrn) for txn in txns})
        found.extend(
            dict(row)
            for row in self._keyed(
                conn,
                "cancels_by_rrn",
                ("tid", "rrn"),
                pairs,
                lambda keys: (
                    select(*columns)
                    .join(keys, and_(key.tid == keys.c.tid, key.orig_rrn == keys.c.rrn))
                    .where(cancel)
                ),
            )
        )
        triples = sorted({(txn.tid, txn.batch, txn.stan) for txn in txns})
        found.extend(
            dict(row)
            for row in self._keyed(
                conn,
                "cancels_by_stan",
                ("tid", "batch", "stan"),
                triples,
                lambda keys: (
                    select(*columns)
                    .join(
                        keys,
                        and_(
                            key.tid == keys.c.tid,
                            key.batch == keys.c.batch,
                            key.orig_stan == keys.c.stan,
                        ),
                    )
                    .where(cancel)
                ),
            )
        )
        return [row for row in found if row["event_id"] not in new_ids]

    def _orphans_of(self, conn: Connection, txns: Sequence[TxnEvent]) -> list[RowMapping]:
        """Orphan settlements of the terminals of `txns`, oldest first (few: each an alert)."""
        if not txns:
            return []
        key = settlements.c
        orphans = self._keyed(
            conn,
            "orphans",
            ("tid",),
            sorted({(txn.tid,) for txn in txns}),
            lambda keys: (
                select(settlements)
                .join(keys, key.tid == keys.c.tid)
                .where(key.outcome == Outcome.ORPHAN.value)
            ),
        )
        return sorted(orphans, key=lambda row: (row["settled_at"], row["settlement_id"]))

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

    # --- settlements --------------------------------------------------------------------

    def _settlements(
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
        rows: dict[str, dict[str, Any]] = {}
        for result in results:
            if result.settlement_id in rows:
                report.repeats["settlement"] += 1
            else:
                rows[result.settlement_id] = _settlement_row(result, source, now)
        inserted = set(
            self._insert_rows(
                conn, settlements, list(rows.values()), returning="settlement_id", copy=True
            )
        )
        report.repeats["settlement"] += len(rows) - len(inserted)
        if not inserted:
            return
        new = [row for sid, row in rows.items() if sid in inserted]
        report.stored["settlement"] += len(new)
        matches = self._match_all(conn, new)
        txns: dict[int, dict[str, Any]] = {}  # state as judged so far, by transaction id
        verdicts: list[dict[str, Any]] = []
        txn_updates: dict[int, dict[str, Any]] = {}
        logs: list[dict[str, Any]] = []
        for row in new:
            match = matches.get(row["settlement_id"])
            if match is None:
                orphan = OutcomeChange(
                    row["tid"], row["rrn"], Outcome.ORPHAN, None, row["settlement_id"], now
                )
                report.changes.append(orphan)
                logs.append(self._log_row(None, orphan, "no transaction matches (yet)"))
                continue
            txn = txns.setdefault(match["id"], match)
            outcome, change, note = self._judge(txn, row, now)
            verdicts.append(
                {"b_id": row["settlement_id"], "b_txn": txn["id"], "b_outcome": outcome.value}
            )
            if change is not None:
                txn.update(outcome=change.outcome.value, settlement_id=change.settlement_id)
                txn_updates[txn["id"]] = {
                    "b_id": txn["id"],
                    "b_outcome": change.outcome.value,
                    "b_at": change.at,
                    "b_settlement": change.settlement_id,
                }
                report.changes.append(change)
                logs.append(self._log_row(txn["id"], change, note))
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
            self._insert_rows(conn, outcome_log, logs, copy=True)

    def _match_all(
        self, conn: Connection, rows: Sequence[dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """Settlement id -> the transaction it belongs to, for those that have one.

        The first money transaction (by id) of the terminal with the settlement's RRN; failing
        that, with its batch and STAN and a date within the clock skew.
        """
        key = transactions.c

        by_rrn: dict[tuple[str, str], dict[str, Any]] = {}
        pairs = sorted({(row["tid"], row["rrn"]) for row in rows})
        money = key.kind.in_(_MONEY_KINDS)
        for hit in self._keyed(
            conn,
            "match_by_rrn",
            ("tid", "rrn"),
            pairs,
            lambda keys: (
                select(transactions)
                .join(keys, and_(key.tid == keys.c.tid, key.rrn == keys.c.rrn))
                .where(money)
                .order_by(key.id)
            ),
        ):
            by_rrn.setdefault((hit["tid"], hit["rrn"]), dict(hit))
        by_stan: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        triples = sorted(
            {
                (row["tid"], row["batch"], row["stan"])
                for row in rows
                if (row["tid"], row["rrn"]) not in by_rrn
                and row["batch"] is not None
                and row["stan"] is not None
            }
        )
        for hit in self._keyed(
            conn,
            "match_by_stan",
            ("tid", "batch", "stan"),
            triples,
            lambda keys: (
                select(transactions)
                .join(
                    keys,
                    and_(key.tid == keys.c.tid, key.batch == keys.c.batch, key.stan == keys.c.stan),
                )
                .where(money)
                .order_by(key.id)
            ),
        ):
            by_stan.setdefault((hit["tid"], hit["batch"], hit["stan"]), []).append(dict(hit))
        matches: dict[str, dict[str, Any]] = {}
        if not by_rrn and not by_stan:
            return matches  # all orphans, as in a file imported before its transactions
        for row in rows:
            txn = by_rrn.get((row["tid"], row["rrn"]))
            candidates = (
                by_stan.get((row["tid"], row["batch"], row["stan"])) if txn is None else None
            )
            if candidates:
                low, high = row["txn_date"] - self.skew, row["txn_date"] + self.skew
                txn = next((c for c in candidates if low <= c["txn_date"] <= high), None)
            if txn is not None:
                matches[row["settlement_id"]] = txn
        return matches

    def _keyed(
        self,
        conn: Connection,
        name: str,
        names: tuple[str, ...],
        keys: Sequence[tuple[str, ...]],
        query: Callable[[Any], Any],
    ) -> list[RowMapping]:
        """The rows of `query(keys table)` for these keys, `_KEYS_PER_QUERY` at a time.

        The keys table has columns `names` and is joined on an index. The keys travel as
        one parameter per column (PostgreSQL arrays) or one JSON text (SQLite), so the
        statement stays the same whatever their number and is built once per store under
        `name` (SQLAlchemy's building and cache key cost a millisecond a batch otherwise).
        (A row-value IN list would make SQLite scan the table.)
        """
        statement = self._statements.get(name)
        if statement is None:
            statement = self._statements[name] = query(self._key_rows(names))
        found: list[RowMapping] = []
        for part in _slices(keys, _KEYS_PER_QUERY):
            params: dict[str, Any] = (
                {f"keys_{n}": [key[i] for key in part] for i, n in enumerate(names)}
                if self.is_postgres
                else {"keys": json.dumps(part)}
            )
            found.extend(conn.execute(statement, params).mappings())
        return found

    def _key_rows(self, names: tuple[str, ...]) -> Any:
        """The keys table of `_keyed`: its parameters named after `names`."""
        if self.is_postgres:
            arrays = [bindparam(f"keys_{name}", type_=postgresql.ARRAY(String)) for name in names]
            return func.unnest(*arrays).table_valued(*names).render_derived(name="keys")
        each = func.json_each(bindparam("keys", type_=String)).table_valued("value")
        return (
            select(
                *(func.json_extract(each.c.value, f"$[{i}]").label(n) for i, n in enumerate(names))
            )
            .select_from(each)
            .subquery("keys")
        )

    def _apply(
        self,
        conn: Connection,
        txn: RowMapping,
        result: RowMapping | dict[str, Any],
        now: datetime,
        report: IngestReport,
    ) -> None:
        outcome, change, note = self._judge(txn, result, now)
        conn.execute(
            update(settlements)
            .where(settlements.c.settlement_id == result["settlement_id"])
            .values(transaction_id=txn["id"], outcome=outcome.value)
        )
        if change is not None:
            self._set_outcome(conn, txn["id"], change, note, report)

    @staticmethod
    def _judge(
        txn: RowMapping | dict[str, Any], result: RowMapping | dict[str, Any], now: datetime
    ) -> tuple[Outcome, OutcomeChange | None, str]:
        """The settlement's own outcome, and the transaction's change if it has one."""
        state = TxnState(Outcome(txn["outcome"]), txn["expected_net"], txn["settlement_id"])
        verdict = judge(
            state, result["settlement_id"], SettlementStatus(result["status"]), result["net_amount"]
        )
        if verdict.txn is None or (
            verdict.txn is state.outcome and verdict.credited_by == state.credited_by
        ):
            return verdict.settlement, None, verdict.note
        change = OutcomeChange(
            txn["tid"],
            txn["rrn"],
            verdict.txn,
            state.outcome,
            verdict.credited_by or result["settlement_id"],
            now,
        )
        return verdict.settlement, change, verdict.note

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
        conn.execute(outcome_log.insert().values(self._log_row(txn_id, change, note)))

    def _log_row(self, txn_id: int | None, change: OutcomeChange, note: str) -> dict[str, Any]:
        return {
            "transaction_id": txn_id,
            "settlement_id": change.settlement_id,
            "outcome": change.outcome._value_,
            "previous": change.previous._value_ if change.previous else None,
            "at": change.at,
            "collector_id": self.collector_id,
            "note": note or None,
        }

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
        with self._reads.connect() as conn:
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
        return dict(row) if row is not None else None

    def settlement(self, settlement_id: str) -> dict[str, Any] | None:
        with self._reads.connect() as conn:
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
        with self._reads.connect() as conn:
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
        with self._reads.connect() as conn:
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
        with self._reads.connect() as conn:
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

    def _insert_rows(
        self,
        conn: Connection,
        table: Table,
        rows: Sequence[dict[str, Any]],
        returning: str | None = None,
        *,
        copy: bool = False,
    ) -> list[Any]:
        """Insert many rows (same keys, scalar values), skipping conflicts; returns `returning`.

        Values are converted as the columns' bind processors would (the hot types by
        `_fast_converter`), so the rows are those an executemany through SQLAlchemy would
        write, for a fraction of its per-row Python time (what a million-row settlement
        file, or an ingest batch, mostly spends): multi-row `INSERT ... ON CONFLICT DO
        NOTHING` statements at the driver. With `copy` on PostgreSQL the rows go by `COPY`
        (`_copy_rows`) instead.
        """
        if not rows:
            return []
        names = tuple(rows[0])
        converters = self._converters(table, names)
        take = operator.itemgetter(*names)
        one = len(names) == 1
        per_statement = max(1, _PARAMETERS_PER_STATEMENT // len(names))
        # Values converted so far, per column: times and dates repeat a lot in a batch.
        done: list[dict[Any, Any]] = [{} for _ in converters]
        returned: list[Any] = []
        copied: list[list[Any]] = []
        for part in _slices(rows, per_statement):
            flat: list[list[Any]] = []
            for row in part:
                values = [take(row)] if one else list(take(row))
                for (index, convert), converted in zip(converters, done, strict=True):
                    value = values[index]
                    try:
                        new = converted.get(value, _MISSING)
                    except TypeError:  # unhashable: a JSON column's dict
                        values[index] = convert(value)
                        continue
                    if new is _MISSING:
                        new = converted[value] = convert(value)
                    values[index] = new
                flat.append(values)
            if self.is_postgres and copy:
                copied.extend(flat)
                continue
            if self.is_postgres:
                sql = self._insert_sql(table, names, 0, returning)
                parameters: tuple[Any, ...] = tuple(
                    list(column) for column in zip(*flat, strict=True)
                )
            else:
                sql = self._insert_sql(table, names, len(part), returning)
                parameters = tuple(itertools.chain.from_iterable(flat))
            result = conn.exec_driver_sql(sql, parameters)
            if returning is not None:
                returned.extend(result.scalars())
        if copied:
            returned.extend(self._copy_rows(conn, table, names, copied, returning))
        return returned

    def _copy_rows(
        self,
        conn: Connection,
        table: Table,
        names: tuple[str, ...],
        rows: list[list[Any]],
        returning: str | None,
    ) -> list[Any]:
        """PostgreSQL: rows in by `COPY` (rows formatted by psycopg's C code), then inserted.

        psycopg dumps the one-array-per-column parameters of the INSERT element by element
        in Python, several microseconds a row. The rows are copied into a temporary table
        of the same columns and inserted from there (`ON CONFLICT DO NOTHING`, as the
        INSERT would); a table with `returning` None and no unique key but its identity
        (the outcome log) takes the `COPY` itself, in order.
        """
        quote = self.engine.dialect.identifier_preparer.quote
        columns = ", ".join(quote(name) for name in names)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            direct = returning is None and table is outcome_log
            if direct:
                target = quote(table.name)
            else:
                # Identifiers come from the schema; every value goes through COPY.
                target = quote(f"posmon_in_{table.name}")
                cursor.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {target} ON COMMIT DELETE ROWS "  # noqa: S608
                    f"AS SELECT {columns} FROM {quote(table.name)} WITH NO DATA"
                )
            with cursor.copy(f"COPY {target} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            if direct:
                return []
            sql = (
                f"INSERT INTO {quote(table.name)} ({columns}) "  # noqa: S608
                f"SELECT {columns} FROM {target} ON CONFLICT DO NOTHING"
            )
            if returning is not None:
                sql += f" RETURNING {quote(returning)}"
            cursor.execute(sql)
            inserted = [found[0] for found in cursor.fetchall()] if returning else []
            cursor.execute(f"TRUNCATE {target}")
            return inserted
        finally:
            cursor.close()

    def _converters(
        self, table: Table, names: tuple[str, ...]
    ) -> list[tuple[int, Callable[[Any], Any]]]:
        """(position, converter) of the columns whose values need converting for the driver."""
        shape = (table.name, names)
        if shape not in self._converter_cache:
            dialect = self.engine.dialect
            found = []
            for index, name in enumerate(names):
                column_type = table.c[name].type
                convert = _fast_converter(column_type, dialect.name)
                if convert is None:
                    convert = column_type.dialect_impl(dialect).bind_processor(dialect)
                if convert is not None:
                    found.append((index, convert))
            self._converter_cache[shape] = found
        return self._converter_cache[shape]

    def _insert_sql(
        self, table: Table, names: tuple[str, ...], count: int, returning: str | None
    ) -> str:
        shape = (table.name, names, count, returning)
        if shape not in self._insert_sqls:
            dialect = self.engine.dialect
            quote = dialect.identifier_preparer.quote
            columns = ", ".join(quote(name) for name in names)
            if self.is_postgres:
                # One array per column: the statement text stays the same whatever the
                # number of rows (psycopg parses a long VALUES list anew every time).
                # %b: psycopg sends the arrays in binary, without quoting every element.
                arrays = ", ".join(
                    f"%b::{table.c[name].type.compile(dialect=dialect)}[]" for name in names
                )
                source = f"SELECT * FROM unnest({arrays})"  # noqa: S608 - see below
            else:
                one = "(" + ", ".join(["?"] * len(names)) + ")"
                source = f"VALUES {', '.join([one] * count)}"
            # Identifiers and types come from the schema; every value is a bound parameter.
            sql = f"INSERT INTO {quote(table.name)} ({columns}) {source} ON CONFLICT DO NOTHING"
            if returning is not None:
                sql += f" RETURNING {quote(returning)}"
            self._insert_sqls[shape] = sql
        return self._insert_sqls[shape]

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


def _engine(url: str, *, writer: bool = True, durable: bool = True) -> Engine:
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
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Writers take the write lock at BEGIN: a transaction that reads and then
            # writes cannot deadlock with another. Readers must not queue behind them.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

        return engine
    # Writes ping a pooled connection before using it (pool_pre_ping): after a restart or
    # failover they run on a live one. Reads do not: a read the server drops fails before
    # anything was done with it, the pool replaces every connection older than that
    # failure, and the caller's next turn reads again (the ping was a round trip on every
    # checkout, a quarter of the alert engine's time per alert under load).
    # tests/test_collector_ingest.py kills the connections mid-stream to show it.
    if writer and not durable:
        options = {"options": "-c synchronous_commit=off"}
        return create_engine(url, pool_pre_ping=True, connect_args=options)
    if writer:
        return create_engine(url, pool_pre_ping=True)
    return create_engine(url, isolation_level="AUTOCOMMIT")


def _utc(value: datetime) -> datetime:
    # As UtcDateTime.process_bind_param: aware times only, kept in UTC.
    if value.tzinfo is None:
        raise ValueError("naive datetime: posmon stores aware times only")
    return value.astimezone(UTC)


def _sqlite_utc(value: datetime | None) -> str | None:
    """UtcDateTime for SQLite: naive UTC in SQLAlchemy's DATETIME storage format."""
    if value is None:
        return None
    # "+00:00" cut off: the naive UTC time's text, without building that datetime.
    return _utc(value).isoformat(" ", "microseconds")[:-6]


def _sqlite_date(value: date | None) -> str | None:
    """Date for SQLite, in SQLAlchemy's DATE storage format."""
    if value is None:
        return None
    if type(value) is not date:
        raise TypeError(f"a date column got {type(value).__name__}")
    return value.isoformat()


def _postgres_utc(value: datetime | None) -> datetime | None:
    """UtcDateTime for PostgreSQL: the aware time in UTC."""
    return None if value is None else _utc(value)


def _fast_converter(column_type: Any, dialect: str) -> Callable[[Any], Any] | None:
    """A converter doing what the column type's bind processing does, in a tenth of the time.

    SQLAlchemy's own chain (TypeDecorator, then the dialect's processor) costs about 2 us a
    value; a batch has four times a row. Anything not listed keeps SQLAlchemy's processor.
    """
    if isinstance(column_type, UtcDateTime):
        return _sqlite_utc if dialect == "sqlite" else _postgres_utc
    if dialect == "sqlite" and type(column_type) is Date:
        return _sqlite_date
    return None


def _txn_row(txn: TxnEvent, event_id: str, local_date: Any, now: datetime) -> dict[str, Any]:
    # The model's fields as validated (its __dict__: a tenth of the time of getattr each).
    row = vars(txn).copy()
    del row["schema_"]
    row["event_id"] = event_id
    row["kind"] = txn.kind._value_
    entry_mode = txn.entry_mode
    row["entry_mode"] = entry_mode._value_ if entry_mode is not None else None
    row.update(txn_date=local_date, stored_at=now)
    return row


def _settlement_row(result: SettlementEvent, source: str, now: datetime) -> dict[str, Any]:
    # The model's fields as validated (its __dict__: a tenth of the time of getattr each).
    row = vars(result).copy()
    del row["schema_"]
    # `_value_`: the member's value without the enum property's lookup (a million rows).
    row["status"] = result.status._value_
    row["kind"] = result.kind._value_
    row.update(source=source, received_at=now, transaction_id=None, outcome=_ORPHAN)
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


_EVENT_TABLES: dict[type, tuple[Table, Callable[[Any], dict[str, Any]], str]] = {
    StatusEvent: (status_events, _status_row, "status"),
    BatchEvent: (batches, _batch_row, "batch"),
    DeadLetter: (deadletters, _deadletter_row, "deadletter"),
}


def _add(counter: Counter[str], kind: str, count: int) -> None:
    if count:
        counter[kind] += count


def _cancels(cancel: dict[str, Any], txn: TxnEvent) -> bool:
    """Whether a stored cancel row names `txn` as its original (by RRN, or batch and STAN)."""
    return bool(
        cancel["tid"] == txn.tid
        and (
            cancel["orig_rrn"] == txn.rrn
            or (cancel["batch"] == txn.batch and cancel["orig_stan"] == txn.stan)
        )
    )


def _orphan_of(orphan: RowMapping, txn: TxnEvent, local_date: date, skew: timedelta) -> bool:
    """Whether an orphan settlement belongs to `txn`: its RRN, or batch, STAN and date."""
    return bool(
        orphan["tid"] == txn.tid
        and (
            orphan["rrn"] == txn.rrn
            or (
                orphan["batch"] == txn.batch
                and orphan["stan"] == txn.stan
                and local_date - skew <= orphan["txn_date"] <= local_date + skew
            )
        )
    )


def _slices(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    return (items[start : start + size] for start in range(0, len(items), size))


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
