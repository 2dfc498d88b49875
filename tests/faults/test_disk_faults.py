"""A full disk under the collector's SQLite database (issue #17; the agent's outbox on a
full disk is in tests/test_agent_outbox.py). A real tmpfs of a few MiB holds the database
and a file that takes up most of the rest; the collector must keep running without
acknowledging what it could not store, then store it all once there is room.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Broker, wait_until
from faultkit import FaultFigures
from test_collector_ingest import (
    COLLECTOR_TOML,
    collector_process,
    many_sales,
    rig_on,
    stored_txns,
)

pytestmark = pytest.mark.faults

TOTAL = 6_000
DISK_MIB = 24
ROOM_LEFT_KIB = 512  # free space left beside the database when traffic starts


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root: this fault is not run here")
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(folder)], check=True
    )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def free_kib(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize // 1024


def test_a_full_disk_under_sqlite_stops_the_acks_and_the_collector_catches_up(
    own_broker: Broker, prefix: str, small_disk: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{small_disk}/posmon.db"
    config = tmp_path / "collector.toml"
    config.write_text(
        COLLECTOR_TOML.format(
            collector_id="full", database_url=url, port=own_broker.port, prefix=prefix
        )
    )
    log = tmp_path / "collector.log"
    process = collector_process(config, log)
    try:
        with rig_on(url, own_broker, prefix) as rig:
            rig.wait_subscribed()
            probes = rig.publisher.acked
            ballast = small_disk / "ballast"
            ballast.write_bytes(b"\0" * (free_kib(small_disk) - ROOM_LEFT_KIB) * 1024)
            rig.publisher.all(many_sales(TOTAL))
            wait_until(lambda: b"full" in log.read_bytes(), 60, "the collector to hit the disk")
            full_at = time.monotonic()
            time.sleep(3)
            stuck_at = stored_txns(rig.reader)
            assert process.poll() is None, "the collector keeps running"
            ballast.unlink()
            freed_at = time.monotonic()
            wait_until(lambda: stored_txns(rig.reader) == TOTAL, 120, f"{TOTAL} stored")
            recover_s = time.monotonic() - freed_at
            with rig.reader.engine.connect() as conn:
                rows, distinct = conn.exec_driver_sql(
                    "SELECT count(*), count(DISTINCT tid || rrn) FROM transactions"
                ).one()
            acked = rig.publisher.acked - probes
    finally:
        process.terminate()
        process.wait(timeout=30)
    figures = FaultFigures(
        fault=f"collector's SQLite on a full {DISK_MIB} MiB disk",
        sent=TOTAL,
        acknowledged=acked,
        stored=distinct,
        duplicates=rows - distinct,
        lost=max(0, acked - distinct),
        false_alerts=0,
        detect_s=None,
        recover_s=round(recover_s, 2),
        notes=f"{stuck_at} stored when the disk filled; it stayed up and caught up "
        f"{freed_at - full_at:.0f} s later, once there was room",
    )
    figures.write()
    assert figures.lost == 0 and figures.duplicates == 0, figures
    assert 0 < stuck_at < TOTAL, "the disk filled mid-stream"
