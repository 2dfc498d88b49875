"""Every query the collector makes on its hot paths is answered from an index.

The statements are captured while the store does real work (ingest of transactions,
settlements, voids, orphans; the overdue scan), then each is explained. A full scan of a
large table would make a lookup linear in the number of transactions stored; the plans
must show index searches only, so each lookup stays logarithmic at ten million rows.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from collector.config import CollectorConfig
from collector.store import Store
from collector.terms import SettlementTerms
from posmon.wire.models import SettlementEvent, TxnEvent

CST = timezone(timedelta(hours=8))
NOW = datetime(2026, 11, 25, 10, 30, tzinfo=CST)
BIG_TABLES = ("transactions", "settlements", "outcome_log", "status_events", "batches")


def txn(rrn: str, kind: str = "SALE", **extra: Any) -> TxnEvent:
    return TxnEvent(
        event_id=uuid.uuid4(), agent_id="a", tid="10000001", mid="898100012340001",
        kind=kind, amount=12800, currency="CNY", pan_masked="622202*********0123", rc="00",
        approved=True, rrn=rrn, stan=rrn[-6:], batch="000042", terminal_time=NOW,
        observed_at=NOW, **extra,
    )  # fmt: skip


def settlement(rrn: str, sid: str) -> SettlementEvent:
    return SettlementEvent(
        settlement_id=sid, mid="898100012340001", tid="10000001", rrn=rrn,
        txn_date=NOW.date(), amount=12800, fee=0, net_amount=12800, currency="CNY",
        status="CREDITED", settled_at=NOW + timedelta(days=1), kind="ORIGINAL",
        stan=rrn[-6:], batch="000042",
    )  # fmt: skip


def captured_statements(store: Store) -> list[tuple[str, Any]]:
    statements: list[tuple[str, Any]] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def capture(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            statements.append((statement, params))

    store.ingest([settlement("000000000001", "S-orphan")])  # an orphan first
    store.ingest([txn("000000000001"), txn("000000000002"), txn("000000000003")])
    store.ingest([settlement("000000000002", "S-2"), settlement("999999999999", "S-x")])
    store.ingest([txn("000000000004", kind="VOID", orig_rrn="000000000003")])
    store.ingest([txn("000000000009", kind="REVERSAL", orig_stan="000005")])
    store.ingest([txn("000000000005")])  # reversed before it arrived
    store.mark_overdue(NOW + timedelta(days=10))
    store.next_deadline()
    return statements


def test_sqlite_plans_use_indexes_only(tmp_path: Path) -> None:
    store = Store(
        f"sqlite:///{tmp_path}/posmon.db", SettlementTerms(CollectorConfig()), clock=lambda: NOW
    )
    store.migrate()
    statements = captured_statements(store)
    assert len(statements) >= 10
    with store.engine.connect() as conn:
        for statement, params in statements:
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params).all()
            details = " | ".join(str(row[-1]) for row in plan)
            for table in BIG_TABLES:
                assert f"SCAN {table}" not in details, f"full scan: {statement}\n{details}"
    store.close()


def test_postgresql_has_an_index_for_every_hot_query(postgres_url: str) -> None:
    store = Store(postgres_url, SettlementTerms(CollectorConfig()), clock=lambda: NOW)
    store.migrate()
    statements = captured_statements(store)
    with store.engine.connect() as conn:
        # Tiny tables make sequential scans cheapest; forbid them to see whether an index
        # can answer the query at all.
        conn.execute(text("SET enable_seqscan = off"))
        for statement, params in statements:
            if "pg_advisory" in statement:
                continue
            plan = conn.exec_driver_sql(f"EXPLAIN {statement}", params).all()
            details = " | ".join(str(row[0]) for row in plan)
            for table in BIG_TABLES:
                assert f"Seq Scan on {table}" not in details, f"{statement}\n{details}"
    store.close()
