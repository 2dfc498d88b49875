"""Scenario runs: the whole system on one accelerated clock, with faults injected on purpose.

A scenario file (TOML, see `docs/scenarios.md` and `scenarios/`) describes a fleet of
simulated terminals and what goes wrong with them (a link held down, a terminal that falls
silent, a batch never closed, a burst of declines), the merchants' settlement terms, and
what the acquirer simulator gets wrong (failed and returned credits, a bank outage, a
frozen merchant ...). `ScenarioRun` then starts, in this order:

1. a broker: a private mosquitto with posmon's configuration, the one `--broker` names,
   or with `--broker nats-cluster` a 3-node NATS cluster (JetStream, MQTT listeners) whose
   nodes the agents fail over between, the collector on its JetStream work queue;
2. the collector (in this process, SQLite in the run's folder) on the accelerated clock;
3. the acquirer simulator (in this process) on the same clock, writing its ground truth;
4. one pseudo-terminal per terminal and `posmon agent run` processes reading them;
5. the simulated terminals, sending for `traffic_s` seconds, then idling (status only)
   for `settle_s` more while deadlines pass and the acquirer pays, fails and returns.

What the scenario injected at the terminals is written to `terminal-truth.jsonl` beside
the acquirer's `ground-truth.jsonl`; `simulators.score` scores the collector's alerts
against both.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo

from pydantic import Field, model_validator

from posmon.config import ConfigError, RoleSettings, Section, load
from posmon.mqtt import MqttClient, MqttSettings
from posmon.simclock import SimClock
from posmon.wire.codec import APPROVED_CODES
from posmon.wire.models import Cause
from simulators.acquirer.core import AcquirerConfig, AcquirerCore
from simulators.acquirer.faults import FaultRates, Scenarios, parse_frozen, parse_outage
from simulators.acquirer.files import TruthLog
from simulators.acquirer.runner import AcquirerRunner
from simulators.acquirer.terms import (
    VOID_WINDOW,
    MerchantProfile,
    SettlementMode,
    SettlementTerms,
)
from simulators.broker import PrivateBroker
from simulators.messages import Message
from simulators.natscluster import NatsCluster
from simulators.pty import PtyLink
from simulators.stream import TrafficGenerator, TrafficProfile
from simulators.terminal import SimulatedTerminal, TerminalConfig

logger = logging.getLogger(__name__)

# `--broker nats-cluster`: a 3-node NATS cluster of the run's own (docs/scaling.md).
NATS_CLUSTER = "nats-cluster"
SHANGHAI = "Asia/Shanghai"
DEFAULT_MID = "898100012340001"


# --- the scenario file ------------------------------------------------------------------


class TimeSection(Section):
    """How long the run lasts, and how fast virtual time runs."""

    origin: datetime = Field(
        datetime(2026, 11, 23, 9, 0, tzinfo=ZoneInfo(SHANGHAI)),
        description="Virtual time at the start (a Monday morning by default).",
    )
    scale: float = Field(3600.0, gt=0, description="Virtual seconds per real second.")
    traffic_s: float = Field(30.0, gt=0, description="Real seconds the terminals trade.")
    settle_s: float = Field(40.0, ge=0, description="Real seconds after, for settlements.")

    @model_validator(mode="after")
    def _aware(self) -> Self:
        if self.origin.tzinfo is None:
            raise ValueError("origin needs a UTC offset")
        return self


class TerminalFaults(Section):
    """What goes wrong at one terminal; times are real seconds from the start."""

    silent_after_s: float | None = Field(
        None, gt=0, description="Falls silent (no message, no heartbeat): TERMINAL_OFFLINE."
    )
    link_down_from_s: float | None = Field(None, ge=0, description="Host link held down ...")
    link_down_for_s: float = Field(10.0, gt=0, description="... this long: HOST_LINK_DOWN.")
    decline_spike_from_s: float | None = Field(
        None, ge=0, description="Declines jump to `decline_spike_rate` from here on."
    )
    decline_spike_rate: float = Field(0.7, gt=0, le=1, description="Decline rate of a spike.")
    never_close_batch: bool = Field(False, description="No BAT ever: BATCH_NOT_CLOSED.")
    unbalanced: bool = Field(False, description="Every BAT closes UNBALANCED.")


class TerminalPlan(Section):
    """One terminal singled out by the scenario."""

    tid: str = Field(pattern=r"^[0-9A-Za-z]{8}$", description="Terminal id.")
    mid: str | None = Field(None, pattern=r"^[0-9A-Za-z]{15}$", description="Its merchant.")
    rate: float | None = Field(
        None, gt=0, le=50, description="Messages per second of this one; default the fleet's."
    )
    faults: TerminalFaults = Field(default_factory=TerminalFaults)


class FleetSection(Section):
    """The terminals: numbered from `first_tid`, given merchants in turn."""

    terminals: int = Field(4, ge=1, le=500, description="How many terminals.")
    agents: int = Field(1, ge=1, le=50, description="Agent processes; terminals shared out.")
    first_tid: int = Field(10000001, ge=10000000, le=99999999, description="First TID.")
    rate: float = Field(2.0, gt=0, le=50, description="Messages per second per terminal.")
    batch_size: int = Field(15, ge=1, description="Transactions per batch close.")
    decline_rate: float = Field(0.05, ge=0, le=1, description="Usual decline rate.")
    heartbeat_s: float = Field(5.0, gt=0, description="Heartbeat interval.")
    mids: list[str] = Field(default_factory=lambda: [DEFAULT_MID], min_length=1)
    seed: int = Field(1, description="Seed of the terminals' traffic.")
    close_at: clock_time | None = Field(
        clock_time(17, 0), description="Local time each terminal closes its batch daily ..."
    )
    reopen_at: clock_time = Field(
        clock_time(18, 0), description="... and sells again (after the cut-off)."
    )


class MerchantSpec(Section):
    """A merchant's terms, told to the acquirer simulator and to the collector alike."""

    mid: str = Field(pattern=r"^[0-9A-Za-z]{15}$", description="Merchant id.")
    mode: Literal["T1", "D0", "T0"] = Field("T1", description="Settlement mode.")
    fee_bp: int = Field(60, ge=0, le=10_000, description="Fee in basis points.")
    bank_code: str | None = Field(None, description="Settlement bank (default: derived).")
    t0_hours: float = Field(2.0, gt=0, le=48, description="T0 window.")


class AcquirerSection(Section):
    """What the acquirer simulator gets wrong."""

    seed: int = Field(7, description="Seed of the acquirer's fault draws.")
    rates: dict[str, float] = Field(
        default_factory=dict, description="FaultRates fields, e.g. account_failed = 0.05."
    )
    frozen: list[str] = Field(default_factory=list, description="MID[:CODE] frozen merchants.")
    bank_outages: list[str] = Field(
        default_factory=list, description="BANK@START/END after the origin, e.g. 0102@+2h/+8h."
    )
    outage_delay_share: float = Field(0.0, ge=0, le=1, description="Outage credits delayed.")
    cutoff: clock_time = Field(clock_time(18, 0), description="Cut-off, local time.")


class ScenarioFile(RoleSettings):
    """A whole scenario (see the module docstring)."""

    name: str = Field("scenario", description="Shown in the report.")
    time: TimeSection = Field(default_factory=TimeSection)
    fleet: FleetSection = Field(default_factory=FleetSection)
    terminal: list[TerminalPlan] = Field(default_factory=list)
    merchants: list[MerchantSpec] = Field(default_factory=list)
    acquirer: AcquirerSection = Field(default_factory=AcquirerSection)
    collector: dict[str, Any] = Field(
        default_factory=dict,
        description="Collector configuration on top (e.g. [collector.alerts]).",
    )

    @model_validator(mode="after")
    def _known_rates(self) -> Self:
        known = set(FaultRates.__dataclass_fields__)
        unknown = set(self.acquirer.rates) - known
        if unknown:
            raise ValueError(
                f"acquirer.rates: unknown {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        FaultRates(**{**_rate_defaults(), **self.acquirer.rates})  # ranges: ValueError
        return self

    def tids(self) -> list[str]:
        return [str(self.fleet.first_tid + n) for n in range(self.fleet.terminals)]

    def plan(self, tid: str) -> TerminalPlan:
        for plan in self.terminal:
            if plan.tid == tid:
                return plan
        return TerminalPlan(tid=tid)

    def void_window_s(self, tid: str) -> float | None:
        """How long the terminal's host lets it void a sale: its whole open batch (T1), or
        only until the acquirer pays the sale out on its own (D0, T0)."""
        mid = self.mid_of(tid)
        spec = next((m for m in self.merchants if m.mid == mid), None)
        if spec is None or spec.mode == "T1":
            return None
        return VOID_WINDOW.total_seconds()

    def mid_of(self, tid: str) -> str:
        plan = self.plan(tid)
        if plan.mid:
            return plan.mid
        index = self.tids().index(tid)
        return self.fleet.mids[index % len(self.fleet.mids)]


def _rate_defaults() -> dict[str, float]:
    return {"offline_lost": 1.0}


def load_scenario(path: Path) -> ScenarioFile:
    """Read a scenario file; `posmon.config.ConfigError` names the file and key."""
    scenario = load(ScenarioFile, path)
    unknown = set(scenario.collector) - {"alerts", "notify", "settlement", "ingest"}
    if unknown:
        raise ConfigError(
            f"{path}: [collector] takes alerts, notify, settlement, ingest; "
            f"not {', '.join(sorted(unknown))}"
        )
    return scenario


# --- what the scenario does at a terminal ---------------------------------------------


@dataclass(slots=True)
class TerminalTruth:
    """One injected terminal fault and the alert it should raise."""

    alert_type: str
    cause: Cause
    tid: str
    mid: str
    at_s: float  # real seconds from the start
    # What the terminal did that the rule needs (counted during the run), so the scorer
    # can tell a fault the run was too short to show from one the collector missed.
    evidence: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "alert_type": self.alert_type,
            "cause": self.cause.value,
            "tid": self.tid,
            "mid": self.mid,
            "at_s": self.at_s,
        }
        if self.evidence:
            found["evidence"] = self.evidence
        return found


_EXPECTS_MONEY = ("SALE", "PREAUTH_COMPLETION")  # what opens a batch at the collector


def cutoff_after(moment: datetime, cutoff: clock_time, zone: ZoneInfo) -> datetime:
    """The first cut-off after `moment` in `zone`: when the collector's BATCH_NOT_CLOSED
    rule judges a batch whose first sale was at `moment` (`AlertEngine._cutoff_after`)."""
    local = moment.astimezone(zone)
    at = datetime.combine(local.date(), cutoff, zone)
    return at if at > local else at + timedelta(days=1)


def terminal_truth(scenario: ScenarioFile) -> list[TerminalTruth]:
    """The alerts the terminal faults of a scenario should raise."""
    found: list[TerminalTruth] = []
    for tid in scenario.tids():
        faults, mid = scenario.plan(tid).faults, scenario.mid_of(tid)
        if faults.silent_after_s is not None:
            found.append(
                TerminalTruth("TERMINAL_OFFLINE", Cause.NETWORK, tid, mid, faults.silent_after_s)
            )
        if faults.link_down_from_s is not None:
            found.append(
                TerminalTruth("HOST_LINK_DOWN", Cause.NETWORK, tid, mid, faults.link_down_from_s)
            )
        if faults.decline_spike_from_s is not None:
            found.append(
                TerminalTruth("DECLINE_SPIKE", Cause.UNKNOWN, tid, mid, faults.decline_spike_from_s)
            )
        if faults.never_close_batch:
            found.append(TerminalTruth("BATCH_NOT_CLOSED", Cause.OPERATOR, tid, mid, 0.0))
        if faults.unbalanced:
            found.append(TerminalTruth("BATCH_UNBALANCED", Cause.OPERATOR, tid, mid, 0.0))
    return found


class ScenarioSource:
    """A terminal's traffic with the scenario's faults applied at their times.

    Like a shop, the terminal closes its batch every day when `hours` (local closing time
    and reopening time) begins, before the settlement cut-off, and sells nothing until it
    ends; its traffic also closes a batch whenever one fills up. On a fast clock a
    terminal's messages can be further apart (in virtual time) than its closing hours are
    long: it then closes at its last message before closing time, as a shop closing early,
    rather than miss the day's close.
    """

    def __init__(
        self,
        generator: TrafficGenerator,
        faults: TerminalFaults,
        traffic_s: float,
        elapsed: Callable[[], float],
        hours: tuple[clock_time, clock_time] | None = None,
    ) -> None:
        self.generator = generator
        self.faults = faults
        self.traffic_s = traffic_s
        self.elapsed = elapsed
        self.hours = hours
        self._closed_at_end = False
        self._closed_day: date | None = None
        self._previous: datetime | None = None
        # Evidence for the scorer (see TerminalTruth.evidence).
        self.txns_before_spike = 0
        self.txns_in_spike = 0
        self.approved_sales = 0
        # The first approved sale (or completion): elapsed real seconds and virtual time.
        # The collector judges a batch at the cut-off after its first sale.
        self.first_sale: tuple[float, datetime] | None = None
        self.batch_closes = 0
        self.link_down_first: float | None = None  # elapsed at the first LINK=DOWN sent
        self.link_down_seen_s = 0.0  # ... to the first LINK=UP after it

    def evidence(self, alert_type: str, elapsed: float) -> dict[str, float]:
        """What this terminal did towards the alert its fault should raise."""
        if alert_type == "DECLINE_SPIKE":
            return {"txns_before": self.txns_before_spike, "txns_during": self.txns_in_spike}
        if alert_type == "HOST_LINK_DOWN":
            seen = self.link_down_seen_s
            if self.link_down_first is not None and not seen:
                seen = elapsed - self.link_down_first  # still down at the end
            return {"link_down_seen_s": round(seen, 2)}
        if alert_type == "BATCH_NOT_CLOSED":
            return {"approved_sales": self.approved_sales}
        if alert_type == "BATCH_UNBALANCED":
            return {"batch_closes": self.batch_closes}
        return {}

    def _count(self, message: Message | None, t: float, now: datetime) -> Message | None:
        if message is None:
            return None
        if message.type == "TXN":
            fields = message.fields
            approved = fields.get("RC") in APPROVED_CODES
            if fields.get("KIND") == "SALE" and approved:
                self.approved_sales += 1
            if approved and fields.get("KIND") in _EXPECTS_MONEY and self.first_sale is None:
                self.first_sale = (t, now)
            spike = self.faults.decline_spike_from_s
            if spike is not None:
                if t < spike:
                    self.txns_before_spike += 1
                else:
                    self.txns_in_spike += 1
        elif message.type == "BAT":
            self.batch_closes += 1
        elif message.type == "STS":
            down = message.fields.get("LINK") == "DOWN"
            if down and self.link_down_first is None:
                self.link_down_first = t
            elif not down and self.link_down_first is not None and not self.link_down_seen_s:
                self.link_down_seen_s = t - self.link_down_first
        return message

    def next_message(self, now: datetime) -> Message | None:
        t = self.elapsed()
        return self._count(self._next(now, t), t, now)

    def _next(self, now: datetime, t: float) -> Message | None:
        faults = self.faults
        silent = faults.silent_after_s is not None and t >= faults.silent_after_s
        if silent or t >= self.traffic_s:
            # Trading is over (or the terminal is switched off): close the batch once;
            # then an idle terminal reports its status, a switched-off one nothing at all.
            closing = self._close_once(now)
            if closing is not None or silent:
                return closing
            return self.generator.status(now)
        if self.hours is not None and self._closing(now):
            # Closing time: the day's batch is closed, then no sales until the cut-off.
            local = now.astimezone(self.generator.tz)
            if self._closed_day != local.date():
                self._closed_day = local.date()
                closing = self.close_batch(now)
                if closing is not None:
                    return closing
            return self.generator.status(now)
        if faults.link_down_from_s is not None:
            start = faults.link_down_from_s
            self.generator.hold_link_down(start <= t < start + faults.link_down_for_s)
        if faults.decline_spike_from_s is not None and t >= faults.decline_spike_from_s:
            self.generator.decline_rate = faults.decline_spike_rate
        message = self.generator.next_message(now)
        if message.type == "BAT" and faults.never_close_batch:
            return self.generator.status(now)
        return message

    def _closing(self, now: datetime) -> bool:
        """Closed for the day now, or the next message would come after closing time."""
        assert self.hours is not None
        step = now - self._previous if self._previous is not None else None
        self._previous = now
        tz = self.generator.tz
        local = now.astimezone(tz)
        close = datetime.combine(local.date(), self.hours[0], tzinfo=tz)
        reopen = datetime.combine(local.date(), self.hours[1], tzinfo=tz)
        if close <= local < reopen:
            return True
        if self._closed_day == local.date() and local < reopen:
            return True  # closed early today
        return step is not None and local < close <= local + step

    def _close_once(self, now: datetime) -> Message | None:
        if self._closed_at_end:
            return None
        self._closed_at_end = True
        return self.close_batch(now)

    def close_batch(self, now: datetime) -> Message | None:
        if self.faults.never_close_batch:
            return None
        return self.generator.close_batch(now)


# --- the run ----------------------------------------------------------------------------


@dataclass(slots=True)
class RunFiles:
    """What a run leaves in its folder."""

    folder: Path
    database: Path
    ground_truth: Path
    terminal_truth: Path
    report: Path
    logs: Path

    @classmethod
    def fresh(cls, folder: Path) -> RunFiles:
        """The run's files in `folder`, with those of an earlier run there removed."""
        logs = folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        files = cls(
            folder=folder,
            database=folder / "posmon.db",
            ground_truth=folder / "ground-truth.jsonl",
            terminal_truth=folder / "terminal-truth.jsonl",
            report=folder / "report.json",
            logs=logs,
        )
        for stale in (files.database, files.ground_truth, files.terminal_truth, files.report):
            for suffix in ("", "-wal", "-shm"):
                stale.with_name(stale.name + suffix).unlink(missing_ok=True)
        for log in logs.glob("*.log"):
            log.unlink()
        # An earlier run's broker sessions and agent outboxes would replay into this one.
        for state in (folder / "broker", folder / "nats", *folder.glob("agent*")):
            shutil.rmtree(state, ignore_errors=True)
        return files


@dataclass(slots=True)
class ScenarioRun:
    """Runs one scenario (see the module docstring); `run()` returns when it is over."""

    scenario: ScenarioFile
    folder: Path
    broker_url: str | None = None
    # The collector's [metrics] section (url, database ...): the run's metrics to InfluxDB.
    metrics: dict[str, Any] | None = None
    on_tick: Callable[[ScenarioRun, float], None] = lambda run, elapsed: None
    stop: threading.Event = field(default_factory=threading.Event)
    prefix: str = field(default_factory=lambda: f"posmon/sim-{uuid.uuid4().hex[:8]}")
    files: RunFiles | None = None
    collector: Any = None
    started: float = 0.0
    acquirer: AcquirerRunner | None = None
    terminals: list[SimulatedTerminal] = field(default_factory=list)
    sources: dict[str, ScenarioSource] = field(default_factory=dict)
    virtual_end: datetime | None = None  # the virtual time the run stopped at
    run_s: float | None = None  # real seconds from the fleet's start to the end

    def run(self) -> RunFiles:
        """Start everything, run the traffic and the settle phase, stop everything."""
        from collector.service import Collector  # noqa: PLC0415 - the collector's stack

        folder = self.folder
        files = self.files = RunFiles.fresh(folder)
        scenario = self.scenario
        stack: list[Callable[[], None]] = []
        collector_stopper: Callable[[], None] | None = None
        try:
            mqtt, cluster = self._start_broker(stack)
            anchor = datetime.now(UTC)
            clock = SimClock(scenario.time.origin, scenario.time.scale, anchor)
            config = collector_config(scenario, mqtt, files.database, anchor, metrics=self.metrics)
            if cluster is not None:  # the collector takes JetStream's work queue
                config = on_nats(config, cluster)
            self.collector = Collector(config)
            collector_stop = threading.Event()
            collector_thread = threading.Thread(
                target=self.collector.run, args=(collector_stop,), name="collector", daemon=True
            )
            collector_thread.start()

            def stop_collector() -> None:
                collector_stop.set()
                collector_thread.join(30)

            stack.append(stop_collector)
            collector_stopper = stop_collector
            self._start_acquirer(mqtt, clock, files, stack)
            self._wait_subscribed(mqtt)
            files.terminal_truth.write_text(
                "".join(json.dumps(t.as_dict()) + "\n" for t in terminal_truth(scenario))
            )
            self.started = time.monotonic()
            self._start_fleet(mqtt, clock, folder, stack)
            self._until_done()
            self.virtual_end = clock.now()
            self.run_s = self.elapsed()
            self._write_terminal_truth(files)
        finally:
            # The collector goes first: agents saying goodbye are no terminals going offline.
            if collector_stopper is not None:
                stack.remove(collector_stopper)
                collector_stopper()
            for undo in reversed(stack):
                try:
                    undo()
                except Exception:
                    logger.exception("stopping a part of the scenario failed")
        return files

    def _start_broker(
        self, stack: list[Callable[[], None]]
    ) -> tuple[MqttSettings, NatsCluster | None]:
        """The run's broker (its stop on `stack`): client settings, and the NATS cluster
        when it is one."""
        if self.broker_url == NATS_CLUSTER:
            cluster = NatsCluster(self.folder / "nats", 3)
            stack.append(cluster.stop)
            cluster.start()
            return nats_mqtt_settings(cluster, self.prefix), cluster
        if self.broker_url is None:
            broker = PrivateBroker(self.folder / "broker")
            broker.start()
            stack.append(broker.stop)
            return broker.settings(self.prefix), None
        return mqtt_settings(self.broker_url, self.prefix), None

    def _write_terminal_truth(self, files: RunFiles) -> None:
        """The terminal faults again, each with what its terminal did towards its alert."""
        faults = terminal_truth(self.scenario)
        elapsed = self.elapsed()
        zone = ZoneInfo(self.collector.config.settlement.timezone)
        for fault in faults:
            source = self.sources.get(fault.tid)
            if source is not None:
                fault.evidence = source.evidence(fault.alert_type, elapsed)
                if fault.alert_type == "BATCH_NOT_CLOSED" and source.first_sale is not None:
                    # When the collector can first tell: the cut-off after the batch's first
                    # sale (a batch opened after the day's cut-off is due at the next one).
                    at_s, moment = source.first_sale
                    due = cutoff_after(moment, self.scenario.acquirer.cutoff, zone)
                    late_s = (due - moment).total_seconds() / self.scenario.time.scale
                    fault.evidence["due_s"] = round(at_s + late_s, 2)
        files.terminal_truth.write_text("".join(json.dumps(t.as_dict()) + "\n" for t in faults))

    def elapsed(self) -> float:
        return time.monotonic() - self.started if self.started else 0.0

    def _until_done(self) -> None:
        """Tick until the scenario's time is up or `stop` is set."""
        total = self.scenario.time.traffic_s + self.scenario.time.settle_s
        while not self.stop.is_set():
            elapsed = self.elapsed()
            if elapsed >= total:
                break
            self.on_tick(self, elapsed)
            self.stop.wait(min(1.0, total - elapsed))
        self.on_tick(self, self.elapsed())

    def _start_acquirer(
        self,
        mqtt: MqttSettings,
        clock: SimClock,
        files: RunFiles,
        stack: list[Callable[[], None]],
    ) -> None:
        core = AcquirerCore(acquirer_config(self.scenario), seed=self.scenario.acquirer.seed)
        client = MqttClient(mqtt, f"posmon-acquirer-{self.prefix.rsplit('-', 1)[-1]}")
        truth = TruthLog(files.ground_truth)
        self.acquirer = AcquirerRunner(core, client, clock, truth=truth)
        stop = threading.Event()
        thread = threading.Thread(
            target=self.acquirer.run, args=(stop,), name="acquirer", daemon=True
        )
        thread.start()

        def halt() -> None:
            stop.set()
            thread.join(30)
            truth.close()

        stack.append(halt)

    def _wait_subscribed(self, mqtt: MqttSettings, timeout: float = 20.0) -> None:
        """Until the collector and the acquirer hold their subscriptions."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ingest = self.collector.ingestor.connected
            acquirer = self.acquirer is not None and self.acquirer.client.connected
            if ingest and acquirer:
                time.sleep(0.3)  # the SUBACKs follow the CONNACKs
                return
            time.sleep(0.05)
        raise RuntimeError(f"collector or acquirer could not connect to {mqtt.host}:{mqtt.port}")

    def _start_fleet(
        self, mqtt: MqttSettings, clock: SimClock, folder: Path, stack: list[Callable[[], None]]
    ) -> None:
        scenario, fleet = self.scenario, self.scenario.fleet
        tids = scenario.tids()
        (folder / "tty").mkdir(exist_ok=True)
        links = {tid: PtyLink(folder / "tty" / f"ttyPOS{tid}") for tid in tids}

        def close_links() -> None:
            for link in links.values():
                link.close()

        stack.append(close_links)
        agents: list[subprocess.Popen[bytes]] = []
        for index in range(fleet.agents):
            mine = tids[index :: fleet.agents]
            if not mine:
                continue
            agents.append(self._start_agent(index, mine, links, mqtt, folder))

        def stop_agents() -> None:
            for process in agents:
                process.terminate()
            for process in agents:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()

        stack.append(stop_agents)
        for n, tid in enumerate(tids):
            plan = scenario.plan(tid)
            profile = TrafficProfile(
                mid=scenario.mid_of(tid),
                batch_size=fleet.batch_size,
                decline_rate=fleet.decline_rate,
                link_flap=0.0,  # the link goes down only where the scenario says
                unbalanced=1.0 if plan.faults.unbalanced else 0.0,
                void_window_s=scenario.void_window_s(tid),
            )
            generator = TrafficGenerator(tid, profile, seed=fleet.seed * 1000 + n)
            source = ScenarioSource(
                generator,
                plan.faults,
                scenario.time.traffic_s,
                self.elapsed,
                (fleet.close_at, fleet.reopen_at) if fleet.close_at else None,
            )
            self.sources[tid] = source
            terminal = SimulatedTerminal(
                links[tid],
                source,
                TerminalConfig(
                    tid=tid,
                    rate=plan.rate or fleet.rate,
                    heartbeat_interval=fleet.heartbeat_s,
                    seed=n,
                    reader_wait=30.0,
                ),
                wall_clock=clock.now,
            )
            self.terminals.append(terminal)
            terminal.start(close_batch=False)

        def stop_terminals() -> None:
            for terminal in self.terminals:
                terminal.stop()

        stack.append(stop_terminals)

    def _start_agent(
        self,
        index: int,
        tids: list[str],
        links: dict[str, PtyLink],
        mqtt: MqttSettings,
        folder: Path,
    ) -> subprocess.Popen[bytes]:
        workdir = folder / f"agent{index + 1}"
        workdir.mkdir(parents=True, exist_ok=True)
        ports = "".join(f'[[ports]]\nname = "{tid}"\nurl = "{links[tid].path}"\n' for tid in tids)
        config = workdir / "agent.toml"
        config.write_text(
            f'[agent]\nid = "sim-agent-{index + 1}"\nstate_dir = "{workdir / "state"}"\n'
            f"{ports}"
            f'[mqtt]\nhost = "{mqtt.host}"\nport = {mqtt.port}\nhosts = {json.dumps(mqtt.hosts)}\n'
            f'topic_prefix = "{mqtt.topic_prefix}"\nreconnect_min_s = 0.2\nreconnect_max_s = 2.0\n'
        )
        posmon = Path(sys.executable).parent / "posmon"
        log = (folder / "logs" / f"agent{index + 1}.log").open("ab")
        try:
            return subprocess.Popen(
                [str(posmon), "agent", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()


def on_nats(config: Any, cluster: NatsCluster) -> Any:
    """A collector configuration taking the cluster's JetStream work queue."""
    from collector.config import NatsSection  # noqa: PLC0415 - the collector's stack

    return config.model_copy(
        update={
            "ingest": config.ingest.model_copy(update={"source": "nats"}),
            "nats": NatsSection(servers=cluster.nats_urls),
        }
    )


def nats_mqtt_settings(cluster: NatsCluster, prefix: str) -> MqttSettings:
    """Client settings for every node's MQTT listener of `cluster`, in turn."""
    return MqttSettings(
        host="127.0.0.1",
        port=cluster.nodes[0].mqtt_port,
        hosts=[f"127.0.0.1:{node.mqtt_port}" for node in cluster.nodes],
        topic_prefix=prefix,
        reconnect_min_s=0.2,
        reconnect_max_s=2.0,
    )


def mqtt_settings(url: str, prefix: str) -> MqttSettings:
    """`mqtt://host:port` (or `host:port`) as client settings under `prefix`."""
    text = url.removeprefix("mqtt://").rstrip("/")
    host, _, port = text.partition(":")
    return MqttSettings(
        host=host or "127.0.0.1",
        port=int(port or 1883),
        topic_prefix=prefix,
        reconnect_min_s=0.2,
        reconnect_max_s=2.0,
    )


def collector_config(
    scenario: ScenarioFile,
    mqtt: MqttSettings,
    database: Path,
    anchor: datetime,
    *,
    metrics: dict[str, Any] | None = None,
) -> Any:
    """The collector's configuration: the scenario's merchants and clock, SQLite, no HTTP,
    and `metrics` as its [metrics] section (none: no metrics)."""
    from collector.config import CollectorConfig  # noqa: PLC0415

    merchants = [
        {
            "mid": spec.mid,
            "mode": spec.mode,
            "fee_bp": spec.fee_bp,
            "t0_hours": spec.t0_hours,
            "cutoff": scenario.acquirer.cutoff,
        }
        for spec in scenario.merchants
    ]
    settlement = {
        "fee_bp": 60,
        "cutoff": scenario.acquirer.cutoff,
        **scenario.collector.get("settlement", {}),
    }
    for frozen in scenario.acquirer.frozen:
        mid = frozen.split(":", 1)[0]
        found = next((m for m in merchants if m["mid"] == mid), None)
        # The acquirer tells its merchants' status; a frozen one is known to be frozen.
        if found is None:
            merchants.append({"mid": mid, "status": "frozen"})
        else:
            found["status"] = "frozen"
    return CollectorConfig.model_validate(
        {
            "collector": {"id": "scenario"},
            "database": {"url": f"sqlite:///{database}"},
            "mqtt": mqtt.model_dump(),
            "http": {"enabled": False},
            "settlement": settlement,
            "merchants": merchants,
            "clock": {
                "scale": scenario.time.scale,
                "origin": scenario.time.origin,
                "anchor": anchor,
            },
            "alerts": scenario.collector.get("alerts", {}),
            "notify": scenario.collector.get("notify", {}),
            "ingest": scenario.collector.get("ingest", {}),
            "metrics": metrics or {},
        }
    )


def acquirer_config(scenario: ScenarioFile) -> AcquirerConfig:
    """The acquirer simulator's configuration from the scenario."""
    terms = SettlementTerms(cutoff=scenario.acquirer.cutoff)
    merchants = tuple(
        MerchantProfile.derive(
            spec.mid,
            SettlementTerms(
                mode=SettlementMode(spec.mode),
                cutoff=scenario.acquirer.cutoff,
                t0_hours=spec.t0_hours,
                fee_bp=spec.fee_bp,
            ),
            spec.bank_code,
        )
        for spec in scenario.merchants
    )
    origin = scenario.time.origin
    return AcquirerConfig(
        terms=terms,
        merchants=merchants,
        rates=FaultRates(**{**_rate_defaults(), **scenario.acquirer.rates}),
        scenarios=Scenarios(
            frozen=tuple(parse_frozen(item) for item in scenario.acquirer.frozen),
            outages=tuple(
                parse_outage(item, origin, scenario.acquirer.outage_delay_share)
                for item in scenario.acquirer.bank_outages
            ),
        ),
        tz=ZoneInfo(SHANGHAI),
    )
