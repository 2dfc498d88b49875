"""The store's engines: connections, SQLite's pragmas, migrations, and waiting for the disk.

One database, three engines (`Engines`): the writer for stored facts, the reader (on SQLite
transactions that never take the write lock; on PostgreSQL autocommit statements), and
the writer for what is derived from the facts, which on PostgreSQL does not wait for the
WAL's flush at commit (see `Engines.derived`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text

MIGRATIONS = Path(__file__).parent.parent / "migrations"


@dataclass(frozen=True, slots=True)
class Engines:
    """The store's three engines on one database URL."""

    writes: Engine
    reads: Engine
    # What the collector derives from stored facts (alerts, cases, notification marks,
    # the alert engine's cursors), and the MQTT ingest's batches until their `sync()`:
    # on PostgreSQL committed without waiting for the WAL to reach the disk, so an
    # alert does not wait for the disk's flush (docs/performance.md). Nothing
    # acknowledged to anyone rides on these commits, and the WAL is written in order:
    # a crash loses at most the last fraction of a second of them, never one without
    # the cursors saved after it, and the engine derives those alerts again from the
    # durable facts (the broker sends the unacknowledged messages again).
    # SQLite in WAL mode with synchronous=NORMAL does not flush at each commit anyway.
    derived: Engine
    is_postgres: bool

    @classmethod
    def open(cls, url: str) -> Engines:
        writes = make_engine(url)
        is_postgres = writes.dialect.name == "postgresql"
        # Reads (the alert engine's tails, the overdue watch's, status, the API's) on their
        # own engine. SQLite: transactions that never take the write lock. PostgreSQL:
        # autocommit, each read its own statement-level snapshot as under READ COMMITTED,
        # without the BEGIN and ROLLBACK round trips a transaction around it would cost.
        reads = make_engine(url, writer=False)
        derived = make_engine(url, durable=False) if is_postgres else writes
        return cls(writes, reads, derived, is_postgres)

    def migrate(self) -> None:
        """Bring the schema to the newest migration (a no-op when it is current)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.writes.begin() as connection:
            if self.is_postgres:
                # Two collectors starting together must not both create the tables.
                connection.execute(text("SELECT pg_advisory_xact_lock(727001)"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

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
            with self.writes.begin() as conn:
                conn.exec_driver_sql(
                    "SELECT CASE WHEN current_setting('synchronous_commit') = 'off'"
                    " THEN set_config('synchronous_commit', 'on', true) END,"
                    " pg_logical_emit_message(true, 'posmon-sync', '')"
                )

    def dispose(self) -> None:
        self.writes.dispose()
        self.reads.dispose()
        self.derived.dispose()


def make_engine(url: str, *, writer: bool = True, durable: bool = True) -> Engine:
    """An engine on `url`: a writer (durable or not) or a reader."""
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
    # failure, and the caller's next turn reads again; a ping would be a round trip on
    # every checkout of the alert engine's hot path (docs/performance.md).
    # tests/test_collector_ingest.py kills the connections mid-stream to show it.
    if writer and not durable:
        options = {"options": "-c synchronous_commit=off"}
        return create_engine(url, pool_pre_ping=True, connect_args=options)
    if writer:
        return create_engine(url, pool_pre_ping=True)
    return create_engine(url, isolation_level="AUTOCOMMIT")
