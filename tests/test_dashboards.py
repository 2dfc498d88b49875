"""The dashboards against real data: every panel's query runs on an influxd that a
simulated run filled through the collector's metrics sink.

A short scenario (tests/scenarios/metrics.toml) runs as a user runs it, with `--influx`;
then every query of the committed dashboard JSON (panels, annotations, the terminal
variable), with Grafana's variables substituted, runs against that database. Each panel
the scenario should fill must return data; each name a query uses must be one the
collector writes (collector.metrics.SCHEMA, and what the run actually wrote).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Influxd

from collector.config import MetricsSection
from collector.influx import InfluxSink
from collector.metrics import SCHEMA, CaseGauge, Recorder
from dashboards.build import DASHBOARDS, JSON_DIR

ROOT = Path(__file__).resolve().parent.parent
POSMON = Path(sys.executable).parent / "posmon"
SCENARIO = ROOT / "tests" / "scenarios" / "metrics.toml"
ORIGIN = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)  # the scenario's origin, 09:00 Shanghai
TID = "10000002"  # the terminal whose link goes down: it has alerts

# Panels the scenario cannot fill, and why. Anything else that comes back empty fails.
# (None: the scenario's failed credits open re-remittance cases, which nobody works, so
# their SLAs run out too.)
NOT_FILLED: dict[tuple[str, str], str] = {}
CASES_PANELS = {
    ("posmon-fleet", "Open cases"),
    *(
        ("posmon-cases", title)
        for title in (
            "Open cases",
            "Held past their SLA",
            "Owed in open cases",
            "Oldest open case",
            "Cases by state",
            "Cases by cause",
            "Oldest case by state",
            "SLA breaches by state",
        )
    ),
}


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    text: str


def queries() -> list[Query]:
    """Every InfluxQL text of the committed dashboards: panels, annotations, variables."""
    found = []
    for name in DASHBOARDS:
        board = json.loads((JSON_DIR / name).read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found.append(Query(board["uid"], panel["title"], target["query"]))
        for note in board["annotations"]["list"]:
            found.append(Query(board["uid"], f"annotation {note['name']}", note["query"]))
        for variable in board["templating"]["list"]:
            found.append(Query(board["uid"], f"variable {variable['name']}", variable["query"]))
    return found


def substituted(text: str, start: datetime, end: datetime) -> str:
    """What Grafana sends: the time range, an interval, the chosen terminal."""
    time_filter = (
        f"time >= '{start.isoformat().replace('+00:00', 'Z')}' "
        f"AND time <= '{end.isoformat().replace('+00:00', 'Z')}'"
    )
    return (
        text.replace("$timeFilter", time_filter).replace("$__interval", "1h").replace("$tid", TID)
    )


def names(text: str) -> tuple[set[str], set[str]]:
    """(measurements, other quoted names) of a query; aliases (AS "x") are left out."""
    measurements = set(re.findall(r'FROM "(\w+)"', text))
    aliases = set(re.findall(r'AS "(\w+)"', text))
    quoted = set(re.findall(r'"(\w+)"', text))
    return measurements, quoted - measurements - aliases


def has_data(series: list[dict[str, Any]]) -> bool:
    return any(value is not None for item in series for row in item["values"] for value in row[1:])


def test_every_query_names_only_what_the_collector_writes() -> None:
    for query in queries():
        measurements, used = names(query.text)
        assert measurements, f"{query}: no measurement"
        for measurement in measurements:
            assert measurement in SCHEMA, f"{query}: unknown measurement {measurement}"
        known = set().union(*(SCHEMA[m][0] | SCHEMA[m][1] for m in measurements))
        assert used <= known, f"{query.dashboard} / {query.panel}: unknown {used - known}"


@pytest.fixture(scope="module")
def filled(influxd: Influxd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The database a scenario run filled through `--influx`."""
    database = "dashboards_scenario"
    workdir = tmp_path_factory.mktemp("scenario")
    process = subprocess.run(
        [str(POSMON), "simulate", "scenario", str(SCENARIO), "--workdir", str(workdir),
         "--influx", influxd.url, "--influx-db", database],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    yield database


@pytest.mark.slow
def test_every_panel_returns_data_from_a_simulated_run(influxd: Influxd, filled: str) -> None:
    start, end = ORIGIN - timedelta(days=1), ORIGIN + timedelta(days=4)
    written = {
        row[0] for item in influxd.query(filled, "SHOW MEASUREMENTS") for row in item["values"]
    }
    keys: dict[str, set[str]] = {}
    for measurement in written:
        tags = influxd.query(filled, f'SHOW TAG KEYS FROM "{measurement}"')
        fields = influxd.query(filled, f'SHOW FIELD KEYS FROM "{measurement}"')
        keys[measurement] = {row[0] for item in tags + fields for row in item["values"]}
        declared_tags, declared_fields = SCHEMA[measurement]
        assert keys[measurement] <= declared_tags | declared_fields, (
            f"{measurement}: written but not in collector.metrics.SCHEMA: "
            f"{keys[measurement] - declared_tags - declared_fields}"
        )

    empty = []
    for query in queries():
        text = substituted(query.text, start, end)
        series = influxd.query(filled, text)  # an InfluxQL error fails here
        reason = NOT_FILLED.get((query.dashboard, query.panel))
        if reason is not None:
            continue  # listed above: the scenario cannot fill it yet
        measurements, used = names(query.text)
        assert measurements <= written, f"{query}: the run wrote no {measurements - written}"
        seen = set().union(*(keys[measurement] for measurement in measurements))
        assert used <= seen, f"{query}: the run never wrote {used - seen}"
        if not has_data(series):
            empty.append(f"{query.dashboard} / {query.panel}: {text}")
    assert not empty, "panels with no data:\n" + "\n".join(empty)


def test_the_cases_panels_read_what_the_cases_hook_writes(influxd: Influxd, influx_db: str) -> None:
    """The Cases panels against points written through the cases hook, with known values."""
    sink = InfluxSink(
        MetricsSection.model_validate(
            {"url": influxd.url, "database": influx_db, "flush_interval_s": 0.05}
        )
    )
    sink.start()
    moments = iter([ORIGIN, ORIGIN + timedelta(hours=1)])
    recorder = Recorder(sink, lambda: next(moments), "test", silent_after_s=60)
    for _ in range(2):
        recorder.cases(
            [
                CaseGauge("OPEN", "ACCOUNT_INFO", 3, 38_400, 7_200.0, 1),
                CaseGauge("SUBMITTED", "BANK_SYSTEM", 2, 25_600, 3_600.0, 0),
                CaseGauge("CLOSED", "NETWORK", 5, 64_000, 90_000.0, 0),
            ]
        )
    sink.close(timeout=30)
    assert sink.counters()["written"] == 6
    start, end = ORIGIN - timedelta(hours=1), ORIGIN + timedelta(hours=2)
    for query in queries():
        if (query.dashboard, query.panel) not in CASES_PANELS:
            continue
        series = influxd.query(influx_db, substituted(query.text, start, end))
        assert has_data(series), f"{query.dashboard} / {query.panel}"
    [text] = [q.text for q in queries() if (q.dashboard, q.panel) == ("posmon-cases", "Open cases")]
    [open_cases] = influxd.query(influx_db, substituted(text, start, end))
    assert open_cases["values"][0][1] == 5  # OPEN 3 + SUBMITTED 2; CLOSED is not open
