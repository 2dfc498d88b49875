"""The agent process: one reader per port, one outbox, one publisher, stopped by a signal."""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from agent.config import AgentConfig
from agent.link import PortReader
from agent.outbox import LastFrame, Outbox, OutboxFull, Priority
from agent.publisher import Publisher
from posmon import __version__
from posmon.lifecycle import load_config_or_exit, stop_on_signals
from posmon.mqtt import MqttClient, Topics
from posmon.wire.codec import EventBuilder, Received, SerialCodec
from posmon.wire.models import (
    BatchEvent,
    DeadLetter,
    PresenceEvent,
    PresenceState,
    StatusEvent,
    TxnEvent,
)

if TYPE_CHECKING:
    from agent.tap.runner import Taps

logger = logging.getLogger(__name__)

STATS_EVERY_S = 60.0


class Agent:
    """Wires ports, codecs, outbox and publisher together for one configuration."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.agent_id = config.agent.id
        self.topics = Topics(config.mqtt.topic_prefix)
        self.outbox = Outbox(
            config.outbox_path,
            max_events=config.outbox.max_events,
            fsync=config.outbox.fsync.value,
        )
        self.builder = EventBuilder(
            self.agent_id, tz=ZoneInfo(config.agent.timezone), currency=config.agent.currency
        )
        self._tids_by_port: dict[str, set[str]] = {
            port.name: set(port.tids) for port in config.ports
        }
        self._lock = threading.Lock()
        # The wire models build their validators on first use; build the ones the agent
        # makes here, on the main thread, before the readers start. Built in a reader, the
        # schema-building garbage would grow that thread's own malloc arena instead of
        # being reused (about 0.2 MB of the 40 MB budget).
        for model in (TxnEvent, StatusEvent, BatchEvent, DeadLetter, PresenceEvent):
            model.model_rebuild()
        last_frames = self.outbox.last_frames()
        self.readers = []
        for port in config.ports:
            codec = SerialCodec(self.builder, source=f"agent:{self.agent_id}:{port.name}")
            for frame in last_frames:
                codec.prime(frame.tid, frame.seq, frame.fingerprint)
            self.readers.append(PortReader(port.name, port.url, port.baudrate, codec, self))
        # Taps are started only when configured: the relay brings asyncio, which a
        # serial-only agent does not need to load.
        self.taps: Taps | None = None
        if config.taps:
            from agent.tap.runner import Taps  # noqa: PLC0415 - see above

            for tap in config.taps:
                self._tids_by_port[_tap_key(tap.name)] = {tap.tid} if tap.tid else set()
            self.taps = Taps(
                config.taps,
                agent_id=self.agent_id,
                tz=ZoneInfo(config.agent.timezone),
                currency=config.agent.currency,
                sink=self.store_tap_event,
            )
        will = self._presence(online=False)
        self.client = MqttClient(config.mqtt, f"posmon-agent-{self.agent_id}", will=will)
        self.publisher = Publisher(
            self.outbox,
            self.client,
            presence=lambda online: self._presence(online=online),
            inflight=config.mqtt.inflight,
        )

    # --- FrameSink ----------------------------------------------------------------------

    def store(self, received: Received, port: str) -> bool:
        """Commit a frame's event (with the terminal's last SEQ) before it is ACKed."""
        message = received.message
        if message is None:
            return True
        last = None
        if isinstance(message, TxnEvent | StatusEvent | BatchEvent):
            self._learn(port, message.tid)
            if received.seq is not None:
                last = LastFrame(message.tid, received.seq, received.fingerprint)
        topic, priority = self._route(message)
        try:
            self.outbox.put(topic, message.to_json(), priority, last)
            self.publisher.outbox_changed.set()
        except OutboxFull:
            logger.warning(
                "port %s: outbox full of transactions and batches; not ACKing %s from %s",
                port,
                type(message).__name__,
                received.tid,
            )
            return False
        except sqlite3.OperationalError as exc:  # the disk under the outbox is full, or gone
            logger.error(
                "port %s: the outbox could not store %s from %s (%s); not ACKing: the "
                "terminal keeps it and sends it again",
                port,
                type(message).__name__,
                received.tid,
                exc,
            )
            return False
        return True

    def store_tap_event(self, tap: str, event: TxnEvent | StatusEvent | BatchEvent) -> None:
        """Keep an event a tap decoded. The sale it comes from has already gone through,
        so an event the outbox cannot take is lost: logged, and counted by the outbox."""
        self._learn(_tap_key(tap), event.tid)
        topic, priority = self._route(event)
        try:
            self.outbox.put(topic, event.to_json(), priority, None)
            self.publisher.outbox_changed.set()
        except OutboxFull:
            logger.warning("tap %s: outbox full; %s from %s lost", tap, event.SCHEMA, event.tid)
        except sqlite3.OperationalError as exc:
            logger.error(
                "tap %s: the outbox could not store %s from %s (%s)",
                tap,
                event.SCHEMA,
                event.tid,
                exc,
            )

    def port_state(self, port: str, ok: bool, reason: str) -> None:
        """Report a failed port as `serial_ok: false` for each terminal behind it."""
        if ok:
            return
        now = datetime.now(UTC)
        with self._lock:
            tids = sorted(self._tids_by_port.get(port, ()))
        for tid in tids:
            event = self.builder.serial_down(tid, now)
            self.outbox.put(self.topics.terminal(tid, "status"), event.to_json(), Priority.STATUS)
            self.publisher.outbox_changed.set()

    # --- helpers ------------------------------------------------------------------------

    def _route(
        self, message: TxnEvent | StatusEvent | BatchEvent | DeadLetter
    ) -> tuple[str, Priority]:
        if isinstance(message, TxnEvent):
            return self.topics.terminal(message.tid, "txn"), Priority.KEEP
        if isinstance(message, BatchEvent):
            return self.topics.terminal(message.tid, "batch"), Priority.KEEP
        if isinstance(message, StatusEvent):
            return self.topics.terminal(message.tid, "status"), Priority.STATUS
        return self.topics.deadletter, Priority.DEADLETTER

    def _learn(self, port: str, tid: str) -> None:
        with self._lock:
            known = self._tids_by_port.setdefault(port, set())
            if tid in known:
                return
            known.add(tid)
        logger.info("port %s: terminal %s seen", port, tid)
        self.publisher.presence_stale.set()

    def _presence(self, *, online: bool) -> tuple[str, bytes]:
        with self._lock:
            tids = sorted(set().union(*self._tids_by_port.values()))
        event = PresenceEvent(
            agent_id=self.agent_id,
            state=PresenceState.ONLINE if online else PresenceState.OFFLINE,
            tids=tids,
            version=__version__,
            observed_at=datetime.now(UTC),
        )
        return self.topics.presence(self.agent_id), event.to_json()

    def stats(self) -> dict[str, object]:
        """Counters worth a log line: per port, outbox, published."""
        ports = {}
        for reader in self.readers:
            counters = reader.codec.counters
            framing = reader.codec.decoder.counters
            ports[reader.name] = {
                "ok": reader.ok,
                "accepted": counters.accepted,
                "repeats": counters.repeats,
                "invalid": counters.invalid,
                "unknown_type": counters.unknown_type,
                "nak": counters.rejected,
                "noise_bytes": framing.noise_bytes,
                "timeouts": framing.timeouts,
                "unacked": reader.unacked,
            }
        stats: dict[str, object] = {
            "ports": ports,
            "outbox": self.outbox.counters(),
            "published": self.publisher.published,
        }
        if self.taps is not None:
            stats["taps"] = self.taps.stats()
        return stats

    # --- running ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set; then drain what is in flight and say goodbye.

        The publisher works on the calling thread (one thread and one malloc arena fewer
        on a small box) and logs the stats line every `STATS_EVERY_S`.
        """
        threads = [
            threading.Thread(
                target=reader.run, args=(stop,), name=f"port-{reader.name}", daemon=True
            )
            for reader in self.readers
        ]
        for thread in threads:
            thread.start()
        if self.taps is not None:
            self.taps.start()
        logger.info(
            "agent %s running: %d port(s), %d tap(s), outbox %s (%d waiting), broker %s:%s",
            self.agent_id,
            len(self.readers),
            len(self.config.taps),
            self.outbox.path,
            len(self.outbox),
            self.config.mqtt.host,
            self.config.mqtt.port,
        )
        self.publisher.run(stop, every=(STATS_EVERY_S, self._log_stats))
        if self.taps is not None:
            self.taps.stop()
        for thread in threads:
            thread.join(timeout=2)
        logger.info("agent %s stopped; stats %s", self.agent_id, self.stats())
        self.outbox.close()

    def _log_stats(self) -> None:
        logger.info("stats %s", self.stats())


def serve(config: Path | None) -> None:
    """`posmon agent run`: load the configuration (or exit 2), run until SIGTERM or Ctrl-C."""
    settings = load_config_or_exit(AgentConfig, config)
    if not settings.ports and not settings.taps:
        print(f"configuration error:\n{config}: ports: no port configured", file=sys.stderr)
        raise SystemExit(2)
    Agent(settings).run(stop_on_signals())


def _tap_key(name: str) -> str:
    # Terminals are remembered per port name; a tap's never clash with a port's.
    return f"tap:{name}"
