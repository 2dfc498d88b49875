"""MQTT ingest: receive, validate, store in batches, and only then acknowledge.

The client runs with manual acknowledgement: a message is acked once the database
transaction holding it is on disk, so a collector killed at any moment loses nothing:
the broker redelivers what was not acked, and the store drops the repeats by event id.

Batches are stored by one worker thread while this thread goes on receiving the next:
the database's own work (SQLite's B-trees and WAL, PostgreSQL's round trips) runs without
the GIL, so it overlaps with MQTT and validation instead of adding to them. One batch is
stored at a time, in the order received, and the alert engine is woken at its commit.
On PostgreSQL that commit does not wait for the disk: a second worker waits for it
(`Store.sync()`, one wait for every batch committed meanwhile), and only then are the
batches acked, in order, and their dead letters published. A flush that takes the disk
half a second delays those acks, not the next batch nor the alerts.
A payload that is not a valid contract message for its topic is dead-lettered (stored,
published on the dead-letter topic, counted) and acked: it would never become valid.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from collector.config import IngestSection
from collector.store import IngestReport, OutcomeChange, Store, new_deadletter
from posmon.mqtt import Message, MqttClient, MqttError, Topics
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
# While a batch is being stored or synced: how long network I/O may wait for data before
# the commit or the sync is looked at again (the acks wait at most this long).
STORING_LOOP_TIMEOUT_S = 0.001


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


@dataclass(slots=True)
class _Batch:
    """Messages handed to the store, with what their commit is awaited by."""

    messages: list[Message]
    valid: list[WireMessage]
    letters: list[DeadLetter]
    stored: Future[IngestReport]
    stale: bool = False  # given up on (a reconnect): stored, never acked nor counted


@dataclass(slots=True)
class _Sync:
    """Committed batches waiting for one `Store.sync()` before they are acked."""

    batches: list[tuple[_Batch, IngestReport]]
    done: Future[None]


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
        self.on_changes = on_changes  # called on the store's worker thread, at the commit
        self.source = source
        self.filters = list(subscriptions(topics, settings.shared_group))
        self.counters: Counter[str] = Counter()
        self.last_lag_s: float | None = None
        self._pending: list[Message] = []
        self._oldest = 0.0
        self._urgent = False  # a settlement is pending
        self._settlements = topics.settlements
        self._storing: _Batch | None = None
        self._worker: ThreadPoolExecutor | None = None
        # Committed, not yet known to be on disk (PostgreSQL): waiting for the next sync,
        # and the sync under way.
        self._unsynced: list[tuple[_Batch, IngestReport]] = []
        self._syncing: _Sync | None = None
        self._syncer: ThreadPoolExecutor | None = None
        client.on_message = self._received
        client.on_connected = self._connected

    def run(self, stop: threading.Event) -> None:
        """Receive and store until `stop` is set; what is pending is stored and acked."""
        try:
            while not stop.is_set():
                try:
                    self.step()
                except Exception:
                    # One bad turn must not end ingest: what was not acked comes again.
                    logger.exception("ingest: unexpected error; carrying on")
                    stop.wait(LOOP_TIMEOUT_S * 10)
                if not self.client.connected and not self._pending and not self._busy:
                    stop.wait(LOOP_TIMEOUT_S * 5)
            self.flush()
        finally:
            for worker in (self._worker, self._syncer):
                if worker is not None:
                    worker.shutdown(wait=True)
            self._worker = self._syncer = None
        self.client.disconnect()

    @property
    def _busy(self) -> bool:
        return self._storing is not None or self._syncing is not None

    def step(self) -> None:
        """One turn: connect if due, network I/O, take a commit and a sync that are done,
        hand on the next batch and the next sync."""
        self.client.connect_when_due()
        self.client.loop(STORING_LOOP_TIMEOUT_S if self._busy else LOOP_TIMEOUT_S)
        if self._storing is not None and self._storing.stored.done():
            self._committed(self._storing)
        if self._syncing is not None and self._syncing.done.done():
            self._synced(self._syncing)
        if self._syncing is None and self._unsynced:
            self._syncing = self._sync()
        if (
            self._storing is None
            and self._pending
            and (
                len(self._pending) >= self.settings.batch_size
                or self._urgent
                or time.monotonic() - self._oldest >= self.settings.batch_wait_ms / 1000
            )
        ):
            self._storing = self._submit()

    def flush(self) -> IngestReport | None:
        """Store what is pending and wait for it: acked (or, failing, left unacked) on return."""
        report = None
        if self._storing is not None:
            report = self._committed(self._storing)
        if self._pending:
            report = self._committed(self._submit())
        if self._syncing is not None:
            self._synced(self._syncing)
        if self._unsynced:
            self._synced(self._sync())
        return report

    def _submit(self) -> _Batch:
        """Validate the pending messages and hand them to the worker, to store in one go."""
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
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-store")
        stored = self._worker.submit(self._store, valid)
        return _Batch(batch, valid, letters, stored)

    def _store(self, valid: list[WireMessage]) -> IngestReport:
        """On the worker: store a batch; its outcome changes are reported at the commit
        from here, not when this thread next looks (the alert engine wakes a turn sooner)."""
        report = self.store.ingest(valid, "mqtt", durable=False)
        if report.changes:
            try:
                self.on_changes(report.changes)
            except Exception:  # the batch is stored: it must not be taken for a failed one
                logger.exception("reporting %d outcome changes failed", len(report.changes))
        return report

    def _committed(self, batch: _Batch) -> IngestReport | None:
        """Wait for a batch's commit; ack it now if it is on disk, or after the next sync."""
        self._storing = None
        try:
            report = batch.stored.result()
        except Exception:
            if batch.stale:  # given up on already: its messages come again
                logger.warning("a batch given up on could not be stored either")
                return None
            logger.exception(
                "could not store a batch of %d messages; reconnecting", len(batch.messages)
            )
            self._drop_unacked()
            return None
        if batch.stale:
            return report
        if self.store.sync_needed:
            self._unsynced.append((batch, report))
        else:
            self._ack(batch, report)
            self._publish_letters(batch)
        return report

    def _sync(self) -> _Sync:
        """Hand the committed batches to the syncer: on disk when its `done` is."""
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-sync")
        batches, self._unsynced = self._unsynced, []
        return _Sync(batches, self._syncer.submit(self.store.sync))

    def _synced(self, sync: _Sync) -> None:
        """Wait for a sync, then ack its batches in the order they were stored."""
        self._syncing = None
        try:
            sync.done.result()
        except Exception:
            logger.exception(
                "could not make sure %d stored batches are on disk; reconnecting",
                len(sync.batches),
            )
            self._drop_unacked()
            return
        for batch, report in sync.batches:
            self._ack(batch, report)
        for batch, _ in sync.batches:
            self._publish_letters(batch)

    def _drop_unacked(self) -> None:
        """Reconnect, acking nothing more: the broker redelivers every message not acked,
        those received and not yet stored included (dropped here, as never acked), and
        the store drops the repeats of what was stored after all."""
        self._pending = []
        self._unsynced = []
        if self._syncing is not None:
            self._syncing.batches.clear()
        if self._storing is not None:
            self._storing.stale = True
        self.client.disconnect()

    def _ack(self, batch: _Batch, report: IngestReport) -> None:
        """A batch on disk: ack it and count it. (The client acks nothing that came on an
        earlier connection: the broker has sent those again, and their copies are acked.)"""
        self.client.ack_all(batch.messages)
        self._count(report, batch.messages, batch.letters)
        observed = [
            m.observed_at for m in batch.valid if isinstance(m, TxnEvent | StatusEvent | BatchEvent)
        ]
        if observed:
            self.last_lag_s = (datetime.now(UTC) - max(observed)).total_seconds()

    def _publish_letters(self, batch: _Batch) -> None:
        """Publish a stored batch's dead letters (each one is in the database already)."""
        for letter in batch.letters:
            try:
                self.client.publish(self.topics.deadletter, letter.to_json())
            except MqttError as exc:
                logger.warning("dead letter %s stored, not published: %s", letter.event_id, exc)

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
            self._urgent = False
        self._pending.append(message)
        # A settlement result is what an alert waits for: its batch does not wait to fill.
        if message.topic == self._settlements:
            self._urgent = True

    def _connected(self, session_present: bool) -> None:
        self.client.subscribe(self.filters)
        logger.info("subscribed to %s", ", ".join(self.filters))
