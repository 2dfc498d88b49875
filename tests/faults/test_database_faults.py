"""A slow database under the collector (issue #17): PostgreSQL holding a lock on the
transactions table while traffic keeps coming. The collector must apply backpressure
(acknowledge nothing it has not stored, so the broker keeps the rest) instead of
buffering without bound, keep its memory flat, and store everything once the lock goes.

The lock (EXCLUSIVE: reads go on, writes wait) lasts `POSMON_FAULT_LOCK_S` seconds (15 by
default, to keep CI short; the issue's 30 with `POSMON_FAULT_LOCK_S=30`). The collector
can take in at most the broker's in-flight window (`max_inflight_messages`, 5,000 in
posmon's configuration) before the broker stops sending; its RSS, sampled every 0.2 s,
shows it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import Broker, fresh_postgres_database, wait_until
from faultkit import FaultFigures, PrivatePostgres
from sqlalchemy.engine import make_url
from test_collector_ingest import (
    COLLECTOR_TOML,
    collector_process,
    many_sales,
    rig_on,
    stored_txns,
)

pytestmark = pytest.mark.faults

LOCK_S = float(os.environ.get("POSMON_FAULT_LOCK_S", "15"))
BEFORE, DURING = 5_000, 20_000
RSS_GROWTH_LIMIT_MIB = 32


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture
def postgres() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


def test_a_locked_database_holds_the_acks_and_memory_stays_flat(
    own_broker: Broker, prefix: str, postgres: str, tmp_path: Path
) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(
        COLLECTOR_TOML.format(
            collector_id="locked", database_url=postgres, port=own_broker.port, prefix=prefix
        )
    )
    log = tmp_path / "collector.log"
    process = collector_process(config, log)
    raw = make_url(postgres).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with rig_on(postgres, own_broker, prefix) as rig:
            rig.wait_subscribed()
            probes = rig.publisher.acked
            sales = many_sales(BEFORE + DURING)
            rig.publisher.all(sales[:BEFORE])
            wait_until(lambda: stored_txns(rig.reader) == BEFORE, 60, f"{BEFORE} stored")
            rss_before = rss_mib(process.pid)
            peak = [rss_before]
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.wait(0.2):
                    peak.append(rss_mib(process.pid))

            sampler = threading.Thread(target=sample)
            sampler.start()
            with psycopg.connect(raw) as lock:
                lock.execute("LOCK TABLE transactions IN EXCLUSIVE MODE")
                locked_at = time.monotonic()
                rig.publisher.all(sales[BEFORE:])  # the broker acknowledges every one
                time.sleep(max(0.0, LOCK_S - (time.monotonic() - locked_at)))
                with psycopg.connect(raw) as peek:  # nothing more can have been committed
                    during = peek.execute("SELECT count(*) FROM transactions").fetchone()
                peak_locked = max(peak)
                lock.rollback()
            released_at = time.monotonic()
            wait_until(lambda: stored_txns(rig.reader) == BEFORE + DURING, 120, "everything stored")
            recover_s = time.monotonic() - released_at
            sampling.set()
            sampler.join()
            rss_after = rss_mib(process.pid)
            with psycopg.connect(raw) as check:
                rows, distinct = check.execute(
                    "SELECT count(*), count(DISTINCT (tid, rrn)) FROM transactions"
                ).fetchone()  # type: ignore[misc]
            acked = rig.publisher.acked - probes
    finally:
        process.terminate()
        process.wait(timeout=30)
    stored_during = int(during[0]) if during else -1  # type: ignore[index]
    figures = FaultFigures(
        fault=f"PostgreSQL table locked {LOCK_S:g} s under {DURING:,} messages",
        sent=BEFORE + DURING,
        acknowledged=acked,
        stored=distinct,
        duplicates=rows - distinct,
        lost=max(0, acked - distinct),
        false_alerts=0,
        detect_s=None,
        recover_s=round(recover_s, 2),
        notes=f"stored while locked: {stored_during - BEFORE}; collector RSS {rss_before:.0f} MiB "
        f"before, {peak_locked:.0f} MiB peak while locked, {max(peak):.0f} MiB peak "
        f"catching up, {rss_after:.0f} MiB after",
    )
    figures.write()
    assert stored_during == BEFORE, "nothing is stored (or acknowledged) while locked"
    assert figures.lost == 0 and figures.duplicates == 0, figures
    assert peak_locked - rss_before < RSS_GROWTH_LIMIT_MIB, figures.notes


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if os.geteuid() != 0:
        pytest.skip("a private PostgreSQL runs as the postgres user: needs root")
    server = PrivatePostgres()
    server.start()
    yield server
    server.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgresql_restarted_or_crashed_under_traffic_loses_nothing(
    own_broker: Broker, prefix: str, private_postgres: PrivatePostgres, tmp_path: Path,
    mode: str,
) -> None:  # fmt: skip
    """`fast`: a clean restart (an upgrade, a failover); `immediate`: the server killed,
    recovering from its WAL at the next start. What the collector acknowledged was
    committed, so it survives; what it had not committed comes again from the broker."""
    url = private_postgres.url
    config = tmp_path / "collector.toml"
    config.write_text(
        COLLECTOR_TOML.format(
            collector_id="pg-restart", database_url=url, port=own_broker.port, prefix=prefix
        )
    )
    log = tmp_path / "collector.log"
    process = collector_process(config, log)
    total = 12_000
    try:
        with rig_on(url, own_broker, prefix) as rig:
            rig.wait_subscribed()
            probes = rig.publisher.acked
            sales = many_sales(total)
            publishing = threading.Thread(
                target=rig.publisher.all,
                args=(sales,),
                kwargs={"pause_every": 100, "pause_s": 0.1},  # 12 s or more: it outlasts the stop
            )
            publishing.start()
            wait_until(lambda: stored_txns(rig.reader) >= 2_000, 60, "2,000 stored")
            private_postgres.stop(mode)
            down_at = time.monotonic()
            time.sleep(3)
            private_postgres.start()
            up_at = time.monotonic()
            for engine in {rig.reader.engine, rig.reader.reads}:
                engine.dispose()  # the test's own connections went with the server
            at_start = stored_txns(rig.reader)
            # Recovered: the collector stores again (the first commit after the restart).
            wait_until(
                lambda: stored_txns(rig.reader) > at_start or at_start == total,
                60,
                "storing again",
            )
            recover_s = time.monotonic() - up_at
            publishing.join(timeout=120)
            wait_until(lambda: stored_txns(rig.reader) == total, 120, f"{total} stored")
            with rig.reader.engine.connect() as conn:
                rows, distinct = conn.exec_driver_sql(
                    "SELECT count(*), count(DISTINCT (tid, rrn)) FROM transactions"
                ).one()
            acked = rig.publisher.acked - probes
        alive = process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=30)
    figures = FaultFigures(
        fault=f"PostgreSQL {'restarted' if mode == 'fast' else 'killed (immediate)'} under traffic",
        sent=total,
        acknowledged=acked,
        stored=distinct,
        duplicates=rows - distinct,
        lost=max(0, acked - distinct),
        false_alerts=0,
        detect_s=None,
        recover_s=round(recover_s, 2),
        notes=f"down {up_at - down_at:.1f} s; the collector stayed up: {alive}",
    )
    figures.write()
    assert alive, "the collector keeps running while its database is away"
    assert figures.lost == 0 and figures.duplicates == 0, figures
