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
published on the dead-letter topic, counted) and acked: it would never become valid. So is
a terminal's message whose payload names another terminal than its topic, or a presence
naming another agent: a publisher may speak only for the topic the broker let it use.

About 400 lines as one piece on purpose: the promise above (acked only once committed and
on disk, in the order received) is kept by the `Ingestor`'s own state (the batch being
stored, the batches awaiting their sync, the dead letters to publish) shared by its
receiving thread and its two workers; split, that state would cross modules. The pure
parts before it (topics, parsing, counting) are what `collector.jetstream` shares.
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
from typing import TypeGuard

from collector.config import IngestSection
from collector.registry import Registry
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


def topic_mismatch(topic: str, topics: Topics, message: WireMessage) -> str | None:
    """Why a message does not belong on its topic's terminal or agent, or None."""
    parts = topic.removeprefix(topics.prefix + "/").split("/")
    if len(parts) != 3:
        return None
    if (
        parts[0] == "terminals"
        and isinstance(message, TxnEvent | StatusEvent | BatchEvent)
        and message.tid != parts[1]
    ):
        return f"payload tid {message.tid} is not the topic's terminal {parts[1]}"
    if parts[0] == "agents" and isinstance(message, PresenceEvent) and message.agent_id != parts[1]:
        return f"payload agent_id {message.agent_id} is not the topic's agent {parts[1]}"
    return None


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


def parse_delivery(topic: str, payload: bytes, topics: Topics, source: str) -> WireMessage:
    """A delivered message as the contract model its topic allows, or a dead letter
    (never raises): the one validation every ingest source (MQTT, NATS) goes through."""
    expected = _model_for(topic, topics)
    try:
        if expected is None:
            raise MessageError(f"no posmon message belongs on topic {topic}", payload)
        parsed = parse_message(payload, expected=expected)
        mismatch = topic_mismatch(topic, topics, parsed)
        if mismatch is not None:
            raise MessageError(mismatch, payload)
        return parsed
    except MessageError as exc:
        logger.warning("dead letter from %s: %s", topic, exc.reason)
        return new_deadletter(source, exc.reason, payload, topic)


def is_new_letter(parsed: WireMessage, topic: str, topics: Topics) -> TypeGuard[DeadLetter]:
    """True for a dead letter made here (to publish once stored), not one received on
    the dead-letter topic."""
    return isinstance(parsed, DeadLetter) and _model_for(topic, topics) is not DeadLetter


def count_batch(counters: Counter[str], report: IngestReport, received: int, letters: int) -> None:
    """Count a stored and acknowledged batch (the collector's status keys)."""
    counters["received"] += received
    counters["deadletters"] += letters
    counters["batches"] += 1
    for kind, count in report.stored.items():
        counters[f"stored.{kind}"] += count
    for kind, count in report.repeats.items():
        counters[f"repeats.{kind}"] += count


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
        registry: Registry | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.topics = topics
        self.settings = settings
        self.on_changes = on_changes  # called on the store's worker thread, at the commit
        self.source = source
        self.registry = registry
        self.filters = list(subscriptions(topics, settings.shared_group))
        # In a share group, the plain filters: subscribed while a peer of the group is gone,
        # so that what the broker keeps routing to its session also comes here (`cover`).
        self.cover_filters = list(subscriptions(topics, None)) if settings.shared_group else []
        self.covering_for: tuple[str, ...] = ()  # the gone peers, as the heartbeat saw them
        # Whether the cover subscription is in the broker's session (None: not known, a
        # session this process did not make).
        self._covered: bool | None = False
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
    def connected(self) -> bool:
        return self.client.connected

    @property
    def _busy(self) -> bool:
        return self._storing is not None or self._syncing is not None

    def cover(self, peers: tuple[str, ...]) -> None:
        """Cover the share of `peers`, collectors of the group taken for gone (none: end
        it). mosquitto keeps giving a gone member of a share group its share, into a session
        that waits for it; with the plain filters subscribed as well, every message comes
        here too while it is gone. The copies that reach both are the same events, stored
        once (repeats are counted); the session's backlog is stored when it comes back.
        Called from the heartbeat's thread; the subscription changes on ingest's."""
        if peers != self.covering_for:
            if peers:
                logger.warning(
                    "collectors %s not heard of: covering their share of the group "
                    "(every message comes here too)",
                    ", ".join(peers),
                )
            else:
                logger.warning("no collector of the group is gone: the cover ends")
        self.covering_for = peers

    def _apply_cover(self) -> None:
        wanted = bool(self.covering_for)
        if wanted == self._covered or not self.client.connected:
            return
        if wanted:
            self.client.subscribe(self.cover_filters)
        else:
            self.client.unsubscribe(self.cover_filters)
        self._covered = wanted
        self.counters["cover.changes"] += 1

    def step(self) -> None:
        """One turn: connect if due, network I/O, take a commit and a sync that are done,
        hand on the next batch and the next sync."""
        self.client.connect_when_due()
        if self.cover_filters:
            self._apply_cover()
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
            if is_new_letter(parsed, message.topic, self.topics):
                letters.append(parsed)
            valid.append(parsed)
        if self.registry is not None:
            self.registry.refresh()
            self.counters["unknown_terminal"] += self.registry.unknown(valid).total()
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
        return parse_delivery(message.topic, message.payload, self.topics, self.source)

    def _count(self, report: IngestReport, batch: list[Message], letters: list[DeadLetter]) -> None:
        count_batch(self.counters, report, len(batch), len(letters))

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
        # A session kept by the broker may hold a cover from an earlier connection, or an
        # earlier process: put it as it should be now.
        self._covered = None if session_present else False
