"""Retention and its archive (collector/store/retention.py, `posmon collector archive |
retention | restore`): old rows go, in batches; what an open case or an open alert needs
stays; an archive put back gives the same tables; ingest goes on while retention runs."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from test_collector_store import TID, open_store, result, sale, status
from test_row_counts import kept, scanned
from typer.testing import CliRunner

from collector.cli.collector import app
from collector.config import RetentionSection
from collector.retention import RetentionWorker
from collector.schema import (
    alert_history,
    alerts,
    batches,
    case_events,
    cases,
    deadletters,
    outcome_log,
    settlements,
    status_events,
    transactions,
)
from collector.store import Store
from collector.store.retention import Cutoffs, Retention
from posmon.wire.models import StatusEvent

OLD = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)  # over a year before the tests' NOW
CUTOFF = datetime(2025, 6, 1, tzinfo=UTC)
TABLES = (
    transactions,
    settlements,
    outcome_log,
    status_events,
    batches,
    deadletters,
    alerts,
    alert_history,
    cases,
    case_events,
)


def old_status(n: int, at: datetime = OLD) -> StatusEvent:
    return status().model_copy(
        update={"event_id": uuid.uuid4(), "observed_at": at + timedelta(seconds=n)}
    )


def alert_row(alert_id: str, rrn: str, status: str, resolved: datetime | None) -> dict[str, Any]:
    return {
        "alert_id": alert_id,
        "fingerprint": f"SETTLEMENT_FAILED:{TID}:{rrn}",
        "open_fingerprint": None if status == "resolved" else f"SETTLEMENT_FAILED:{TID}:{rrn}",
        "type": "SETTLEMENT_FAILED",
        "severity": "critical",
        "status": status,
        "cause": "ACCOUNT_INFO",
        "summary": f"settlement failed for {rrn}",
        "started_at": OLD,
        "updated_at": resolved or OLD,
        "resolved_at": resolved,
        "tid": TID,
        "rrn": rrn,
        "collector_id": "test",
    }


def case_row(case_id: str, store: Store, rrn: str, state: str) -> dict[str, Any]:
    txn = store.transaction(TID, rrn)
    assert txn is not None
    return {
        "case_id": case_id,
        "transaction_id": txn.id,
        "tid": TID,
        "mid": txn.mid,
        "rrn": rrn,
        "amount": 9940,
        "currency": "CNY",
        "cause": "ACCOUNT_INFO",
        "state": state,
        "state_since": OLD,
        "opened_at": OLD,
        "updated_at": OLD,
    }


def history(store: Store) -> None:
    """A year-old history: sales (settled, failed, one with an open case, one with an open
    alert), old statuses, a resolved alert and a closed case on old sales; and new rows."""
    old_sales = [sale(f"4025010000{n:02d}", at=OLD + timedelta(minutes=n)) for n in range(8)]
    store.ingest([*old_sales, *(old_status(n) for n in range(30))])
    store.ingest(
        [
            result(s.rrn, f"S-OLD-{n}", txn_date=s.terminal_time.date())
            for n, s in enumerate(old_sales[:4])
        ]
    )
    store.ingest([sale("402512000001"), status()])  # this year's
    with store.engine.begin() as conn:
        conn.execute(
            insert(alerts),
            [
                alert_row("A-resolved", old_sales[0].rrn, "resolved", OLD + timedelta(days=1)),
                alert_row("A-open", old_sales[5].rrn, "firing", None),
            ],
        )
        conn.execute(
            insert(alert_history),
            [{"alert_id": "A-resolved", "at": OLD, "event": "fired", "actor": "test"}],
        )
        conn.execute(
            insert(cases),
            [
                case_row("C-closed", store, old_sales[1].rrn, "CLOSED"),
                case_row("C-open", store, old_sales[6].rrn, "SUBMITTED"),
            ],
        )
        conn.execute(
            insert(case_events),
            [
                {"case_id": "C-closed", "at": OLD, "actor": "ops", "to_state": "CLOSED"},
                {"case_id": "C-open", "at": OLD, "actor": "ops", "to_state": "SUBMITTED"},
            ],
        )


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    found: dict[str, list[tuple[Any, ...]]] = {}
    with store.engine.connect() as conn:
        for table in TABLES:
            rows = conn.execute(select(table).order_by(*table.primary_key))
            found[table.name] = [tuple(row) for row in rows]
    return found


def rrns(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(select(transactions.c.rrn)).scalars())


def test_old_rows_go_and_what_open_work_needs_stays(database_url: str) -> None:
    store = open_store(database_url)
    try:
        history(store)
        report = Retention(store.engine, batch_rows=7).run(Cutoffs.before(CUTOFF))
        # Kept: this year's sale, the sale an open case points at, the one an open alert
        # is about; gone: the other old sales, with their settlements and outcome log.
        assert rrns(store) == {"402512000001", "402501000006", "402501000005"}
        with store.engine.connect() as conn:
            left = {
                table.name: conn.execute(select(func.count()).select_from(table)).scalar()
                for table in TABLES
            }
            alert_ids = set(conn.execute(select(alerts.c.alert_id)).scalars())
            case_ids = set(conn.execute(select(cases.c.case_id)).scalars())
            open_events = conn.execute(select(case_events.c.case_id)).scalars().all()
        assert alert_ids == {"A-open"} and case_ids == {"C-open"} and open_events == ["C-open"]
        assert (left["status_events"], left["settlements"], left["alert_history"]) == (1, 0, 0)
        assert report.rows["status_events"] == 30 and report.rows["transactions"] == 6
        assert report.batches >= 30 // 7  # in batches of 7
        assert kept(store) == scanned(store)  # the row counts followed the deletes
        # Run again: nothing more goes.
        assert Retention(store.engine).run(Cutoffs.before(CUTOFF)).rows == {}
    finally:
        store.close()


def test_archive_then_retention_then_restore_gives_the_same_tables(
    database_url: str, tmp_path: Path
) -> None:
    store = open_store(database_url)
    config = tmp_path / "collector.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n')
    try:
        history(store)
        before = snapshot(store)
        counts = store.counts()
        cli = CliRunner()
        args = ["archive", "--out", str(tmp_path / "dry"), "--before", "2025-06-01"]
        shown = cli.invoke(app, [*args, "--config", str(config)])
        assert shown.exit_code == 0, shown.output
        assert "transactions" in shown.output and snapshot(store) == before  # nothing removed
        removed = cli.invoke(
            app,
            [
                "retention",
                "--before",
                "2025-06-01",
                "--archive",
                str(tmp_path / "run"),
                "--config",
                str(config),
            ],
        )
        assert removed.exit_code == 0, removed.output
        assert snapshot(store) != before
        # The dry archive and the run's archive hold the same rows.
        for name in ("transactions", "status_events", "cases", "alerts"):
            assert (tmp_path / "dry" / f"{name}.jsonl.gz").exists()
        back = cli.invoke(app, ["restore", str(tmp_path / "run"), "--config", str(config)])
        assert back.exit_code == 0, back.output
        assert snapshot(store) == before
        assert kept(store) == scanned(store) and store.counts() == counts
        # Restored twice: refused, nothing changed.
        again = cli.invoke(app, ["restore", str(tmp_path / "run"), "--config", str(config)])
        assert again.exit_code == 1 and "already stored" in again.output
        assert snapshot(store) == before
    finally:
        store.close()


def test_a_bad_cutoff_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/posmon.db"\n')
    shown = CliRunner().invoke(app, ["retention", "--before", "last week", "--config", str(config)])
    assert shown.exit_code == 2 and "is not a date" in shown.output


def test_ingest_goes_on_while_retention_runs(database_url: str) -> None:
    """Retention removes 20,000 old statuses in batches while another thread stores new
    sales: no ingest fails, and the longest ingest waits less than the stated bound."""
    store = open_store(database_url)
    writer = open_store(database_url)
    try:
        for start in range(0, 20_000, 2000):
            store.ingest([old_status(n) for n in range(start, start + 2000)])
        stop = threading.Event()
        waits: list[float] = []
        errors: list[BaseException] = []

        def ingest() -> None:
            n = 0
            while not stop.is_set():
                began = time.monotonic()
                try:
                    writer.ingest([sale(f"4025120{n:05d}", stan=f"{n:06d}")])
                except BaseException as exc:
                    errors.append(exc)
                waits.append(time.monotonic() - began)
                n += 1

        thread = threading.Thread(target=ingest)
        thread.start()
        try:
            report = Retention(store.engine, batch_rows=2000, pause_s=0.01).run(
                Cutoffs.before(CUTOFF)
            )
        finally:
            stop.set()
            thread.join()
        assert errors == []
        assert report.rows["status_events"] == 20_000
        print(  # the figure for docs/retention.md
            f"retention {report.seconds:.2f} s in {report.batches} batches, longest batch "
            f"{report.longest_batch_s * 1000:.0f} ms; {len(waits)} ingests meanwhile, "
            f"longest {max(waits) * 1000:.0f} ms"
        )
        assert max(waits) < 5.0  # the stated bound (docs/retention.md)
    finally:
        writer.close()
        store.close()


def test_collectors_on_one_postgresql_take_turns(postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        store.ingest([old_status(n) for n in range(10)])
        settings = RetentionSection(statuses_days=30)
        first = RetentionWorker(store.engine, settings, lambda: datetime.now(UTC))
        other = open_store(postgres_url)
        try:
            second = RetentionWorker(other.engine, settings, lambda: datetime.now(UTC))
            with store.engine.connect() as holder:
                holder.execute(select(func.pg_advisory_lock(0x706F736D6F6E7274)))
                assert second.run_once() is None  # the other collector's turn
                holder.execute(select(func.pg_advisory_unlock(0x706F736D6F6E7274)))
                holder.commit()
            report = first.run_once()
            assert report is not None and report.rows.get("status_events") == 10
        finally:
            other.close()
    finally:
        store.close()
