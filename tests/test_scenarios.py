"""The shipped scenarios, run as a user runs them: `posmon simulate scenario FILE --score`.

Each runs the whole system (a private mosquitto, `posmon agent run` processes reading
simulated terminals over pseudo-terminals, the collector, the acquirer simulator) on an
accelerated clock, and scores the alerts against what was injected. The targets: every
injected fault detected, at least 95% classified to the injected cause, no false alert.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from simulators.scenario import ScenarioSource, TerminalFaults
from simulators.stream import TrafficGenerator, TrafficProfile

ROOT = Path(__file__).resolve().parent.parent
POSMON = Path(sys.executable).parent / "posmon"
EVERY_ALERT_TYPE = {
    "SETTLEMENT_FAILED",
    "SETTLEMENT_RETURNED",
    "SETTLEMENT_OVERDUE",
    "AMOUNT_MISMATCH",
    "DUPLICATE_SETTLEMENT",
    "ORPHAN_SETTLEMENT",
    "REVERSED_BUT_SETTLED",
    "TERMINAL_OFFLINE",
    "HOST_LINK_DOWN",
    "BATCH_NOT_CLOSED",
    "BATCH_UNBALANCED",
    "BANK_OUTAGE",
    "DECLINE_SPIKE",
}


def run_scenario(name: str, workdir: Path) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    process = subprocess.run(
        [str(POSMON), "simulate", "scenario", str(ROOT / "scenarios" / name), "--score",
         "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    report_path = workdir / "report.json"
    assert report_path.exists(), process.stdout + process.stderr
    return process, json.loads(report_path.read_text())


@pytest.mark.slow
def test_every_cause_scenario_detects_every_fault_with_its_cause(tmp_path: Path) -> None:
    process, report = run_scenario("every-cause.toml", tmp_path)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert "targets (all detected, >= 95% causes right, no false alert): PASS" in process.stdout
    assert report["recall"] == 1.0 and report["missed"] == []
    assert report["cause_accuracy"] >= 0.95
    assert report["false_alerts"] == 0
    assert set(report["by_type"]) >= EVERY_ALERT_TYPE
    truth = [
        json.loads(line) for line in (tmp_path / "ground-truth.jsonl").read_text().splitlines()
    ]
    terminal = [
        json.loads(line) for line in (tmp_path / "terminal-truth.jsonl").read_text().splitlines()
    ]
    causes = {line["cause"] for line in truth + terminal if line.get("cause")}
    assert causes == {
        "NETWORK",
        "MERCHANT_QUALIFICATION",
        "ACCOUNT_INFO",
        "BANK_SYSTEM",
        "OPERATOR",
        "UNKNOWN",
    }, "the scenario injects every cause"
    # Settlement alerts follow the settlement (or the deadline) within a second.
    for name, timing in report["time_to_alert_s"].items():
        assert timing["max"] < 1.0, (name, timing)


@pytest.mark.slow
def test_quiet_scenario_raises_no_alert(tmp_path: Path) -> None:
    process, report = run_scenario("quiet.toml", tmp_path)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert report["expected"] == 0 and report["false_alerts"] == 0, report["false"]
    assert "transactions" in process.stdout  # the run did trade: progress lines count them


@pytest.mark.slow
def test_a_large_quiet_day_of_instant_settlement_raises_no_alert(tmp_path: Path) -> None:
    # Twelve terminals on D0 and T0: none voids a sale its acquirer has paid already.
    process, report = run_scenario("quiet-instant.toml", tmp_path)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert report["expected"] == 0 and report["false_alerts"] == 0, report["false"]
    assert (tmp_path / "ground-truth.jsonl").read_text() == ""


def test_a_bad_scenario_file_names_the_key_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[fleet]\nterminals = 0\n[acquirer.rates]\nlate = 0.1\nsmoke = 0.2\n")
    process = subprocess.run(
        [str(POSMON), "simulate", "scenario", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 2
    assert f"{bad}" in process.stderr
    assert "fleet.terminals" in process.stderr


def test_on_a_fast_clock_a_terminal_closes_its_batch_before_closing_time() -> None:
    # At 12,000 virtual seconds per real one and two messages a second, a terminal speaks
    # every 100 virtual minutes: more than its closing hour. It closes at its last message
    # before 17:00 rather than miss the day's close (a BATCH_NOT_CLOSED nobody injected).
    shanghai = ZoneInfo("Asia/Shanghai")
    generator = TrafficGenerator("10000001", TrafficProfile(batch_size=400), seed=1)
    source = ScenarioSource(
        generator, TerminalFaults(), 1e9, lambda: 1.0, (clock_time(17), clock_time(18))
    )
    start = datetime(2026, 11, 23, 9, 5, tzinfo=shanghai)
    sent = [(start + timedelta(minutes=100 * n)) for n in range(20)]
    messages = [(at, source.next_message(at)) for at in sent]
    closes = [at for at, m in messages if m is not None and m.type == "BAT"]
    assert closes and closes[0].date() == start.date() and closes[0].time() < clock_time(17)
    for at, message in messages:
        local = at.astimezone(shanghai)
        if closes[0] < at and local.date() == start.date() and local.time() < clock_time(18):
            assert message is not None and message.type != "TXN", "no sale once closed"
    assert source.batch_closes == len(closes) >= 1


@pytest.mark.slow
def test_a_scenario_run_shows_the_metrics_sink_retrying(tmp_path: Path) -> None:
    # The alerts' own log lines are kept out of a scenario's output, the collector's
    # other warnings are not: with InfluxDB unreachable, the user sees the sink retrying.
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(
        'name = "tiny"\n[time]\ntraffic_s = 3\nsettle_s = 3\n[fleet]\nterminals = 1\n'
        "[collector.alerts]\nheartbeat_timeout_s = 30\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe closes
    process = subprocess.run(
        [str(POSMON), "simulate", "scenario", str(tiny), "--workdir", str(tmp_path / "run"),
         "--influx", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    retries = [line for line in process.stderr.splitlines() if "retry in" in line]
    assert retries and "collector.influx" in retries[0], process.stderr[-3000:]
    assert "collector.alerts" not in process.stderr
