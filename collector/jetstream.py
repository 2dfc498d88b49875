"""NATS JetStream ingest: collectors share one durable pull consumer as a work queue.

Agents stay MQTT clients: NATS's MQTT listener turns the topic `posmon/v1/terminals/T/txn`
into the subject `posmon.v1.terminals.T.txn`. Every collector binds the same durable
consumer, so each message goes to one of them; one that dies leaves its fetched messages
unacked, and JetStream hands them to another after `ack_wait`. Nothing waits for the dead
one to come back (the mosquitto `$share` path's limit, docs/scaling.md).

Which stream (`[nats] capture`):
- `mqtt` (default): the listener's own `$MQTT_msgs`, where nats-server stores each QoS 1
  PUBLISH, as `$MQTT.msgs.<subject>`, *before* it sends the PUBACK (replicated on
  `mqtt { stream_replicas }` nodes). A PUBACK then means: in the stream the collectors
  read. Its retention is by interest, so the durable consumer must exist before agents
  publish (every collector makes it at start). Alerts published over MQTT land there too;
  they are acked and skipped.
- `stream`: a work-queue stream of our own over posmon's subjects. The listener feeds it
  as a plain subscriber, after the PUBACK and without waiting: while its leader is being
  elected (a node died), MQTT messages are dropped (measured: tests/test_nats_ingest.py).
  For publishers that use JetStream themselves.

A batch goes through the MQTT path's validation (`parse_delivery`: dead letters for what
is not a valid contract message on its subject) into `Store.ingest`, and is acked only
once its transaction is on disk (on PostgreSQL, once a `Store.sync()` after its commit has
returned). Batches overlap: one is fetched while the one before is validated (on a thread
of its own), the one before that is stored (on the store's worker: one at a time, in
order) and, on PostgreSQL, the one before that waits for its WAL flush. nats-py is
asyncio: it runs in the thread that calls `run()`, on a loop of its own, which the other
threads do not hold up.

This is the one module that imports nats-py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from collector.config import IngestSection, NatsSection
from collector.ingest import count_batch, is_new_letter, parse_delivery
from collector.registry import Registry
from collector.store import IngestReport, OutcomeChange, Store
from posmon.mqtt import Topics
from posmon.wire.models import (
    BatchEvent,
    DeadLetter,
    StatusEvent,
    TxnEvent,
    WireMessage,
)

logger = logging.getLogger(__name__)

# Batches fetched and not yet acked: being validated, stored, flushed.
MAX_BATCHES = 3
# How long `run()` waits for the connection before it tries again (the client itself
# reconnects forever once connected).
CONNECT_RETRY_S = 1.0


# NATS's MQTT listener (2.9 to 2.12 at least): the stream QoS 1 PUBLISHes are stored in
# before their PUBACK, and the prefix of their subjects there.
MQTT_STREAM = "$MQTT_msgs"
MQTT_SUBJECT_PREFIX = "$MQTT.msgs."


class StreamMissing(RuntimeError):
    """The stream to consume does not exist yet (the MQTT listener makes its own at the
    first MQTT connection)."""


def subject_for(topic: str) -> str:
    """The NATS subject NATS's MQTT listener publishes an MQTT topic (or filter) on."""
    return topic.replace("/", ".").replace("+", "*").replace("#", ">")


def topic_for(subject: str) -> str:
    """The MQTT topic of a subject (posmon's prefixes hold no '.')."""
    return subject.removeprefix(MQTT_SUBJECT_PREFIX).replace(".", "/")


def stream_subjects(topics: Topics) -> list[str]:
    """What our own stream captures: what collectors take in, not the alerts they publish."""
    return [
        subject_for(topics.terminal("+", "+")),
        subject_for(topics.presence("+")),
        subject_for(topics.settlements),
        subject_for(topics.deadletter),
    ]


def stream_name(settings: NatsSection) -> str:
    return MQTT_STREAM if settings.capture == "mqtt" else settings.stream


async def ensure_stream(js: JetStreamContext, settings: NatsSection, topics: Topics) -> None:
    """Make the shared consumer (and with capture = `stream`, the stream), or bring them
    to `settings`: idempotent, every collector does it at start."""
    consumer = ConsumerConfig(
        durable_name=settings.consumer,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s,
        max_deliver=settings.max_deliver,
        max_ack_pending=settings.max_ack_pending,
    )
    if settings.capture == "mqtt":
        try:
            await js.stream_info(MQTT_STREAM)
        except NotFoundError as exc:
            raise StreamMissing(
                f"{MQTT_STREAM} does not exist yet: NATS's MQTT listener makes it at the "
                "first MQTT connection (and needs JetStream)"
            ) from exc
        # Everything under the prefix (2.9 takes one filter per consumer); the alerts
        # among it are skipped.
        consumer.filter_subject = MQTT_SUBJECT_PREFIX + subject_for(topics.prefix) + ".>"
        await js.add_consumer(MQTT_STREAM, consumer)
        return
    stream = StreamConfig(
        name=settings.stream,
        subjects=stream_subjects(topics),
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=settings.stream_replicas,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
    )
    try:
        info = await js.stream_info(settings.stream)
    except NotFoundError:
        await js.add_stream(stream)
        logger.info(
            "created stream %s over %s, %d replicas",
            settings.stream,
            ", ".join(stream.subjects or []),
            settings.stream_replicas,
        )
    else:
        current = info.config
        if (
            sorted(current.subjects or []) != sorted(stream.subjects or [])
            or current.num_replicas != stream.num_replicas
        ):
            await js.update_stream(stream)
            logger.info("updated stream %s", settings.stream)
    await js.add_consumer(settings.stream, consumer)


async def connect(settings: NatsSection, name: str) -> NatsClient:
    """A connection to the cluster that reconnects, to any node, for ever."""
    return await nats.connect(
        settings.servers,
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
    )


@dataclass(slots=True)
class _Batch:
    """Fetched messages handed to the worker (validated and stored there), acked when
    `stored` is done."""

    messages: list[Msg]
    stored: asyncio.Future[_Stored]  # validated, stored and on disk


@dataclass(slots=True, frozen=True)
class _Stored:
    """What the worker made of a batch: stored and on disk."""

    report: IngestReport
    valid: list[WireMessage]
    letters: list[DeadLetter]


class JetStreamIngestor:
    """Collectors' shared JetStream consumer feeding the store; runs in the thread that
    calls `run()`. Its attributes match `Ingestor`'s where the collector reads them."""

    def __init__(
        self,
        store: Store,
        settings: NatsSection,
        topics: Topics,
        ingest: IngestSection,
        *,
        on_changes: Callable[[list[OutcomeChange]], None] = lambda changes: None,
        source: str = "collector",
        name: str = "posmon-collector",
        registry: Registry | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.topics = topics
        self.ingest = ingest
        self.on_changes = on_changes  # called on the store's worker thread, at the commit
        self.source = source
        self.name = name
        self.registry = registry
        self.filters = [f"{stream_name(settings)}/{settings.consumer}"]
        self._alerts = topics.prefix + "/alerts/"
        self.counters: Counter[str] = Counter()
        self.last_lag_s: float | None = None
        self._nc: NatsClient | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._validator: ThreadPoolExecutor | None = None
        self._syncer: ThreadPoolExecutor | None = None
        self._skipped: list[Msg] = []  # acked with the next batch's acks

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def run(self, stop: threading.Event) -> None:
        """Fetch, store and ack until `stop` is set; the batch being stored is acked."""
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-store")
        self._validator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-validate")
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-sync")
        try:
            asyncio.run(self._main(stop))
        finally:
            self._worker.shutdown(wait=True)
            self._validator.shutdown(wait=True)
            self._syncer.shutdown(wait=True)
            self._worker = self._validator = self._syncer = None

    async def _main(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._nc = await connect(self.settings, self.name)
            except Exception as exc:  # no node answered: try again, as the MQTT path does
                logger.warning("NATS %s: %s; retrying", self.settings.servers, exc)
                await asyncio.sleep(CONNECT_RETRY_S)
                continue
            try:
                await self._consume(self._nc, stop)
            except Exception:
                # What was fetched and not acked comes again after ack_wait.
                logger.exception("NATS ingest: unexpected error; reconnecting")
                await asyncio.sleep(CONNECT_RETRY_S)
            finally:
                nc, self._nc = self._nc, None
                await nc.close()

    async def _consume(self, nc: NatsClient, stop: threading.Event) -> None:
        js = nc.jetstream()
        stream = stream_name(self.settings)
        while True:
            try:
                await ensure_stream(js, self.settings, self.topics)
                break
            except StreamMissing as exc:
                logger.warning("NATS ingest: %s; waiting", exc)
                if stop.wait(CONNECT_RETRY_S):
                    return
        pull = await js.pull_subscribe_bind(durable=self.settings.consumer, stream=stream)
        logger.info("NATS ingest: consumer %s on stream %s", self.settings.consumer, stream)
        # Batches in order: validated on one thread while the one before is stored on
        # another (pydantic and SQLite overlap), acked in order once on disk.
        batches: deque[_Batch] = deque()
        try:
            while not stop.is_set():
                # With batches under way, a short wait: their acks are not held up by
                # an idle stream.
                wait_ms = self.ingest.batch_wait_ms if batches else self.settings.fetch_wait_ms
                try:
                    fetched = await pull.fetch(
                        self.ingest.batch_size, timeout=max(wait_ms, 10) / 1000
                    )
                except (NatsTimeout, TimeoutError):  # nats-py raises either, by path
                    fetched = []
                if fetched:
                    batches.append(self._submit(fetched))
                while batches and (batches[0].stored.done() or len(batches) > MAX_BATCHES):
                    await self._finish(nc, batches.popleft())
        finally:
            while batches:
                await self._finish(nc, batches.popleft())
            await pull.unsubscribe()

    def _submit(self, messages: list[Msg]) -> _Batch:
        """Hand a fetched batch to the worker, to validate and store in one go (alerts
        published over MQTT are set aside, acked with the next acks)."""
        taken: list[Msg] = []
        for message in messages:
            if message.metadata.num_delivered > 1:  # fetched before by a collector that died
                self.counters["redelivered"] += 1
            if topic_for(message.subject).startswith(self._alerts):  # ours: not ingest
                self.counters["skipped"] += 1
                self._skipped.append(message)
            else:
                taken.append(message)
        return _Batch(taken, asyncio.ensure_future(self._validate_and_store(taken)))

    async def _validate_and_store(self, messages: list[Msg]) -> _Stored:
        """Validate on one thread, then store on the store's (in the order submitted:
        one worker, first in first out)."""
        loop = asyncio.get_running_loop()
        valid, letters = await loop.run_in_executor(self._validator, self._validate, messages)
        report = await loop.run_in_executor(self._worker, self._store, valid)
        if self.store.sync_needed:
            # PostgreSQL: committed, not yet known to be on disk. The worker goes on with
            # the next batch while this waits for the WAL flush, as the MQTT path does.
            await loop.run_in_executor(self._syncer, self.store.sync)
        return _Stored(report, valid, letters)

    def _validate(self, messages: list[Msg]) -> tuple[list[WireMessage], list[DeadLetter]]:
        """On the validator: the MQTT path's validation (dead letters included)."""
        valid: list[WireMessage] = []
        letters: list[DeadLetter] = []
        for message in messages:
            topic = topic_for(message.subject)
            parsed = parse_delivery(topic, message.data, self.topics, self.source)
            if is_new_letter(parsed, topic, self.topics):
                letters.append(parsed)
            valid.append(parsed)
        if self.registry is not None:
            self.registry.refresh()
            self.counters["unknown_terminal"] += self.registry.unknown(valid).total()
        return valid, letters

    def _store(self, valid: list[WireMessage]) -> IngestReport:
        """On the worker: store a batch (on disk at the return, or after the next
        `Store.sync()` where `sync_needed`: nothing is acked before)."""
        report = self.store.ingest(valid, "nats", durable=False)
        if report.changes:
            try:
                self.on_changes(report.changes)
            except Exception:  # the batch is stored: it must not be taken for a failed one
                logger.exception("reporting %d outcome changes failed", len(report.changes))
        return report

    async def _finish(self, nc: NatsClient, batch: _Batch) -> None:
        stored = await self._stored(batch)
        if stored is not None:
            await self._ack(nc, batch, stored)

    async def _stored(self, batch: _Batch) -> _Stored | None:
        """Wait for a batch's commit; None when it failed (then it is not acked, and
        JetStream delivers it again after ack_wait)."""
        try:
            return await batch.stored
        except Exception:
            logger.exception(
                "could not store a batch of %d messages; left unacked", len(batch.messages)
            )
            return None

    async def _ack(self, nc: NatsClient, batch: _Batch, stored: _Stored) -> None:
        """A batch on disk: ack it, publish its dead letters, count it."""
        skipped, self._skipped = self._skipped, []
        for message in [*batch.messages, *skipped]:
            await message.ack()
        for letter in stored.letters:
            await nc.publish(subject_for(self.topics.deadletter), letter.to_json())
        count_batch(self.counters, stored.report, len(batch.messages), len(stored.letters))
        observed = [
            m.observed_at
            for m in stored.valid
            if isinstance(m, TxnEvent | StatusEvent | BatchEvent)
        ]
        if observed:
            self.last_lag_s = (datetime.now(UTC) - max(observed)).total_seconds()
