"""The row counts /metrics and `collector status` read are kept by the database (migration
0008) and always equal what `count(*)` would say: through ingest, outcome changes,
deletes, a migration of a database that already holds rows, and on PostgreSQL several
connections at once and the fold of their shards."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import date, datetime, timedelta
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, delete, func, select, text
from test_collector_store import (
    CONFIG,
    NOW,
    SHANGHAI,
    TID,
    open_store,
    result,
    sale,
    status,
)

from collector.schema import (
    batches,
    deadletters,
    outcome_log,
    presence,
    row_counts,
    settlements,
    status_events,
    transactions,
)
from collector.store import MIGRATIONS, Store
from collector.terms import SettlementTerms
from posmon.wire.models import SettlementStatus

COUNTED = (transactions, settlements, status_events, batches, deadletters, outcome_log, presence)


def scanned(store: Store) -> dict[str, int]:
    """What count(*) says, in the shape of `Store.counts()`."""
    with store.engine.connect() as conn:
        found = {
            table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in COUNTED
        }
        outcomes = conn.execute(
            select(transactions.c.outcome, func.count()).group_by(transactions.c.outcome)
        )
        found.update({f"outcome.{outcome}": int(n) for outcome, n in outcomes})
    return found


def kept(store: Store) -> dict[str, int]:
    """`Store.counts()` without the outcomes that have dropped back to 0."""
    return {name: n for name, n in store.counts().items() if n or not name.startswith("outcome.")}


def test_counts_follow_ingest_outcome_changes_and_deletes(database_url: str) -> None:
    store = open_store(database_url)
    try:
        assert kept(store) == scanned(store)
        sales = [sale(f"4025110001{n:02d}") for n in range(12)]
        store.ingest([*sales, status(), status(link_up=False)])
        assert kept(store) == scanned(store)
        assert store.counts()["outcome.PENDING"] == 12
        # Outcome changes: credited, failed, and one credit that comes back.
        store.ingest(
            [
                result(sales[0].rrn, "S0"),
                result(sales[1].rrn, "S1", status=SettlementStatus.FAILED, net=0),
                result(sales[2].rrn, "S2"),
            ]
        )
        assert kept(store) == scanned(store)
        assert store.counts()["outcome.SETTLED"] == 2
        # The deadline passes for the rest.
        store.mark_overdue(NOW + timedelta(days=10))
        assert kept(store) == scanned(store)
        assert store.counts()["outcome.OVERDUE"] == 9
        # Rows removed (as retention will): the counts go down with them.
        with store.engine.begin() as conn:
            conn.execute(delete(outcome_log))
            conn.execute(delete(settlements).where(settlements.c.settlement_id == "S2"))
            conn.execute(delete(transactions).where(transactions.c.rrn == sales[11].rrn))
        assert kept(store) == scanned(store)
        assert store.counts()["outcome.OVERDUE"] == 8
    finally:
        store.close()


def test_a_migration_counts_the_rows_already_there(database_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url)
    command.upgrade(config, "0007")
    engine = create_engine(database_url)
    try:
        # Rows written by a collector of before the counters, straight into its tables.
        store = Store(database_url, SettlementTerms(CONFIG), collector_id="old")
        store.ingest([sale(f"4025110002{n:02d}") for n in range(5)] + [status()])
        store.ingest([result("402511000200", "S-200")])
        store.close()
        command.upgrade(config, "head")
        store = open_store(database_url)
        try:
            assert kept(store) == scanned(store)
            assert (store.counts()["transactions"], store.counts()["outcome.SETTLED"]) == (5, 1)
            command.downgrade(config, "0007")
            with engine.connect() as conn:
                assert "row_counts" not in _tables(conn)
        finally:
            store.close()
    finally:
        engine.dispose()


def _tables(conn: Any) -> set[str]:
    from sqlalchemy import inspect

    return set(inspect(conn).get_table_names())


def test_connections_count_apart_and_the_fold_keeps_every_sum(postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        errors: list[BaseException] = []

        def writer(part: int) -> None:
            # Each thread its own Store, so its own connections (and backend pids).
            own = open_store(postgres_url)
            try:
                for n in range(10):
                    rrn = f"40251{part:03d}{n:04d}"
                    own.ingest([sale(rrn, stan=f"{part:02d}{n:04d}"), status()])
                    if n % 2:
                        own.ingest([result(rrn, f"S-{part}-{n}", txn_date=date(2026, 11, 24))])
            except BaseException as exc:
                errors.append(exc)
            finally:
                own.close()

        threads = [threading.Thread(target=writer, args=(part,)) for part in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert kept(store) == scanned(store)
        with store.engine.connect() as conn:
            shards = Counter(
                conn.execute(select(row_counts.c.shard).where(row_counts.c.shard != 0)).scalars()
            )
        assert len(shards) >= 4, "each writer's connection keeps its own shard"
        # The writers' connections have closed: their shards fold into shard 0.
        removed = store.fold_counts()
        assert removed > 0
        assert kept(store) == scanned(store)
        with store.engine.connect() as conn:
            live = set(conn.execute(text("SELECT pid FROM pg_stat_activity")).scalars())
            left = set(
                conn.execute(select(row_counts.c.shard).where(row_counts.c.shard != 0)).scalars()
            )
        assert left <= live
        assert store.fold_counts() == 0 or kept(store) == scanned(store)
    finally:
        store.close()


def test_a_bulk_insert_is_counted_whole(postgres_url: str) -> None:
    # PostgreSQL's triggers run per statement, with the statement's rows.
    store = open_store(postgres_url)
    try:
        stamp = datetime(2026, 11, 24, 12, 0, tzinfo=SHANGHAI)
        rows = [
            {
                "event_id": f"00000000-0000-0000-0000-{n:012d}",
                "agent_id": "box-1",
                "tid": TID,
                "link_up": True,
                "network": "ETH",
                "saf_pending": 0,
                "serial_ok": True,
                "heartbeat_only": False,
                "observed_at": stamp + timedelta(seconds=n),
            }
            for n in range(5000)
        ]
        with store.engine.begin() as conn:
            conn.execute(status_events.insert(), rows)
        assert store.counts()["status_events"] == 5000 == scanned(store)["status_events"]
    finally:
        store.close()
