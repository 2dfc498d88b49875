"""The collector's store: the one package that speaks SQL for stored facts (SQLAlchemy Core).

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

`Store` composes the package's modules, each one concern, data flowing one way
(docs/architecture.md):

- `engine`: the engines, SQLite's pragmas, migrations, `sync()`;
- `intake`: a batch in, split by kind; status, batch, presence and dead-letter events;
- `transactions`, `settlements`: storing a run of each (repeats, conflicts, expectations);
- `matching`: the set-based lookups that find what belongs together (read only);
- `outcomes`: judging a settlement, writing outcome changes and their log;
- `writes`: bulk INSERT and COPY, values converted as the columns would;
- `deadlines`: the overdue scan; `queries`: reads by key; `collectors`: collectors' records;
- `rows`: what the store hands out (frozen rows, the batch's report).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from collector.correlate import Outcome
from collector.store.collectors import CollectorRecords
from collector.store.counts import RowCounts
from collector.store.deadlines import Deadlines
from collector.store.engine import MIGRATIONS, Engines
from collector.store.intake import Intake, new_deadletter
from collector.store.matching import Matcher
from collector.store.outcomes import OutcomeWriter
from collector.store.queries import Queries
from collector.store.rows import (
    CollectorRecord,
    IngestReport,
    OutcomeChange,
    StoredSettlement,
    StoredTransaction,
)
from collector.store.settlements import SettlementIntake
from collector.store.transactions import TransactionIntake
from collector.store.writes import BulkWriter
from collector.terms import SettlementTerms
from posmon.wire.models import TxnKind, WireMessage

__all__ = [
    "MIGRATIONS",
    "CollectorRecord",
    "IngestReport",
    "OutcomeChange",
    "Store",
    "StoredSettlement",
    "StoredTransaction",
    "new_deadletter",
]


class Store:
    """The collector's database (see the package docstring): a facade over its parts."""

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
        self._engines = Engines.open(url)
        self.engine = self._engines.writes
        self.derived = self._engines.derived
        self.is_postgres = self._engines.is_postgres
        writer = BulkWriter(self.engine.dialect)
        matcher = Matcher(is_postgres=self.is_postgres, skew=self.skew)
        outcomes = OutcomeWriter(collector_id)
        self._intake = Intake(
            self._engines,
            writer,
            TransactionIntake(terms, self.skew, writer, matcher, outcomes),
            SettlementIntake(writer, matcher, outcomes),
        )
        self._deadlines = Deadlines(self._engines, outcomes)
        self._queries = Queries(self._engines.reads)
        self._counts = RowCounts(self._engines.writes, self._engines.reads)
        self._collectors = CollectorRecords(
            collector_id, self._engines.writes, self._engines.reads, writer
        )

    @property
    def reads(self) -> Engine:
        """The engine for reads: on SQLite one whose transactions do not take the write lock."""
        return self._engines.reads

    # --- lifecycle ----------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest migration (a no-op when it is current)."""
        self._engines.migrate()

    def close(self) -> None:
        self._engines.dispose()

    # --- the one way in -----------------------------------------------------------------

    def ingest(
        self, messages: Sequence[WireMessage], source: str = "mqtt", *, durable: bool = True
    ) -> IngestReport:
        """Store a batch of validated messages in one database transaction (`Intake`)."""
        return self._intake.ingest(messages, source, self.clock(), durable=durable)

    @property
    def sync_needed(self) -> bool:
        """True when a commit of `ingest(durable=False)` may not be on disk at its return."""
        return self.is_postgres

    def sync(self) -> None:
        """Return once every commit made before the call is on disk (`Engines.sync`)."""
        self._engines.sync()

    # --- overdue ------------------------------------------------------------------------

    def mark_overdue(self, now: datetime, limit: int = 500) -> list[OutcomeChange]:
        """Claim PENDING transactions past their deadline, mark them OVERDUE, return them."""
        return self._deadlines.mark_overdue(now, limit)

    def next_deadline(self) -> datetime | None:
        """The earliest deadline still open, to know how long the overdue scan may sleep."""
        return self._deadlines.next_deadline()

    # --- reading ------------------------------------------------------------------------

    def transaction(
        self, tid: str, rrn: str, kind: TxnKind = TxnKind.SALE
    ) -> StoredTransaction | None:
        """One stored transaction by its business key, with its outcome."""
        return self._queries.transaction(tid, rrn, kind)

    def settlement(self, settlement_id: str) -> StoredSettlement | None:
        """One stored settlement result by its id, with its verdict."""
        return self._queries.settlement(settlement_id)

    def outcome_history(self, tid: str, rrn: str) -> list[Outcome]:
        """The outcomes a transaction went through, oldest first."""
        return self._queries.outcome_history(tid, rrn)

    def counts(self) -> dict[str, int]:
        """Rows per table, and transactions per outcome (`outcome.<OUTCOME>`), from the
        counters the database keeps (`collector.store.counts`)."""
        return self._counts.read()

    def fold_counts(self) -> int:
        """Fold ended connections' counter shards (PostgreSQL); the rows removed."""
        return self._counts.fold()

    # --- collectors ---------------------------------------------------------------------

    def record_collector(
        self, started_at: datetime, subscriptions: Sequence[str], counters: Mapping[str, object]
    ) -> None:
        """Say this collector is alive, with what it subscribes to and its counters."""
        self._collectors.record(started_at, subscriptions, counters)

    def collectors(self) -> list[CollectorRecord]:
        """Every collector's record, by collector id."""
        return self._collectors.read()
