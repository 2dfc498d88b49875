"""Retention: what the collector may forget, in small batches, and its archive.

Each family of rows has its own age (`[retention]`, `RetentionSection`):

- raw input: status messages (`statuses_days`) and dead letters (`deadletters_days`);
- money: transactions with their settlements and outcome log, batch closes, unmatched
  settlements and conflicting repeats (`transactions_days`);
- work: resolved alerts with their history and notifications, and cases that are no
  longer worked (confirmed, closed, cancelled) with their audit log (`closed_days`,
  counted from when they were resolved or last moved).

Nothing that an open case or an open alert needs is ever removed: a transaction stays as
long as any case points at it (the case is removed first, once closed long enough), or
as long as an alert about it is open; an alert stays while a case points at it.

Rows go in batches of `batch_rows`, each its own short transaction, children before their
parents, so ingest never waits long for a lock. With an archive folder, each batch is
written there first (one gzip JSON-lines file per table, `Archive`), flushed, and only
then deleted: what retention removes can be read back with `restore`. The row counts
(`collector.store.counts`) follow by the database's own delete triggers.

Not partitions: on PostgreSQL dropping a whole day's partition would cost nothing; until
the growing tables are partitioned, PostgreSQL deletes in batches like SQLite does.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Engine,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    not_,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator, TypeEngine

from collector.schema import (
    alert_history,
    alerts,
    batches,
    case_events,
    cases,
    conflicts,
    deadletters,
    notifications,
    outcome_log,
    settlements,
    status_events,
    transactions,
)

# Alerts still being worked, and cases still being worked (casestore's OPEN_CASE_STATES).
OPEN_ALERTS = ("firing", "acknowledged")
DONE_CASES = ("CONFIRMED", "CLOSED", "CANCELLED")


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Rows older than these go (each family's own age, as absolute times)."""

    statuses: datetime
    deadletters: datetime
    transactions: datetime
    closed: datetime

    @classmethod
    def before(cls, moment: datetime) -> Cutoffs:
        """The same cutoff for every family (`--before DATE`)."""
        return cls(moment, moment, moment, moment)

    @classmethod
    def of_ages(
        cls, now: datetime, statuses: float, deadletters: float, transactions: float, closed: float
    ) -> Cutoffs:
        """Cutoffs `days` before `now`, per family."""
        return cls(
            now - timedelta(days=statuses),
            now - timedelta(days=deadletters),
            now - timedelta(days=transactions),
            now - timedelta(days=closed),
        )


@dataclass(slots=True)
class RetentionReport:
    """Rows removed (or archived) per table, and the longest single batch transaction."""

    rows: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    longest_batch_s: float = 0.0
    seconds: float = 0.0

    def add(self, table: str, count: int) -> None:
        self.rows[table] = self.rows.get(table, 0) + count


class Archive:
    """One gzip JSON-lines file per table in a folder; values as JSON (times in ISO 8601)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, IO[str]] = {}

    def write(self, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        handle = self._files.get(table.name)
        if handle is None:
            path = self.folder / f"{table.name}.jsonl.gz"
            # Open across batches, closed by close() (or the `with` block).
            handle = gzip.open(path, "at", encoding="utf-8")  # noqa: SIM115
            self._files[table.name] = handle
        for row in rows:
            handle.write(json.dumps(row, default=_json_value, ensure_ascii=False) + "\n")
        handle.flush()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _json_value(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot archive a {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class _Family:
    """A table's rows that may go, and the rows of other tables that go with each."""

    table: Table
    condition: Callable[[Cutoffs], ColumnElement[bool]]
    key: str = "id"  # the column the dependents refer to
    dependents: tuple[tuple[Table, str], ...] = ()  # (table, its column holding the key)


def _families() -> list[_Family]:
    """Children before parents: a case before the transaction and alert it points at."""
    txn, stl, alert, case = transactions.c, settlements.c, alerts.c, cases.c
    open_alert_about_txn = exists().where(
        alert.tid == txn.tid, alert.rrn == txn.rrn, alert.status.in_(OPEN_ALERTS)
    )
    open_alert_about_stl = exists().where(
        alert.tid == stl.tid, alert.rrn == stl.rrn, alert.status.in_(OPEN_ALERTS)
    )
    return [
        _Family(status_events, lambda cut: status_events.c.observed_at < cut.statuses),
        _Family(deadletters, lambda cut: deadletters.c.observed_at < cut.deadletters),
        _Family(
            cases,
            lambda cut: and_(case.state.in_(DONE_CASES), case.updated_at < cut.closed),
            key="case_id",
            dependents=((case_events, "case_id"),),
        ),
        _Family(
            alerts,
            lambda cut: and_(
                alert.status == "resolved",
                alert.resolved_at < cut.closed,
                not_(exists().where(case.alert_id == alert.alert_id)),
            ),
            key="alert_id",
            dependents=((alert_history, "alert_id"), (notifications, "alert_id")),
        ),
        _Family(
            transactions,
            lambda cut: and_(
                txn.terminal_time < cut.transactions,
                not_(exists().where(case.transaction_id == txn.id)),
                not_(open_alert_about_txn),
            ),
            dependents=((outcome_log, "transaction_id"), (settlements, "transaction_id")),
        ),
        _Family(  # settlements that matched no transaction
            settlements,
            lambda cut: and_(
                stl.transaction_id.is_(None),
                stl.received_at < cut.transactions,
                not_(open_alert_about_stl),
            ),
            key="settlement_id",
        ),
        _Family(batches, lambda cut: batches.c.terminal_time < cut.transactions),
        _Family(conflicts, lambda cut: conflicts.c.stored_at < cut.transactions),
    ]


class Retention:
    """Removes (and archives) what `Cutoffs` allow, in batches; or only archives it."""

    def __init__(self, writes: Engine, *, batch_rows: int = 2000, pause_s: float = 0.0) -> None:
        self._writes = writes
        self.batch_rows = batch_rows
        self.pause_s = pause_s
        self.families = _families()

    def run(
        self,
        cutoffs: Cutoffs,
        archive: Archive | None = None,
        *,
        remove: bool = True,
        stop: Callable[[], bool] = lambda: False,
    ) -> RetentionReport:
        """Archive (when given) and remove (when `remove`) every family's old rows, a batch
        per transaction: read, written to the archive, deleted, committed; then the pause,
        outside any transaction. Archiving only, the walk goes on past each batch's keys."""
        report = RetentionReport()
        started = time.monotonic()
        for family in self.families:
            after: Any = None
            while not stop():
                began = time.monotonic()
                with self._writes.begin() as conn:
                    found, keys = self._batch(conn, family, cutoffs, after)
                    if not keys:
                        break
                    for table, rows in found:
                        if archive is not None and rows:
                            archive.write(table, rows)
                        report.add(table.name, len(rows))
                    if remove:
                        key = family.table.c[family.key]
                        for child, column in family.dependents:
                            conn.execute(delete(child).where(child.c[column].in_(keys)))
                        conn.execute(delete(family.table).where(key.in_(keys)))
                report.batches += 1
                report.longest_batch_s = max(report.longest_batch_s, time.monotonic() - began)
                if not remove:
                    after = keys[-1]
                elif self.pause_s:
                    time.sleep(self.pause_s)
        report.seconds = time.monotonic() - started
        return report

    def _batch(
        self, conn: Connection, family: _Family, cutoffs: Cutoffs, after: Any
    ) -> tuple[list[tuple[Table, list[dict[str, Any]]]], list[Any]]:
        """Up to `batch_rows` of the family's rows past `after` in key order, with their
        dependents (dependents first); and the rows' keys."""
        table = family.table
        key = table.c[family.key]
        query = select(table).where(family.condition(cutoffs))
        if after is not None:
            query = query.where(key > after)
        rows = [
            dict(row) for row in conn.execute(query.order_by(key).limit(self.batch_rows)).mappings()
        ]
        keys = [row[family.key] for row in rows]
        found: list[tuple[Table, list[dict[str, Any]]]] = []
        if keys:
            for child, column in family.dependents:
                children = conn.execute(
                    select(child).where(child.c[column].in_(keys)).order_by(*child.primary_key)
                )
                found.append((child, [dict(row) for row in children.mappings()]))
            found.append((table, rows))
        return found, keys


def restore(writes: Engine, folder: Path, *, batch_rows: int = 2000) -> dict[str, int]:
    """Insert an archive's rows back, with their ids; rows already there are an error
    (restoring twice is refused by the unique keys, and nothing of that batch is kept).
    Parents before children, in the archive's order."""
    found: dict[str, int] = {}
    order = [
        transactions,
        settlements,
        outcome_log,
        batches,
        conflicts,
        status_events,
        deadletters,
        alerts,
        alert_history,
        notifications,
        cases,
        case_events,
    ]
    for table in order:
        path = folder / f"{table.name}.jsonl.gz"
        if not path.exists():
            continue
        convert = _converters(table)
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            chunk: list[dict[str, Any]] = []
            for line in handle:
                row = json.loads(line)
                chunk.append({name: convert[name](value) for name, value in row.items()})
                if len(chunk) >= batch_rows:
                    _insert(writes, table, chunk)
                    found[table.name] = found.get(table.name, 0) + len(chunk)
                    chunk = []
            if chunk:
                _insert(writes, table, chunk)
                found[table.name] = found.get(table.name, 0) + len(chunk)
    return found


def _insert(writes: Engine, table: Table, rows: list[dict[str, Any]]) -> None:
    """One batch in one transaction; on PostgreSQL the id sequence is moved past the
    largest id (restored into an empty database, it would hand out theirs again)."""
    with writes.begin() as conn:
        conn.execute(insert(table), rows)
        if writes.dialect.name == "postgresql" and "id" in table.c:
            conn.execute(
                select(
                    func.setval(
                        func.pg_get_serial_sequence(table.name, "id"),
                        select(func.max(table.c.id)).scalar_subquery(),
                    )
                )
            )


def _converters(table: Table) -> dict[str, Callable[[Any], Any]]:
    """JSON values back to the column's Python type."""
    found: dict[str, Callable[[Any], Any]] = {}
    for column in table.columns:
        found[column.name] = _converter(column)
    return found


def _converter(column: Column[Any]) -> Callable[[Any], Any]:
    kind = column.type
    if isinstance(kind, TypeDecorator):
        kind = kind.impl if isinstance(kind.impl, TypeEngine) else kind
    if isinstance(kind, DateTime):
        return lambda value: None if value is None else datetime.fromisoformat(value)
    if isinstance(kind, Date):
        return lambda value: None if value is None else date.fromisoformat(value)
    if isinstance(kind, Boolean):
        return lambda value: None if value is None else bool(value)
    return lambda value: value
