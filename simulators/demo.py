"""`posmon demo`: the whole system on embedded defaults, watched live, then a summary.

Nothing to install or configure: an embedded MQTT broker (amqtt, in this process; or the
broker `--broker` names), a SQLite store, a fleet of simulated terminals on
pseudo-terminals read by `posmon agent run` processes over the serial protocol, the
acquirer simulator injecting a mix of every fault cause on an accelerated clock, and the
collector. It is a scenario run (`simulators.scenario`) built from the size and length
asked for, with a live view while it runs and, at the end (or on Ctrl-C), each injected
fault against what the collector found, and the files it wrote.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from collector.rules import AlertType
from simulators.scenario import ScenarioFile, ScenarioRun
from simulators.score import Score

if TYPE_CHECKING:
    from collector.alerts import AlertStore

# The virtual days a run covers: about a day and a half of trading, then until the last
# T1 credits, the late ones and the returns are in.
VIRTUAL_TRADING_H = 30.0
VIRTUAL_SETTLING_H = 50.0
MIDS = ("898100012340001", "898100012340002", "898100012340003", "898100012340004")
BANKS = ("0102", "0105", "0103", "0104")
EVIDENCE_PDFS = 20  # the first cases' evidence packages, as the demo's sample
RATE = 2.0  # messages per second per terminal
DECLINE_WINDOW = 20
DECLINE_BASELINE = 30
# Messages the spiking terminal sends while trading: half before the spike (the baseline's
# 30 transactions and a window: about 60 % of a terminal's messages are transactions, the
# rest status reports, and it sells nothing in its closing hour), half in it (two windows).
SPIKE_MESSAGES = 200


def demo_scenario(terminals: int, minutes: float, *, seed: int = 7) -> ScenarioFile:
    """A scenario of `terminals` terminals lasting `minutes` real minutes, every cause in it.

    The terminal faults go to terminals 2 to 6 (link down, batch never closed, switched
    off, declines, unbalanced batches) when the fleet has them; merchant 4 is frozen and
    bank 0102 is down for eight virtual hours on the second day.

    The decline spike needs its minimum evidence (docs/alerts.md): `DECLINE_BASELINE`
    transactions before it and two windows of `DECLINE_WINDOW` in it. The spiking
    terminal is a busier counter in a short demo, so even the shortest run shows it.
    """
    real_s = minutes * 60
    scale = (VIRTUAL_TRADING_H + VIRTUAL_SETTLING_H) * 3600 / real_s
    traffic_s = real_s * VIRTUAL_TRADING_H / (VIRTUAL_TRADING_H + VIRTUAL_SETTLING_H)
    spike_rate = max(RATE, SPIKE_MESSAGES / traffic_s)
    faults: list[dict[str, Any]] = [
        {"link_down_from_s": 0.2 * traffic_s, "link_down_for_s": max(6.0, 0.25 * traffic_s)},
        {"never_close_batch": True},
        {"silent_after_s": 0.4 * traffic_s},
        {"decline_spike_from_s": 0.5 * traffic_s, "decline_spike_rate": 0.95},
        {"unbalanced": True},
    ]
    plans = [
        {
            "tid": str(10000002 + n),
            "faults": fault,
            **({"rate": spike_rate} if "decline_spike_from_s" in fault else {}),
        }
        for n, fault in enumerate(faults)
        if 10000002 + n < 10000001 + terminals
    ]
    return ScenarioFile.model_validate(
        {
            "name": "demo",
            "time": {"scale": scale, "traffic_s": traffic_s, "settle_s": real_s - traffic_s},
            "fleet": {
                "terminals": terminals,
                "agents": max(1, min(4, terminals // 8)),
                "rate": RATE,
                "batch_size": 12,
                "decline_rate": 0.03,
                "heartbeat_s": 2.0,
                "mids": list(MIDS),
                "seed": seed,
            },
            "terminal": plans,
            "merchants": [
                {"mid": mid, "bank_code": bank} for mid, bank in zip(MIDS, BANKS, strict=True)
            ],
            "acquirer": {
                "seed": seed,
                "frozen": [f"{MIDS[3]}:M102"],
                "bank_outages": ["0102@+26h/+34h"],
                "rates": {
                    "account_failed": 0.04,
                    "account_returned": 0.03,
                    "risk_hold": 0.02,
                    "bank_failed": 0.02,
                    "unspecified_failed": 0.02,
                    "late": 0.03,
                    "duplicate": 0.03,
                    "mismatch": 0.03,
                    "orphan": 0.02,
                    "offline_lost": 1.0,
                    "void_ignored": 0.3,
                },
            },
            "collector": {
                "alerts": {
                    "heartbeat_timeout_s": 6,
                    "link_down_s": 3,
                    "saf_threshold": 3,
                    "decline_window": DECLINE_WINDOW,
                    "decline_baseline_min": DECLINE_BASELINE,
                    "bank_outage_failures": 3,
                    "bank_outage_window_min": 120,
                    "sweep_s": 0.2,
                    "context_window_s": 3600 / scale,  # one virtual hour
                }
            },
        }
    )


# --- the live view -------------------------------------------------------------------------


@dataclass(slots=True)
class LiveView:
    """What the terminal shows while the demo runs, refreshed by the run's ticks."""

    live: Live
    started_wall: float = field(default_factory=time.monotonic)

    def tick(self, run: ScenarioRun, elapsed: float) -> None:
        if run.collector is None:
            return
        self.live.update(render(run, elapsed))


def render(run: ScenarioRun, elapsed: float) -> Panel:
    """The live view: time, terminals, traffic, alerts by cause, cases by state."""
    collector = run.collector
    scenario = run.scenario
    total = scenario.time.traffic_s + scenario.time.settle_s
    virtual = collector.clock.now().astimezone(scenario.time.origin.tzinfo)
    counts = collector.store.counts()
    timeout = collector.config.alerts.heartbeat_timeout_s
    engine = collector.alerts
    elapsed_now = engine.monotonic()
    online = sum(1 for heard in dict(engine.heard).values() if elapsed_now - heard <= timeout)
    phase = "trading" if elapsed < scenario.time.traffic_s else "settling"
    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"[bold]{elapsed:5.0f} s[/] of {total:.0f} s ({phase})",
        f"virtual {virtual:%a %d %b %H:%M}",
        f"terminals online [bold]{online}[/] of {scenario.fleet.terminals}",
    )
    head.add_row(
        f"transactions [bold]{counts.get('transactions', 0):,}[/]",
        f"settlements [bold]{counts.get('settlements', 0):,}[/]",
        f"settled [bold]{counts.get('outcome.SETTLED', 0):,}[/]",
    )
    by_cause, by_type, breached = open_alerts(collector.alert_store)
    alerts = Table(title="open alerts by cause", expand=False)
    alerts.add_column("cause")
    alerts.add_column("open", justify="right")
    for cause, count in sorted(by_cause.items(), key=lambda item: -item[1]):
        alerts.add_row(cause, str(count))
    types = Table(title="open alerts by type", expand=False)
    types.add_column("type")
    types.add_column("open", justify="right")
    for alert_type, count in sorted(by_type.items(), key=lambda item: -item[1]):
        types.add_row(alert_type, str(count))
    cases = Table(title="re-remittance cases", expand=False)
    cases.add_column("state")
    cases.add_column("cases", justify="right")
    for state, count in sorted(collector.cases.counts().items()):
        cases.add_row(state, str(count))
    # Nobody works the cases in a demo, and its clock runs thousands of times faster than
    # their SLAs: each case breaches within seconds. Those alerts are shown here, apart.
    cases.add_row("[dim]past SLA[/] (CASE_SLA_BREACHED)", str(breached), end_section=True)
    body = Table.grid(padding=(0, 3))
    body.add_row(alerts, types, cases)
    return Panel(Group(head, body), title="posmon demo", subtitle="Ctrl-C ends it early")


def open_alerts(store: AlertStore) -> tuple[dict[str, int], dict[str, int], int]:
    """Open alerts by cause and by type, without the case SLA breaches, and how many of
    those there are (shown with the cases)."""
    sla = AlertType.CASE_SLA_BREACHED.value
    by_type = store.counts("type")
    breached = by_type.pop(sla, 0)
    by_cause = store.counts("cause")
    if breached:
        for row in store.find(status="open", alert_type=sla, limit=1_000_000):
            by_cause[row.cause.value] -= 1
    return {k: v for k, v in by_cause.items() if v > 0}, by_type, breached


# --- the end ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Outputs:
    """The files a demo wrote."""

    database: Path
    alert_log: Path
    faults: Path
    report: Path
    evidence: list[Path]


def write_outputs(run: ScenarioRun, result: Score) -> Outputs:
    """The alert log, the per-fault table, and sample evidence packages of the cases."""
    from sqlalchemy import create_engine  # noqa: PLC0415

    from collector.alerts import AlertStore, alert_event  # noqa: PLC0415
    from collector.casestore import CaseStore  # noqa: PLC0415
    from collector.evidence import package, write_json, write_pdf  # noqa: PLC0415

    files = run.files
    assert files is not None
    engine = create_engine(f"sqlite:///{files.database}")
    try:
        alerts = AlertStore(engine, "demo", [])
        rows = sorted(alerts.find(limit=1_000_000), key=lambda row: row.started_at)
        alert_log = files.folder / "alerts.jsonl"
        with alert_log.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(alert_event(row).to_json().decode() + "\n")
        cases = CaseStore(engine)
        evidence_dir = files.folder / "evidence"
        evidence_dir.mkdir(exist_ok=True)
        for old in evidence_dir.glob("C-*"):
            old.unlink()
        written: list[Path] = []
        for case in sorted(cases.search(limit=1_000_000), key=lambda c: c.opened_at)[
            :EVIDENCE_PDFS
        ]:
            data = package(
                case,
                cases.evidence(case, timedelta(minutes=30)),
                events=cases.audit_log(case.case_id),
                alert=alerts.get(case.alert_id) if case.alert_id else None,
                generated_at=datetime.now(UTC),
            )
            write_json(data, evidence_dir / f"{case.case_id}.json")
            written.append(write_pdf(data, evidence_dir / f"{case.case_id}.pdf"))
    finally:
        engine.dispose()
    faults = files.folder / "faults.csv"
    with faults.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["alert", "key", "injected_cause", "detected", "found_cause", "time_to_alert_s"]
        )
        for item in result.expected:
            found = item.found
            writer.writerow(
                [
                    item.alert_type,
                    " ".join(item.key[1:]),
                    item.cause or "",
                    "yes" if found else "no",
                    found["cause"] if found else "",
                    f"{item.delay_s:.3f}" if item.delay_s is not None else "",
                ]
            )
    return Outputs(files.database, alert_log, faults, files.report, written)


def summary(console: Console, result: Score, outputs: Outputs, *, interrupted: bool) -> None:
    """Each injected fault against what was found, then the files."""
    table = Table(title="injected faults against the collector's alerts")
    for column in ("alert", "injected", "detected", "cause right", "time to alert, real s"):
        table.add_column(column, justify="left" if column == "alert" else "right")
    for name, (expected, detected, right) in result.by_type().items():
        delays = sorted(result.delays_s.get(name, []))
        timing = f"median {delays[len(delays) // 2]:.2f}, max {delays[-1]:.2f}" if delays else "-"
        table.add_row(name, str(expected), str(detected), str(right), timing)
    console.print(table)
    if interrupted:
        console.print("[yellow]stopped early (Ctrl-C): faults still due were not injected yet[/]")
    console.print(
        f"detected {result.detected} of {len(result.expected)} injected faults "
        f"({result.recall:.0%}), cause right for {result.cause_accuracy:.0%}, "
        f"false alerts {len(result.false_alerts)}"
    )
    report = result.as_dict()
    for title, rows in (("missed", report["missed"]), ("wrong cause", report["wrong_cause"])):
        for row in rows[:10]:
            console.print(f"  {title}: {row}")
    verdict = "PASS" if result.passed() else "FAIL"
    if interrupted and not result.passed():
        verdict = "not judged (stopped early)"
    console.print(f"targets (all detected, >= 95% causes right, no false alert): {verdict}")
    console.print("files:")
    console.print(f"  database       {outputs.database}")
    console.print(f"  alert log      {outputs.alert_log}")
    console.print(f"  every fault    {outputs.faults}")
    console.print(f"  score          {outputs.report}")
    first = f" ({outputs.evidence[0].name} ...)" if outputs.evidence else ""
    folder = outputs.alert_log.parent / "evidence"
    console.print(f"  evidence PDFs  {len(outputs.evidence)} in {folder}{first}")


def report_json(result: Score) -> str:
    return json.dumps(result.as_dict(), ensure_ascii=False)
