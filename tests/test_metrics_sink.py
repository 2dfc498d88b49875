"""The InfluxDB sink against a real influxd: written, read back, buffered while it is down."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Influxd, wait_until

from collector.config import MetricsSection
from collector.influx import InfluxSink
from collector.samples import Sample

T0 = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def settings(url: str, database: str, **overrides: object) -> MetricsSection:
    values: dict[str, object] = {
        "url": url,
        "database": database,
        "flush_interval_s": 0.05,
        "retry_max_s": 0.5,
    }
    values.update(overrides)
    return MetricsSection.model_validate(values)


@pytest.fixture
def own_influxd(tmp_path: Path) -> Iterator[Influxd]:
    """An influxd for one test, which it may stop and start."""
    instance = Influxd(tmp_path / "influxd")
    instance.start()
    yield instance
    instance.stop()


def numbered(count: int, start: int = 0) -> list[Sample]:
    return [
        Sample("transactions", {"tid": "10000001"}, {"n": n, "count": 1}, T0 + timedelta(seconds=n))
        for n in range(start, start + count)
    ]


def test_points_written_are_read_back(influxd: Influxd, influx_db: str) -> None:
    # The database does not exist yet: the sink creates it (InfluxDB 1.x) on the first 404.
    sink = InfluxSink(settings(influxd.url, influx_db))
    sink.start()
    awkward = 'a "quoted", spaced=summary\\ with a backslash'
    sink.submit(
        Sample(
            "alerts",
            {"type": "SETTLEMENT_FAILED", "cause": "ACCOUNT_INFO", "state": "firing"},
            {"count": 1, "amount_at_risk": 12_800, "summary": awkward, "ok": True},
            T0,
        )
    )
    sink.submit(Sample("terminal_status", {"tid": "TID 1,=x"}, {"link_up": 0, "rssi_dbm": -71}, T0))
    sink.close(timeout=30)

    assert sink.counters() == {
        "written": 2,
        "dropped": 0,
        "rejected": 0,
        "failures": 0,
        "buffered": 0,
    }
    [alerts] = influxd.query(influx_db, 'SELECT * FROM "alerts"')
    row = dict(zip(alerts["columns"], alerts["values"][0], strict=True))
    assert row == {
        "time": int(T0.timestamp()),
        "amount_at_risk": 12_800,
        "cause": "ACCOUNT_INFO",
        "count": 1,
        "ok": True,
        "state": "firing",
        "summary": awkward,
        "type": "SETTLEMENT_FAILED",
    }
    [status] = influxd.query(
        influx_db, 'SELECT "link_up", "rssi_dbm", "tid" FROM "terminal_status"'
    )
    assert status["values"] == [[int(T0.timestamp()), 0, -71, "TID 1,=x"]]


def test_influxdb_down_buffers_drops_oldest_and_delivers_when_back(
    own_influxd: Influxd, influx_db: str
) -> None:
    own_influxd.create_database(influx_db)
    own_influxd.stop()
    sink = InfluxSink(settings(own_influxd.url, influx_db, buffer_limit=100, batch_size=10))
    sink.start()
    for sample in numbered(300):
        sink.submit(sample)  # never blocks, InfluxDB or not
    wait_until(lambda: sink.failures >= 2, 30, "failed writes while influxd is down")
    held = sink.counters()
    # What is held is the buffer (full) plus at most one batch in hand; the rest, the
    # oldest, was dropped and counted.
    assert held["written"] == 0
    assert held["dropped"] + held["buffered"] == 300
    assert 100 <= held["buffered"] <= 110

    own_influxd.start()
    wait_until(lambda: sink.counters()["buffered"] == 0, 60, "the buffer written after restart")
    sink.close(timeout=30)
    counters = sink.counters()
    assert counters["written"] == held["buffered"]
    assert counters["dropped"] == held["dropped"]
    [series] = own_influxd.query(influx_db, 'SELECT count("n"), max("n") FROM "transactions"')
    assert series["values"][0][1:] == [held["buffered"], 299]


def test_a_point_influxdb_refuses_is_counted_not_retried(influxd: Influxd, influx_db: str) -> None:
    influxd.create_database(influx_db)
    sink = InfluxSink(settings(influxd.url, influx_db))
    sink.start()
    sink.submit(Sample("transactions", {"tid": "1"}, {"amount": 100}, T0))
    wait_until(lambda: sink.written == 1, 30, "the first point")
    # The same field as a string: InfluxDB refuses it (field type conflict, 400).
    sink.submit(Sample("transactions", {"tid": "1"}, {"amount": "100"}, T0))
    sink.submit(Sample("transactions", {"tid": "2"}, {"amount": 200}, T0))
    sink.close(timeout=30)
    counters = sink.counters()
    assert counters["failures"] == 0
    assert counters["written"] + counters["rejected"] == 3
    assert counters["rejected"] >= 1
