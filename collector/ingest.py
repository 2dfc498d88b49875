"""MQTT ingest: receive, validate, store in batches, and only then acknowledge.

The client runs with manual acknowledgement: a message is acked after the database
transaction holding it has committed, so a collector killed at any moment loses nothing:
the broker redelivers what was not acked, and the store drops the repeats by event id.
A payload that is not a valid contract message for its topic is dead-lettered (stored,
published on the dead-letter topic, counted) and acked: it would never become valid.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from collector.config import IngestSection
from collector.store import IngestReport, OutcomeChange, Store, new_deadletter
from posmon.mqtt import Message, MqttClient, Topics
from posmon.wire.models import (
    BatchEvent,
    DeadLetter,
    MessageError,
    PresenceEvent,
    SettlementEvent,
    StatusEvent,
    TxnEvent,
    WireMessage,
    parse_message,
)

logger = logging.getLogger(__name__)

LOOP_TIMEOUT_S = 0.01


def subscriptions(topics: Topics, shared_group: str | None) -> dict[str, type[WireMessage]]:
    """Topic filter -> the one message model allowed on it."""
    plain: dict[str, type[WireMessage]] = {
        topics.terminal("+", "txn"): TxnEvent,
        topics.terminal("+", "status"): StatusEvent,
        topics.terminal("+", "batch"): BatchEvent,
        topics.presence("+"): PresenceEvent,
        topics.settlements: SettlementEvent,
        topics.deadletter: DeadLetter,
    }
    if shared_group is None:
        return plain
    return {f"$share/{shared_group}/{topic}": model for topic, model in plain.items()}


def _model_for(topic: str, topics: Topics) -> type[WireMessage] | None:
    parts = topic.removeprefix(topics.prefix + "/").split("/")
    if len(parts) == 3 and parts[0] == "terminals":
        by_kind: dict[str, type[WireMessage]] = {
            "txn": TxnEvent,
            "status": StatusEvent,
            "batch": BatchEvent,
        }
        return by_kind.get(parts[2])
    if len(parts) == 3 and parts[0] == "agents" and parts[2] == "presence":
        return PresenceEvent
    if parts == ["settlements"]:
        return SettlementEvent
    if parts == ["deadletter"]:
        return DeadLetter
    return None


class Ingestor:
    """One MQTT session feeding the store; runs in the thread that calls `run()`."""

    def __init__(
        self,
        store: Store,
        client: MqttClient,
        topics: Topics,
        settings: IngestSection,
        *,
        on_changes: Callable[[list[OutcomeChange]], None] = lambda changes: None,
        source: str = "collector",
    ) -> None:
        self.store = store
        self.client = client
        self.topics = topics
        self.settings = settings
        self.on_changes = on_changes
        self.source = source
        self.filters = list(subscriptions(topics, settings.shared_group))
        self.counters: Counter[str] = Counter()
        self.last_lag_s: float | None = None
        self._pending: list[Message] = []
        self._oldest = 0.0
        client.on_message = self._received
        client.on_connected = self._connected

    def run(self, stop: threading.Event) -> None:
        """Receive and store until `stop` is set; what is pending is stored and acked."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                # One bad turn must not end ingest: what was not acked comes again.
                logger.exception("ingest: unexpected error; carrying on")
                stop.wait(LOOP_TIMEOUT_S * 10)
            if not self.client.connected and not self._pending:
                stop.wait(LOOP_TIMEOUT_S * 5)
        self.flush()
        self.client.disconnect()

    def step(self) -> None:
        """One turn: connect if due, network I/O, flush a full or old batch."""
        self.client.connect_when_due()
        self.client.loop(LOOP_TIMEOUT_S)
        if self._pending and (
            len(self._pending) >= self.settings.batch_size
            or time.monotonic() - self._oldest >= self.settings.batch_wait_ms / 1000
        ):
            self.flush()

    def flush(self) -> IngestReport | None:
        """Validate and store the pending messages in one transaction, then ack them."""
        if not self._pending:
            return None
        batch, self._pending = self._pending, []
        valid: list[WireMessage] = []
        letters: list[DeadLetter] = []
        for message in batch:
            parsed = self._parse(message)
            if (
                isinstance(parsed, DeadLetter)
                and _model_for(message.topic, self.topics) is not DeadLetter
            ):
                letters.append(parsed)
            valid.append(parsed)
        try:
            report = self.store.ingest(valid, source="mqtt")
        except Exception:
            # Nothing is acked: the broker redelivers the batch after a reconnect.
            logger.exception("could not store a batch of %d messages; reconnecting", len(batch))
            self.client.disconnect()
            return None
        for message in batch:
            self.client.ack(message)
        for letter in letters:
            self.client.publish(self.topics.deadletter, letter.to_json())
        self._count(report, batch, letters)
        observed = [
            m.observed_at for m in valid if isinstance(m, TxnEvent | StatusEvent | BatchEvent)
        ]
        if observed:
            self.last_lag_s = (datetime.now(UTC) - max(observed)).total_seconds()
        if report.changes:
            self.on_changes(report.changes)
        return report

    def _parse(self, message: Message) -> WireMessage:
        expected = _model_for(message.topic, self.topics)
        try:
            if expected is None:
                raise MessageError(
                    f"no posmon message belongs on topic {message.topic}", message.payload
                )
            return parse_message(message.payload, expected=expected)
        except MessageError as exc:
            logger.warning("dead letter from %s: %s", message.topic, exc.reason)
            return new_deadletter(self.source, exc.reason, message.payload, message.topic)

    def _count(self, report: IngestReport, batch: list[Message], letters: list[DeadLetter]) -> None:
        self.counters["received"] += len(batch)
        self.counters["deadletters"] += len(letters)
        self.counters["batches"] += 1
        for kind, count in report.stored.items():
            self.counters[f"stored.{kind}"] += count
        for kind, count in report.repeats.items():
            self.counters[f"repeats.{kind}"] += count

    def _received(self, message: Message) -> None:
        if not self._pending:
            self._oldest = time.monotonic()
        self._pending.append(message)

    def _connected(self, session_present: bool) -> None:
        self.client.subscribe(self.filters)
        logger.info("subscribed to %s", ", ".join(self.filters))
