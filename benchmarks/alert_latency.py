"""How soon the collector's alerts follow their cause: a failed settlement, a passed deadline.

`posmon collector run` runs as its own process against a private mosquitto (posmon's broker
configuration), on SQLite and then on PostgreSQL. This process publishes the causes and
subscribes to `{prefix}/alerts/#`, so both ends of every figure are read from one clock
(`time.time()` here):

- failed settlement: a `posmon.txn/1` sale is published, and `FAILURE_LEAD_S` later its
  `posmon.settlement/1` with status FAILED and reason code AC01. The figure runs from that
  settlement's publish to its SETTLEMENT_FAILED alert arriving here. Each settlement names
  a bank of its own: three failures at one bank would group into a BANK_OUTAGE, and the
  members of a group are not notified one by one.
- overdue: a sale of a T0 merchant whose window is `T0_HOURS` (1.8 s), so its deadline
  passes during the run. The figure runs from the deadline (taken from the alert's
  `details.transaction.deadline`) to its SETTLEMENT_OVERDUE alert arriving here.

Both kinds are spread over each phase (`--failures` and `--overdue` over `--seconds`).
Each database gets two phases, one collector, one database: first with nothing else
going on (the baseline), then under a background load of `--load-rate` messages/s (80%
valid transactions, 20% status, over 500 terminals) from a paced publisher in its own
process (this script with `--load`). The alert engine runs with its defaults (sweep 1 s).

After each database, the collector's own timestamps split each figure into where it went:
queued (publish to the settlement's `received_at`, the moment its batch starts to be
stored; or deadline to the OVERDUE `outcome_log.at`), store + engine (to the alert's
`started_at`: the batch's store and commit, the engine's wake-up and its queries) and
notify (to the alert arriving here). The collector is on the same machine and clock.

Targets: a failed settlement's alert within 100 ms at p99; an overdue alert within 1 s of
the deadline.

    .venv/bin/python benchmarks/alert_latency.py [--failures 200] [--overdue 50]
        [--seconds 20] [--load-rate 1000] [--databases sqlite postgresql]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

from _harness import (
    Broker,
    cpu_times,
    machine,
    quiet_logging,
    stop_process,
    table,
    workspace,
)
from collector_ingest import POSTGRES_ADMIN_DEFAULT, database

from posmon.mqtt import Message, MqttClient, MqttSettings, Topics

BIN = Path(sys.executable).parent
SHANGHAI = ZoneInfo("Asia/Shanghai")
MID = "898100012340001"  # T1: deadlines far away (the failures' transactions, the load)
MID_T0 = "898100012340009"  # T0 within T0_HOURS: deadlines pass during the run
T0_HOURS = 0.0005  # 1.8 s
AMOUNT = 12_800
FAILURE_LEAD_S = 1.0  # a failure's transaction is published this long before its settlement
PROBE_TERMINALS = 20
LOAD_TERMINALS = 500
LOAD_INFLIGHT = 100
SLOWEST = 6  # the slowest alerts under load, listed with their parts
LOAD_WARMUP_S = 3.0
WARMUP_FAILURES = 5
TARGET_FAILED_P99_MS = 100.0
TARGET_OVERDUE_MS = 1000.0


# --- the background load: a paced publisher in its own process ---------------------------


def load_message(topics: Topics, index: int, terminals: int) -> tuple[str, bytes]:
    """Message `index` of the load: a valid approved sale, or every fifth a status."""
    from posmon.wire.models import Network, StatusEvent, TxnEvent, TxnKind

    tid = f"2{index % terminals:07d}"
    now = datetime.now(SHANGHAI)
    if index % 5 == 4:
        status = StatusEvent(
            event_id=uuid.uuid4(),
            agent_id="bench-load",
            tid=tid,
            link_up=True,
            network=Network.ETH,
            saf_pending=0,
            serial_ok=True,
            observed_at=now,
        )
        return topics.terminal(tid, "status"), status.to_json()
    sale = TxnEvent(
        event_id=uuid.uuid4(),
        agent_id="bench-load",
        tid=tid,
        mid=MID,
        kind=TxnKind.SALE,
        amount=100 + index % 50_000,
        currency="CNY",
        pan_masked="622202*********0123",
        rc="00",
        approved=True,
        rrn=f"5{index:011d}",
        stan=f"{index % 1_000_000:06d}",
        batch="000001",
        terminal_time=now,
        observed_at=now,
    )
    return topics.terminal(tid, "txn"), sale.to_json()


def load_main(argv: Sequence[str]) -> int:
    """`--load`: publish `--rate` messages/s (QoS 1) until SIGTERM; print what was acked."""
    parser = argparse.ArgumentParser(prog="alert_latency.py --load")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--terminals", type=int, default=LOAD_TERMINALS)
    args = parser.parse_args(argv)
    quiet_logging()
    settings = MqttSettings.model_validate(
        {
            "host": "127.0.0.1",
            "port": args.port,
            "topic_prefix": args.prefix,
            "inflight": LOAD_INFLIGHT,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
        }
    )
    topics = Topics(args.prefix)
    client = MqttClient(settings, f"bench-load-{uuid.uuid4().hex[:8]}")
    acked = 0

    def published(mid: int) -> None:
        nonlocal acked
        acked += 1

    client.on_published = published
    stopping = threading.Event()

    def terminate(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, terminate)
    deadline = time.monotonic() + 10
    while not client.connected and time.monotonic() < deadline:
        client.connect_when_due()
        client.loop(0.05)
    if not client.connected:
        print("could not connect", file=sys.stderr)
        return 1
    print("ready", flush=True)
    start = time.monotonic()
    sent = behind = 0
    while not stopping.is_set():
        due = int((time.monotonic() - start) * args.rate)
        while sent < due and sent - acked < LOAD_INFLIGHT:
            client.publish(*load_message(topics, sent, args.terminals))
            sent += 1
        behind = max(behind, due - sent)
        if not client.loop(0.002):
            client.connect_when_due()
    seconds = time.monotonic() - start
    client.disconnect()
    print(json.dumps({"sent": sent, "acked": acked, "seconds": seconds, "behind": behind}))
    return 0


class LoadProcess:
    """The paced publisher (`--load`) as its own process."""

    def __init__(self, broker: Broker, prefix: str, rate: float) -> None:
        self.command = [
            sys.executable,
            __file__,
            "--load",
            "--port",
            str(broker.port),
            "--prefix",
            prefix,
            "--rate",
            str(rate),
        ]
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the load publisher did not connect: {line!r}")

    def stop(self) -> dict[str, float]:
        """SIGTERM; what it published: sent, acked, seconds, behind (most messages late)."""
        assert self.process is not None
        self.process.terminate()
        out, _ = self.process.communicate(timeout=30)
        self.process = None
        result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
        return result

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=5)
            self.process = None


# --- the collector ------------------------------------------------------------------------


class CollectorProcess:
    """`posmon collector run` with the two merchants, HTTP off, alert defaults, its log."""

    def __init__(self, workdir: Path, broker: Broker, prefix: str, url: str) -> None:
        self.id = f"bench-{uuid.uuid4().hex[:8]}"
        self.config = workdir / f"{self.id}.toml"
        self.log = workdir / f"{self.id}.log"
        self.config.write_text(
            f'[collector]\nid = "{self.id}"\n[database]\nurl = "{url}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntopic_prefix = "{prefix}"\n'
            "reconnect_min_s = 0.05\nreconnect_max_s = 0.2\n"
            "[http]\nenabled = false\n"
            f'[[merchants]]\nmid = "{MID}"\nfee_bp = 0\n'
            f'[[merchants]]\nmid = "{MID_T0}"\nmode = "T0"\nt0_hours = {T0_HOURS}\n'
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "posmon"), "collector", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def cpu(self) -> float:
        user, system = cpu_times(self.pid)
        return user + system

    def stop(self) -> None:
        code = stop_process(self.process)
        self.process = None
        if code not in (0, None):
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"collector exited {code}:\n{tail}")


# --- this process's two ends: a listener on the alert topics, a publisher of causes -------


class AlertListener:
    """Subscribed to `{prefix}/alerts/#` from its own thread; stamps each alert on arrival."""

    def __init__(self, broker: Broker, prefix: str) -> None:
        self.prefix = prefix
        self.client = MqttClient(broker.settings(prefix), f"bench-alerts-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._received
        self.client.on_connected = lambda present: self.client.subscribe([f"{prefix}/alerts/#"])
        self.received: list[tuple[float, bytes]] = []  # (time.time(), payload)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="alerts", daemon=True)
        self._thread.start()

    def _received(self, message: Message) -> None:
        self.received.append((time.time(), message.payload))  # stamped before anything else

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.client.connect_when_due()
            if not self.client.loop(0.05):
                time.sleep(0.02)

    def alerts(self, since: int = 0) -> list[tuple[float, dict[str, Any]]]:
        """The alerts received from index `since` on, parsed, with their arrival time."""
        return [(at, json.loads(payload)) for at, payload in self.received[since:]]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.disconnect()


@dataclass(slots=True)
class Probe:
    """One cause published and the alert it should bring."""

    kind: str  # "failed" or "overdue"
    tid: str
    rrn: str
    at: float  # offset in the phase at which the stamped message is published
    stamp: float | None = None  # time.time(): the settlement's publish, or the deadline
    terminal_time: datetime | None = None
    received: float | None = None
    parts: tuple[float, float, float] | None = None  # queued, store + engine, notify; ms

    @property
    def alert_type(self) -> str:
        return "SETTLEMENT_FAILED" if self.kind == "failed" else "SETTLEMENT_OVERDUE"

    @property
    def latency_ms(self) -> float | None:
        if self.stamp is None or self.received is None:
            return None
        return 1000 * (self.received - self.stamp)


def sale(tid: str, rrn: str, mid: str, at: datetime) -> bytes:
    from posmon.wire.models import TxnEvent, TxnKind

    return TxnEvent(
        event_id=uuid.uuid4(),
        agent_id="bench-probe",
        tid=tid,
        mid=mid,
        kind=TxnKind.SALE,
        amount=AMOUNT,
        currency="CNY",
        pan_masked="622202*********0123",
        rc="00",
        approved=True,
        rrn=rrn,
        stan=rrn[-6:],
        batch="000042",
        terminal_time=at,
        observed_at=at,
    ).to_json()


def failed_settlement(tid: str, rrn: str, txn_date: date) -> bytes:
    from posmon.wire.models import SettlementEvent, SettlementKind, SettlementStatus

    return SettlementEvent(
        settlement_id=f"S-{rrn}",
        mid=MID,
        tid=tid,
        rrn=rrn,
        txn_date=txn_date,
        amount=AMOUNT,
        fee=0,
        net_amount=AMOUNT,
        currency="CNY",
        status=SettlementStatus.FAILED,
        settled_at=datetime.now(UTC),
        kind=SettlementKind.ORIGINAL,
        reason_code="AC01",
        bank_code=f"B{rrn[-8:]}",  # a bank of its own: see the module docstring
    ).to_json()


class Prober:
    """Publishes the causes on a schedule from the calling thread (QoS 1)."""

    def __init__(self, broker: Broker, prefix: str) -> None:
        self.topics = Topics(prefix)
        self.client = MqttClient(broker.settings(prefix), f"bench-probe-{uuid.uuid4().hex[:8]}")
        deadline = time.monotonic() + 10
        while not self.client.connected and time.monotonic() < deadline:
            self.client.connect_when_due()
            self.client.loop(0.05)
        if not self.client.connected:
            raise RuntimeError("the probe publisher could not connect")

    def pause(self, seconds: float) -> None:
        """Keep the connection served for `seconds`."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if not self.client.loop(min(left, 0.01)):
                self.client.connect_when_due()
                time.sleep(0.01)

    def failure(self, probe: Probe) -> tuple[Callable[[], None], Callable[[], None]]:
        """The two publishes of a failure: its sale, then its failed settlement."""

        def txn() -> None:
            probe.terminal_time = datetime.now(SHANGHAI)
            payload = sale(probe.tid, probe.rrn, MID, probe.terminal_time)
            self.client.publish(self.topics.terminal(probe.tid, "txn"), payload)

        def settle() -> None:
            assert probe.terminal_time is not None
            payload = failed_settlement(probe.tid, probe.rrn, probe.terminal_time.date())
            probe.stamp = time.time()
            self.client.publish(self.topics.settlements, payload)

        return txn, settle

    def t0_sale(self, probe: Probe) -> Callable[[], None]:
        def txn() -> None:
            probe.terminal_time = datetime.now(SHANGHAI)
            payload = sale(probe.tid, probe.rrn, MID_T0, probe.terminal_time)
            self.client.publish(self.topics.terminal(probe.tid, "txn"), payload)

        return txn

    def run(self, probes: list[Probe]) -> None:
        """Publish every probe's messages at its offset from now."""
        steps: list[tuple[float, Callable[[], None]]] = []
        for probe in probes:
            if probe.kind == "failed":
                txn, settle = self.failure(probe)
                steps += [(probe.at - FAILURE_LEAD_S, txn), (probe.at, settle)]
            else:
                steps.append((probe.at, self.t0_sale(probe)))
        steps.sort(key=lambda step: step[0])
        start = time.monotonic() - min(0.0, steps[0][0])
        for offset, publish in steps:
            self.pause(start + offset - time.monotonic())
            publish()

    def close(self) -> None:
        self.client.disconnect()


def match(probes: list[Probe], listener: AlertListener, since: int) -> None:
    """Give each probe the arrival of its alert (the first firing one for its RRN)."""
    by_key = {(probe.alert_type, probe.rrn): probe for probe in probes}
    for at, alert in listener.alerts(since):
        probe = by_key.get((alert.get("type", ""), alert.get("rrn", "")))
        if probe is None or alert.get("state") != "firing" or probe.received is not None:
            continue
        probe.received = at
        if probe.kind == "overdue":
            deadline = (alert.get("details") or {}).get("transaction", {}).get("deadline")
            probe.stamp = datetime.fromisoformat(deadline).timestamp()


def make_probes(phase: int, failures: int, overdue: int, seconds: float) -> list[Probe]:
    """Failures and T0 sales spread evenly over a phase, each with an RRN of its own.

    The settlements start after FAILURE_LEAD_S (their sales go first); the T0 sales stop
    in time for their deadlines to pass within the phase.
    """
    probes = []
    span = max(seconds - FAILURE_LEAD_S, 1.0)
    for index in range(failures):
        at = FAILURE_LEAD_S + span * index / max(failures, 1)
        tid = f"3{index % PROBE_TERMINALS:07d}"
        probes.append(Probe("failed", tid, f"9{phase:02d}1{index:08d}", at))
    span = max(seconds - T0_HOURS * 3600, 1.0)
    for index in range(overdue):
        tid = f"4{index % PROBE_TERMINALS:07d}"
        probes.append(Probe("overdue", tid, f"9{phase:02d}2{index:08d}", span * index / overdue))
    return probes


def wait_alerts(probes: list[Probe], listener: AlertListener, since: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match(probes, listener, since)
        if all(probe.received is not None for probe in probes):
            return
        time.sleep(0.1)


# --- where the time went, from the collector's own timestamps ------------------------------


def breakdown(url: str, probes: list[Probe]) -> None:
    """Split each probe's figure into queued, store + engine, notify (module docstring)."""
    from sqlalchemy import create_engine, select

    from collector.schema import alerts, outcome_log, settlements, transactions

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            stored = dict(conn.execute(select(settlements.c.rrn, settlements.c.received_at)).all())
            overdue = dict(
                conn.execute(
                    select(transactions.c.rrn, outcome_log.c.at)
                    .join(transactions, transactions.c.id == outcome_log.c.transaction_id)
                    .where(outcome_log.c.outcome == "OVERDUE", transactions.c.mid == MID_T0)
                ).all()
            )
            fired = {
                (kind, rrn): at
                for kind, rrn, at in conn.execute(
                    select(alerts.c.type, alerts.c.rrn, alerts.c.started_at)
                ).all()
            }
    finally:
        engine.dispose()
    for probe in probes:
        entered = stored.get(probe.rrn) if probe.kind == "failed" else overdue.get(probe.rrn)
        started = fired.get((probe.alert_type, probe.rrn))
        if probe.stamp is None or probe.received is None or entered is None or started is None:
            continue
        probe.parts = (
            1000 * (entered.timestamp() - probe.stamp),
            1000 * (started.timestamp() - entered.timestamp()),
            1000 * (probe.received - started.timestamp()),
        )


# --- one database: the baseline phase, then the loaded phase ------------------------------


@dataclass(slots=True)
class Phase:
    database: str
    load: str
    probes: list[Probe]
    cpu_pct: float  # the collector's, % of one core over the phase
    load_result: dict[str, float] | None = None


def run_database(
    kind: str, workdir: Path, broker: Broker, args: argparse.Namespace, phase_no: int
) -> list[Phase]:
    label = "SQLite" if kind == "sqlite" else "PostgreSQL"
    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    phases: list[Phase] = []
    with database(kind, workdir, args.postgres) as url, ExitStack() as stack:
        listener = AlertListener(broker, prefix)
        stack.callback(listener.close)
        collector = CollectorProcess(workdir, broker, prefix, url)
        collector.start()
        stack.callback(lambda: stop_process(collector.process))
        prober = Prober(broker, prefix)
        stack.callback(prober.close)
        warm_up(prober, listener, phase_no, args.timeout)
        for load in (False, True):
            load_process = None
            if load:
                load_process = LoadProcess(broker, prefix, args.load_rate)
                stack.callback(load_process.kill)
                load_process.start()
                prober.pause(LOAD_WARMUP_S)
            phase_no += 1
            probes = make_probes(phase_no, args.failures, args.overdue, args.seconds)
            since = len(listener.received)
            cpu_before, wall_before = collector.cpu(), time.monotonic()
            prober.run(probes)
            wait_alerts(probes, listener, since, args.timeout)
            cpu = 100 * (collector.cpu() - cpu_before) / (time.monotonic() - wall_before)
            load_result = load_process.stop() if load_process else None
            name = f"{args.load_rate:,.0f} msgs/s" if load else "none (baseline)"
            phases.append(Phase(label, name, probes, cpu, load_result))
            done = sum(probe.received is not None for probe in probes)
            print(f"{label}, load {name}: {done} of {len(probes)} alerts", flush=True)
        collector.stop()
        for phase in phases:
            breakdown(url, phase.probes)
    return phases


def warm_up(prober: Prober, listener: AlertListener, phase_no: int, timeout: float) -> None:
    """Publish failures until alerts come back: the collector is subscribed, its engine
    and its alert channel running. A first sale published before the collector had
    subscribed is lost, and its settlement then alerts as an orphan: any alert will do."""
    deadline = time.monotonic() + timeout
    index = 0
    while time.monotonic() < deadline:
        probes = [Probe("failed", "30000000", f"9{phase_no:02d}0{index:08d}", FAILURE_LEAD_S)]
        index += 1
        since = len(listener.received)
        prober.run(probes)
        wait_alerts(probes, listener, since, 2.0)
        if len(listener.received) > since:
            break
    else:
        raise TimeoutError("no alert from the collector")
    probes = [
        Probe("failed", "30000000", f"9{phase_no:02d}0{index + n:08d}", FAILURE_LEAD_S + 0.05 * n)
        for n in range(WARMUP_FAILURES)
    ]
    since = len(listener.received)
    prober.run(probes)
    wait_alerts(probes, listener, since, 10.0)


# --- the report ---------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least `fraction` of them at or below it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def latencies(phase: Phase, kind: str) -> list[float]:
    return [
        probe.latency_ms
        for probe in phase.probes
        if probe.kind == kind and probe.latency_ms is not None
    ]


def report(phases: list[Phase], load_rate: float) -> None:
    baseline: dict[str, Phase] = {p.database: p for p in phases if p.load_result is None}
    rows = []
    met = True
    for phase in phases:
        values = latencies(phase, "failed")
        expected = sum(probe.kind == "failed" for probe in phase.probes)
        if not values:
            rows.append([phase.database, phase.load, f"0 of {expected}", *"------", "NO"])
            met = False
            continue
        base = latencies(baseline[phase.database], "failed")
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        ok = p99 < TARGET_FAILED_P99_MS and len(values) == expected
        met = met and ok
        rows.append(
            [
                phase.database,
                phase.load,
                f"{len(values)} of {expected}",
                ms(p50),
                ms(percentile(values, 0.95)),
                ms(p99),
                ms(max(values)),
                f"{p50 / percentile(base, 0.5):.2f}" if base else "-",
                f"{p99 / percentile(base, 0.99):.2f}" if base else "-",
                f"{phase.cpu_pct:.0f}",
                "yes" if ok else "NO",
            ]
        )
    print("\nfailed settlement published -> its SETTLEMENT_FAILED alert received, ms")
    print(
        table(
            [
                "database",
                "background load",
                "alerts",
                "p50",
                "p95",
                "p99",
                "max",
                "p50 x base",
                "p99 x base",
                "collector CPU %",
                f"p99 < {TARGET_FAILED_P99_MS:.0f} ms",
            ],
            rows,
        )
    )
    rows = []
    for phase in phases:
        values = latencies(phase, "overdue")
        expected = sum(probe.kind == "overdue" for probe in phase.probes)
        if not values:
            rows.append([phase.database, phase.load, f"0 of {expected}", *"---", "NO"])
            met = False
            continue
        ok = max(values) < TARGET_OVERDUE_MS and len(values) == expected
        met = met and ok
        rows.append(
            [
                phase.database,
                phase.load,
                f"{len(values)} of {expected}",
                ms(percentile(values, 0.5)),
                ms(percentile(values, 0.99)),
                ms(max(values)),
                "yes" if ok else "NO",
            ]
        )
    print("\nT0 deadline passed -> its SETTLEMENT_OVERDUE alert received, ms")
    print(table(["database", "background load", "alerts", "p50", "p99", "max", "max < 1 s"], rows))
    rows = []
    for phase in phases:
        for kind, first in (
            ("failed", "publish -> store starts"),
            ("overdue", "deadline -> marked"),
        ):
            parts = [p.parts for p in phase.probes if p.kind == kind and p.parts is not None]
            if not parts:
                continue
            cells = []
            for index in range(3):
                column = [part[index] for part in parts]
                cells.append(f"{ms(statistics.median(column))} / {ms(percentile(column, 0.99))}")
            rows.append([phase.database, phase.load, kind, first, *cells])
    print("\nwhere it went, p50 / p99 ms, on the collector's own timestamps")
    print(
        table(
            [
                "database",
                "background load",
                "alert",
                "first part",
                "queued",
                "store + engine",
                "notify",
            ],
            rows,
        )
    )
    print(
        "queued: to the settlement's received_at (failed) or the OVERDUE outcome_log.at "
        "(overdue); store + engine: to the alert's started_at; notify: to the alert "
        "received here."
    )
    slowest(phases)
    for phase in phases:
        if phase.load_result is not None:
            result = phase.load_result
            print(
                f"load during {phase.database}: {result['acked'] / result['seconds']:,.0f} "
                f"msgs/s acked of {load_rate:,.0f} asked ({result['acked']:,.0f} in "
                f"{result['seconds']:.1f} s; at most {result['behind']:,.0f} behind schedule)"
            )
    print("targets met" if met else "targets NOT met")


def slowest(phases: list[Phase]) -> None:
    """The slowest failed-settlement alerts under load: when they were, where they went."""
    rows = []
    for phase in phases:
        if phase.load_result is None:
            continue
        failed = [p for p in phase.probes if p.kind == "failed" and p.latency_ms is not None]
        for probe in sorted(failed, key=lambda p: -(p.latency_ms or 0))[:SLOWEST]:
            parts = [ms(part) for part in probe.parts] if probe.parts else ["-"] * 3
            rows.append([phase.database, f"{probe.at:.2f}", ms(probe.latency_ms or 0), *parts])
    print(f"\nthe {SLOWEST} slowest failed-settlement alerts under load, ms")
    print(table(["database", "at s", "total", "queued", "store + engine", "notify"], rows))
    print(
        "at: when in the phase the settlement was published. Slow alerts close together "
        "share one stall; spread out, each was slow on its own."
    )


# --- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--load"]:
        return load_main(argv[1:])
    parser = argparse.ArgumentParser(
        description="Collector alert latency: a failed settlement to its SETTLEMENT_FAILED "
        "alert, a passed deadline to its SETTLEMENT_OVERDUE alert, without and with a "
        "background load, on SQLite and PostgreSQL."
    )
    parser.add_argument("--failures", type=int, default=200, help="per phase (200)")
    parser.add_argument("--overdue", type=int, default=50, help="T0 sales per phase (50)")
    parser.add_argument("--seconds", type=float, default=20, help="length of a phase (20)")
    parser.add_argument(
        "--load-rate", type=float, default=1000, help="background messages/s (1000)"
    )
    parser.add_argument(
        "--databases",
        nargs="+",
        choices=("sqlite", "postgresql"),
        default=["sqlite", "postgresql"],
        help="collector databases to measure (sqlite postgresql)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("POSMON_TEST_POSTGRES", POSTGRES_ADMIN_DEFAULT),
        help="admin URL to make a scratch database with (POSMON_TEST_POSTGRES)",
    )
    parser.add_argument("--timeout", type=float, default=30, help="wait for alerts, s (30)")
    args = parser.parse_args(argv)
    quiet_logging()
    print(f"machine: {machine()}")
    print(
        f"per phase: {args.failures} failed settlements and {args.overdue} T0 sales over "
        f"{args.seconds:g} s; background load {args.load_rate:,.0f} msgs/s (80% txn, 20% "
        f"status, {LOAD_TERMINALS} terminals) in its own process",
        flush=True,
    )
    phases: list[Phase] = []
    with workspace() as workdir, ExitStack() as stack:
        broker = Broker(workdir / "broker")
        broker.start()
        stack.callback(broker.stop)
        for number, kind in enumerate(args.databases):
            phases += run_database(kind, workdir, broker, args, 10 * number)
    report(phases, args.load_rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
