"""Network faults between agent and broker and between broker and collector (issue #17).

Real processes throughout: a simulated terminal on a pty, `posmon agent run`, mosquitto on
posmon's configuration, `posmon collector run` on SQLite; the fault-injecting proxy of
faultkit.py sits on one link. Each fault ends with the same checks and one figures line
(runs/faults/figures.jsonl; `scripts/faults` prints them as a table): every frame the agent
acknowledged is stored once, per-terminal order holds on the broker, and no alert is
raised that the fault does not explain.

Partitions last `POSMON_FAULT_PARTITION_S` seconds (20 by default, to keep CI short; the
issue's 60 with `POSMON_FAULT_PARTITION_S=60`).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import AgentProcess, Broker, Listener, wait_until
from faultkit import FaultFigures, FaultProxy
from test_agent_e2e import TID, txn_burst
from test_collector_ingest import collector_process

from simulators.pty import PtyLink
from simulators.script import ScriptedStream
from simulators.terminal import SimulatedTerminal, TerminalConfig, TerminalCounters

pytestmark = pytest.mark.faults

PARTITION_S = float(os.environ.get("POSMON_FAULT_PARTITION_S", "20"))
KEEPALIVE_S = 5  # the agent's and the collector's MQTT keep-alive here (the least allowed)
RATE = 40.0  # frames a second from the terminal


@dataclass
class Port:
    """Where a client connects: the broker itself or a proxy in front of it."""

    port: int


class Collector:
    """`posmon collector run` on SQLite, connecting to `port` (the broker or a proxy)."""

    def __init__(self, workdir: Path, port: int, prefix: str, extra: str = "") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.database = workdir / "posmon.db"
        self.config = workdir / "collector.toml"
        self.log = workdir / "collector.log"
        self.config.write_text(
            f'[collector]\nid = "faults"\n[database]\nurl = "sqlite:///{self.database}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\ntopic_prefix = "{prefix}"\n'
            f"keepalive_s = {KEEPALIVE_S}\nreconnect_min_s = 0.1\nreconnect_max_s = 1.0\n"
            "[http]\nenabled = false\n" + extra
        )
        self.start()

    def start(self) -> None:
        self.process = collector_process(self.config, self.log)

    def kill(self) -> None:
        """SIGKILL: nothing flushed, nothing acknowledged on the way out."""
        self.process.kill()
        self.process.wait(timeout=10)

    def query(self, sql: str) -> list[tuple[object, ...]]:
        if not self.database.exists():
            return []
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10) as conn:
            try:
                return conn.execute(sql).fetchall()
            except sqlite3.OperationalError:  # not migrated yet
                return []

    def stored(self) -> tuple[int, int]:
        """(transaction rows, distinct RRNs) of the test's terminal."""
        rows = self.query(
            f"SELECT count(*), count(DISTINCT rrn) FROM transactions WHERE tid = '{TID}'"
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)  # type: ignore[call-overload]

    def alerts(self) -> list[tuple[object, ...]]:
        return self.query("SELECT type, tid, cause, started_at FROM alerts ORDER BY started_at")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class Line:
    """One run of the chain: terminal -> agent -> (proxy) -> broker -> (proxy) -> collector."""

    terminal: SimulatedTerminal
    agent: AgentProcess
    collector: Collector
    listener: Listener
    sent_rrns: list[str]

    def counters(self) -> TerminalCounters:
        return self.terminal.counters


# The agents and collectors `start_line` started, stopped by the `pty` fixture (which every
# test of a line uses) however the test ended, so that a failure leaves no process behind.
_STARTED: list[AgentProcess | Collector] = []


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyLink]:
    link = PtyLink(tmp_path / "ttyPOS0")
    yield link
    link.close()
    while _STARTED:
        process = _STARTED.pop()
        if isinstance(process, AgentProcess):
            if process.process is not None:
                process.kill()
        elif process.process.poll() is None:
            process.kill()


def start_line(
    tmp_path: Path,
    broker: Broker,
    prefix: str,
    pty: PtyLink,
    listener_factory: Callable[..., Listener],
    *,
    agent_port: int,
    collector_port: int,
    count: int,
    agent_host: str = "127.0.0.1",
    agent_class: type[AgentProcess] = AgentProcess,
    collector_extra: str = "",
    heartbeat_s: float = 0,
) -> Line:
    listener = listener_factory(broker, prefix)
    collector = Collector(tmp_path / "collector", collector_port, prefix, collector_extra)
    _STARTED.append(collector)
    agent = agent_class(
        tmp_path / "agent",
        Port(agent_port),  # type: ignore[arg-type]
        prefix,
        {"counter-1": str(pty.path)},
        extra=f"keepalive_s = {KEEPALIVE_S}\n",
    )
    _STARTED.append(agent)
    text = agent.config.read_text()
    agent.config.write_text(text.replace('host = "127.0.0.1"', f'host = "{agent_host}"'))
    agent.start()
    wait_until(lambda: b"subscribed" in collector.log.read_bytes(), 30, "the collector")
    wait_until(lambda: b"MQTT connected" in agent.log.read_bytes(), 30, "the agent")
    messages, _ = txn_burst(count)
    sent = [str(message.fields["RRN"]) for message in messages]
    terminal = SimulatedTerminal(
        pty,
        ScriptedStream(messages),
        TerminalConfig(tid=TID, rate=RATE, heartbeat_interval=heartbeat_s, seed=3),
    )
    terminal.start(count=count)
    return Line(terminal, agent, collector, listener, sent)


def recovered(line: Line, healed_at: float) -> float:
    """Seconds from the heal until every frame acknowledged by then is stored."""
    backlog = line.counters().acked
    wait_until(lambda: line.collector.stored()[1] >= backlog, 120, "the backlog stored")
    return time.monotonic() - healed_at


def finish(
    line: Line,
    fault: str,
    *,
    detect_s: float | None,
    recover_s: float | None,
    expected_alerts: set[str],
    notes: str = "",
    order: bool = True,
) -> FaultFigures:
    """Wait for the terminal and for every acknowledged frame to be stored; the checks."""
    wait_until(lambda: line.counters().acked + line.counters().given_up >= len(line.sent_rrns),
               180, "the terminal to finish")  # fmt: skip
    # Heartbeat frames may be among the acknowledged ones; counting them as transactions
    # can only make `lost` larger, never hide a loss.
    acked = min(line.counters().acked, len(line.sent_rrns))
    deadline = time.monotonic() + 120  # a shortfall after this is counted as lost
    while line.collector.stored()[1] < acked and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # a repeat would be stored by now
    rows, distinct = line.collector.stored()
    alerts = line.collector.alerts()
    line.agent.stop()
    line.collector.stop()
    false = [alert for alert in alerts if alert[0] not in expected_alerts]
    seen = ", ".join(f"{alert[0]} ({alert[2]})" for alert in alerts) or "none"
    notes = f"{notes}; alerts: {seen}" if notes else f"alerts: {seen}"
    figures = FaultFigures(
        fault=fault,
        sent=line.counters().sent,
        acknowledged=acked,
        stored=distinct,
        duplicates=rows - distinct,
        lost=max(0, acked - distinct),
        false_alerts=len(false),
        detect_s=None if detect_s is None else round(detect_s, 2),
        recover_s=None if recover_s is None else round(recover_s, 2),
        notes=notes,
    )
    figures.write()
    assert figures.lost == 0 and figures.duplicates == 0, figures
    assert false == [], false
    if not order:  # the test's listener misses what passes while the broker is down
        return figures
    # Order per terminal on the broker: the first copy of each RRN comes in the sent order.
    first_seen: list[str] = []
    for message in line.listener.on("/txn"):
        rrn = str(json.loads(message.payload)["rrn"])
        if rrn not in first_seen:
            first_seen.append(rrn)
    assert first_seen == line.sent_rrns[: len(first_seen)] and len(first_seen) >= acked
    return figures


def _logged_after(log: Path, pattern: str, since: float, timeout: float) -> float | None:
    """Seconds from `since` (monotonic) until `pattern` first appears in `log` after now."""
    start = len(log.read_bytes())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern.encode(), log.read_bytes()[start:]):
            return time.monotonic() - since
        time.sleep(0.05)
    return None


@pytest.fixture
def proxy(own_broker: Broker) -> Iterator[FaultProxy]:
    made = FaultProxy(own_broker.port)
    yield made
    made.close()


Chain = Callable[..., Line]


@pytest.fixture
def chain(
    tmp_path: Path,
    own_broker: Broker,
    prefix: str,
    pty: PtyLink,
    listener_factory: Callable[..., Listener],
) -> Chain:
    """`chain(agent_port=..., collector_port=..., count=...)`: the line, running."""

    def start(*, agent_port: int, collector_port: int, count: int) -> Line:
        return start_line(
            tmp_path,
            own_broker,
            prefix,
            pty,
            listener_factory,
            agent_port=agent_port,
            collector_port=collector_port,
            count=count,
        )

    return start


def test_latency_with_jitter_between_agent_and_broker(
    chain: Chain, own_broker: Broker, proxy: FaultProxy
) -> None:
    proxy.delay_s, proxy.jitter_s = 0.4, 0.2  # 500 ms on average, each way
    line = chain(agent_port=proxy.port, collector_port=own_broker.port, count=400)
    figures = finish(line, "agent-broker latency 400-600 ms each way", detect_s=None,
                     recover_s=None, expected_alerts=set())  # fmt: skip
    assert figures.stored == 400


def test_loss_between_agent_and_broker(chain: Chain, own_broker: Broker, proxy: FaultProxy) -> None:
    # 30% of segments lost: each arrives a retransmission timeout (200 ms) late.
    proxy.stall_p, proxy.stall_s = 0.3, 0.2
    line = chain(agent_port=proxy.port, collector_port=own_broker.port, count=400)
    figures = finish(line, "agent-broker 30% loss (200 ms RTO)", detect_s=None,
                     recover_s=None, expected_alerts=set())  # fmt: skip
    assert figures.stored == 400


def test_throttled_bandwidth_between_agent_and_broker(
    chain: Chain, own_broker: Broker, proxy: FaultProxy
) -> None:
    # 6 kB/s each way, a poor GPRS link: well under what the terminal sends (40 frames/s of
    # some 450 bytes each on the wire), so the agent's outbox takes up the difference and
    # drains through the narrow line after the terminal's last frame.
    proxy.rate_bps = 6_000
    line = chain(agent_port=proxy.port, collector_port=own_broker.port, count=200)
    wait_until(lambda: line.counters().acked >= 200, 60, "the terminal's 200 frames")
    drained_s = recovered(line, time.monotonic())
    figures = finish(line, "agent-broker throttled to 6 kB/s", detect_s=None,
                     recover_s=drained_s, expected_alerts=set(),
                     notes="recover: from the terminal's last frame to all stored")  # fmt: skip
    assert figures.stored == 200
    assert drained_s > 2, "the throttle held the stream back"


def test_connections_reset_between_agent_and_broker(
    chain: Chain, own_broker: Broker, proxy: FaultProxy
) -> None:
    line = chain(agent_port=proxy.port, collector_port=own_broker.port, count=400)
    time.sleep(3)
    reset_at = time.monotonic()
    proxy.cut()  # a reset mid-stream: what was in flight is the agent's to send again
    detect_s = _logged_after(line.agent.log, r"MQTT connection lost", reset_at, 10)
    recover_s = recovered(line, time.monotonic())
    figures = finish(line, "agent-broker connection reset", detect_s=detect_s,
                     recover_s=recover_s, expected_alerts=set())  # fmt: skip
    assert detect_s is not None and detect_s < 1.0, detect_s
    assert figures.stored == 400 and proxy.connections >= 2


def test_half_open_link_between_agent_and_broker(
    chain: Chain, own_broker: Broker, proxy: FaultProxy
) -> None:
    count = int(RATE * (PARTITION_S + 15))
    line = chain(agent_port=proxy.port, collector_port=own_broker.port, count=count)
    time.sleep(3)
    cut_at = time.monotonic()
    proxy.blackhole()  # no FIN, no RST: the agent must find out by its keep-alive
    detect_s = _logged_after(line.agent.log, r"MQTT connection lost", cut_at, PARTITION_S)
    time.sleep(max(0.0, PARTITION_S - (time.monotonic() - cut_at)))
    acked_during = line.counters().acked
    proxy.heal()
    recover_s = recovered(line, time.monotonic())
    # The broker gives up on the silent agent after 1.5 keep-alives and sends its will:
    # TERMINAL_OFFLINE (cause NETWORK) is this fault, seen; anything else is false.
    figures = finish(line, f"agent-broker half-open {PARTITION_S:g} s", detect_s=detect_s,
                     recover_s=recover_s, expected_alerts={"TERMINAL_OFFLINE"},
                     notes=f"terminal kept going: {acked_during} acked by then")  # fmt: skip
    assert detect_s is not None and detect_s <= 2 * KEEPALIVE_S, detect_s
    assert figures.stored == count


def test_half_open_link_between_broker_and_collector(
    chain: Chain, own_broker: Broker, proxy: FaultProxy
) -> None:
    count = int(RATE * (PARTITION_S + 15))
    line = chain(agent_port=own_broker.port, collector_port=proxy.port, count=count)
    time.sleep(3)
    cut_at = time.monotonic()
    proxy.blackhole()
    detect_s = _logged_after(line.collector.log, r"MQTT connection lost", cut_at, PARTITION_S)
    time.sleep(max(0.0, PARTITION_S - (time.monotonic() - cut_at)))
    proxy.heal()
    recover_s = recovered(line, time.monotonic())
    figures = finish(line, f"broker-collector half-open {PARTITION_S:g} s", detect_s=detect_s,
                     recover_s=recover_s, expected_alerts=set())  # fmt: skip
    assert detect_s is not None and detect_s <= 2 * KEEPALIVE_S, detect_s
    assert figures.stored == count
