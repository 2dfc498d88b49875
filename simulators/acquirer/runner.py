"""The acquirer simulator's IO: terminal events in over MQTT, settlements out, files written.

A thin loop around `AcquirerCore`: it subscribes to every terminal's txn, status and batch
topics with a persistent session (events published while it is away wait at the broker),
feeds what arrives to the core at the clock's (virtual) time, and publishes the settlements
that come due on `{prefix}/settlements` at QoS 1. The same settlements go to the day's CSV
file, and the faults to the ground-truth file. One thread owns the MQTT client and the
core, so neither needs a lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime

from posmon.mqtt import Message, MqttClient, MqttError, Topics
from posmon.simclock import Clock
from posmon.wire.models import MessageError, SettlementEvent, parse_message
from simulators.acquirer.core import AcquirerCore
from simulators.acquirer.files import SettlementFiles, TruthLog

logger = logging.getLogger(__name__)

LOOP_TIMEOUT_S = 0.02


@dataclass(slots=True)
class RunSummary:
    """What a run did, for the closing line of `posmon simulate acquirer`."""

    counters: Counter[str] = field(default_factory=Counter)
    virtual_start: datetime | None = None
    virtual_end: datetime | None = None
    real_seconds: float = 0.0

    def as_dict(self) -> dict[str, str | int | float]:
        """Flat name/value pairs, counters sorted by name."""
        values: dict[str, str | int | float] = {}
        if self.virtual_start is not None and self.virtual_end is not None:
            values["virtual_start"] = self.virtual_start.isoformat(timespec="seconds")
            values["virtual_end"] = self.virtual_end.isoformat(timespec="seconds")
        values["real_seconds"] = round(self.real_seconds, 1)
        values.update(sorted(self.counters.items()))
        return values


class AcquirerRunner:
    """Runs an `AcquirerCore` against a broker until stopped (see the module docstring)."""

    def __init__(
        self,
        core: AcquirerCore,
        client: MqttClient,
        clock: Clock,
        *,
        topics: Topics | None = None,
        csv_files: SettlementFiles | None = None,
        truth: TruthLog | None = None,
    ) -> None:
        self.core = core
        self.client = client
        self.clock = clock
        self.topics = topics or Topics(client.settings.topic_prefix)
        self.csv_files = csv_files
        self.truth = truth
        self.counters: Counter[str] = Counter()
        self._backlog: deque[SettlementEvent] = deque()  # due while disconnected
        self._unacked: set[int] = set()
        client.on_connected = self._connected
        client.on_message = self._received
        client.on_published = self._published

    @property
    def subscriptions(self) -> list[str]:
        """Every terminal's txn, status and batch topics."""
        return [self.topics.terminal("+", kind) for kind in ("txn", "status", "batch")]

    def run(
        self, stop: threading.Event, duration: float | None = None, drain_s: float = 2.0
    ) -> RunSummary:
        """Work until `stop` is set or `duration` real seconds have passed; then drain."""
        summary = RunSummary(virtual_start=self.clock.now())
        started = time.monotonic()
        try:
            while not stop.is_set():
                if duration is not None and time.monotonic() - started >= duration:
                    break
                self.step()
            self._tick()
            self._drain(drain_s)
        finally:
            self.client.disconnect()
        summary.virtual_end = self.clock.now()
        summary.real_seconds = time.monotonic() - started
        summary.counters.update(self.core.counters)
        summary.counters.update(self.counters)
        summary.counters["open_settlements"] = self.core.open_settlements
        summary.counters["queued_settlements"] = self.core.queued_settlements
        if self.csv_files is not None:
            summary.counters["csv_rows"] = self.csv_files.rows
        return summary

    def step(self) -> None:
        """One turn: connect if due, network I/O (events reach the core), due settlements out."""
        self.client.connect_when_due()
        if not self.client.loop(LOOP_TIMEOUT_S):
            time.sleep(LOOP_TIMEOUT_S)
        self._tick()

    # --- internals ----------------------------------------------------------------------

    def _tick(self) -> None:
        step = self.core.advance(self.clock.now())
        if step.truth and self.truth is not None:
            self.truth.write(step.truth)
        if step.settlements:
            if self.csv_files is not None:
                self.csv_files.write(step.settlements)
            self._backlog.extend(step.settlements)
        while self._backlog and self.client.connected:
            settlement = self._backlog.popleft()
            try:
                mid = self.client.publish(self.topics.settlements, settlement.to_json())
            except MqttError as exc:
                self._backlog.appendleft(settlement)
                logger.warning("publish failed, will retry: %s", exc.reason)
                break
            self._unacked.add(mid)
            self.counters["published"] += 1

    def _drain(self, seconds: float) -> None:
        """Give queued and in-flight settlements `seconds` to reach the broker."""
        deadline = time.monotonic() + seconds
        while (self._backlog or self._unacked) and time.monotonic() < deadline:
            if not self.client.connected:
                break
            self.client.loop(LOOP_TIMEOUT_S)
            self._tick()
        unsent = len(self._backlog) + len(self._unacked)
        if unsent:
            logger.warning("%d settlements not acknowledged by the broker at exit", unsent)
        self.counters["unacknowledged"] = unsent

    def _connected(self, session_present: bool) -> None:
        self.client.subscribe(self.subscriptions)

    def _published(self, mid: int) -> None:
        self._unacked.discard(mid)

    def _received(self, message: Message) -> None:
        # Called from client.loop(): one bad message is logged, never fatal.
        try:
            event = parse_message(message.payload)
        except MessageError as exc:
            self.counters["invalid"] += 1
            logger.warning("dropping a message on %s: %s", message.topic, exc.reason)
            return
        try:
            self.core.receive(event, self.clock.now())
        except Exception:
            self.counters["errors"] += 1
            logger.exception("could not handle a message on %s", message.topic)
