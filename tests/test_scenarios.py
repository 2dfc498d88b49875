"""The shipped scenarios, run as a user runs them: `posmon simulate scenario FILE --score`.

Each runs the whole system (a private mosquitto, `posmon agent run` processes reading
simulated terminals over pseudo-terminals, the collector, the acquirer simulator) on an
accelerated clock, and scores the alerts against what was injected. The targets: every
injected fault detected, at least 95% classified to the injected cause, no false alert.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
