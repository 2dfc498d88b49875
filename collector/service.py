"""The collector process: ingest (MQTT or NATS), overdue watch, HTTP door, liveness record."""

from __future__ import annotations

import gc
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from collector.alerts import AlertEngine, AlertStore, Queued
from collector.casestore import CaseStore
from collector.config import CollectorConfig
from collector.correlate import Outcome
from collector.http import HttpServer, create_app
from collector.ingest import Ingestor
from collector.metrics import Recorder, metrics_sink
from collector.notify import Dispatcher, channels_for
from collector.overdue import OverdueWatch
from collector.registry import Registry
from collector.retention import RetentionWorker
from collector.store import OutcomeChange, Store
from collector.terms import SettlementTerms
from posmon.mqtt import MqttClient, MqttSettings, Topics
from posmon.simclock import Clock, SimClock, SystemClock

if TYPE_CHECKING:
    from collector.jetstream import JetStreamIngestor

logger = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
# How often the counter shards of ended connections are folded (collector.store.counts).
FOLD_COUNTS_S = 600.0
_QUIET = frozenset({Outcome.SETTLED, Outcome.PENDING, Outcome.NOT_EXPECTED, Outcome.CANCELLED})


def make_clock(config: CollectorConfig) -> Clock:
    """Real time, or the accelerated clock of a simulation."""
    section = config.clock
    if section.scale == 1.0 and section.origin is None:
        return SystemClock()
    origin = section.origin or datetime.now(UTC)
    return SimClock(origin, section.scale, section.anchor)


def alert_login(config: CollectorConfig) -> MqttSettings:
    """The MQTT alert channel's connection: [mqtt], with [notify]'s own login if it has one.

    Its own login (a password, or over mutual TLS a certificate, whose name is the login):
    under the ingest's, a broker that names each connection after its login
    (use_username_as_clientid) would cut the ingest off at every connect.
    """
    notify, settings = config.notify, config.mqtt
    if notify.mqtt_username is not None:
        settings = settings.model_copy(
            update={"username": notify.mqtt_username, "password": notify.mqtt_password}
        )
    if notify.tls_certfile is not None:
        tls = settings.tls.model_copy(
            update={"cert_file": notify.tls_certfile, "key_file": notify.tls_keyfile}
        )
        settings = settings.model_copy(update={"tls": tls})
    return settings


class Collector:
    """Wires store, ingest, overdue watch and HTTP together for one configuration."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.id = config.collector.id
        self.clock = make_clock(config)
        self.store = Store(
            config.database.url,
            SettlementTerms(config),
            collector_id=self.id,
            clock=self.clock.now,
            skew_days=config.settlement.skew_days,
        )
        self.store.migrate()
        self.topics = Topics(config.mqtt.topic_prefix)
        registry = Registry(config.fleet.file) if config.fleet.file is not None else None
        self.ingestor: Ingestor | JetStreamIngestor
        if config.ingest.source == "nats":
            from collector.jetstream import JetStreamIngestor  # noqa: PLC0415 - nats-py

            self.ingestor = JetStreamIngestor(
                self.store,
                config.nats,
                self.topics,
                config.ingest,
                on_changes=self.report,
                source=f"collector:{self.id}",
                name=f"posmon-collector-{self.id}",
                registry=registry,
            )
        else:
            client = MqttClient(config.mqtt, f"posmon-collector-{self.id}", manual_ack=True)
            self.ingestor = Ingestor(
                self.store,
                client,
                self.topics,
                config.ingest,
                on_changes=self.report,
                source=f"collector:{self.id}",
                registry=registry,
            )
        self.overdue = OverdueWatch(
            self.store, self.clock.now, self.report, scale=config.clock.scale
        )
        self._folded_at: float | None = None  # monotonic; None: not yet
        self.retention = RetentionWorker(self.store.engine, config.retention, self.clock.now)
        channels = channels_for(
            config.notify, alert_login(config), f"posmon-collector-{self.id}-alerts", self.topics
        )
        self.alert_store = AlertStore(
            self.store.derived,
            self.id,
            [channel.name for channel in channels],
            reads=self.store.reads,
        )
        self.dispatchers = [
            Dispatcher(channel, self.alert_store, config.notify) for channel in channels
        ]
        self.alert_store.on_queued = self._hand_over
        self.metrics = metrics_sink(config.metrics)
        self.recorder = Recorder(
            self.metrics,
            self.clock.now,
            self.id,
            silent_after_s=config.alerts.heartbeat_timeout_s,
        )
        self.cases = CaseStore(self.store.derived, reads=self.store.reads)
        self.alerts = AlertEngine(
            config,
            self.alert_store,
            self.clock.now,
            on_queued=self._wake_dispatchers,
            on_fact=self.recorder.fact,
            on_alert=self.recorder.alert,
            cases=self.cases,
        )
        self.http: HttpServer | None = None
        if config.http.enabled:
            app = create_app(self.store, lambda report: self.report(report.changes))
            self.http = HttpServer(app, config.http.host, config.http.port)
        self.started_at = datetime.now(UTC)

    def _hand_over(self, queued: list[Queued]) -> None:
        """Notifications just committed go straight to their channel's dispatcher."""
        by_channel = {dispatcher.channel.name: dispatcher for dispatcher in self.dispatchers}
        for item in queued:
            dispatcher = by_channel.get(item.channel)
            if dispatcher is not None:
                dispatcher.hand(item)

    def _wake_dispatchers(self) -> None:
        for dispatcher in self.dispatchers:
            dispatcher.wake.set()

    def report(self, changes: list[OutcomeChange]) -> None:
        """Wake the alert engine for what changed (stored already), and log it."""
        self.alerts.wake.set()
        for change in changes:
            level = logging.DEBUG if change.outcome in _QUIET else logging.WARNING
            logger.log(
                level,
                "settlement %s: tid=%s rrn=%s (was %s) settlement=%s",
                change.outcome,
                change.tid,
                change.rrn,
                change.previous or "-",
                change.settlement_id or "-",
            )

    def status(self) -> dict[str, object]:
        return {
            **dict(self.ingestor.counters),
            "overdue_reported": self.overdue.reported,
            "lag_s": self.ingestor.last_lag_s,
            **(
                {"covering_for": ",".join(self.ingestor.covering_for) or None}
                if isinstance(self.ingestor, Ingestor) and self.ingestor.cover_filters
                else {}
            ),
            f"{self.config.ingest.source}_connected": self.ingestor.connected,
            "alerts_fired": self.alerts.fired,
            "alerts_resolved": self.alerts.resolved,
            "retention_removed": self.retention.removed,
            "clock_steps": self.alerts.clock_watch.steps,
            "clock_last_step_s": (
                round(step.seconds) if (step := self.alerts.clock_watch.last) else None
            ),
            **{f"notified.{d.channel.name}": d.delivered for d in self.dispatchers},
            **{f"notify_failures.{d.channel.name}": d.failures for d in self.dispatchers},
            **{f"metrics.{name}": value for name, value in self.metrics.counters().items()},
        }

    def _heartbeat(self) -> None:
        """This collector's state into the database, its health and the cases' gauges into
        the metrics. The database away (a restart, a failover) costs heartbeats, not the
        collector: ingest holds its acks and the other threads retry meanwhile."""
        try:
            self.store.record_collector(self.started_at, self.ingestor.filters, self.status())
            now = time.monotonic()
            if self._folded_at is None or now - self._folded_at >= FOLD_COUNTS_S:
                self._folded_at = now
                self.store.fold_counts()
            if isinstance(self.ingestor, Ingestor) and self.ingestor.cover_filters:
                self.ingestor.cover(self._gone_peers())
            gauges = self.cases.gauges(self.clock.now())
        except SQLAlchemyError as exc:
            first = str(exc.orig if isinstance(exc, DBAPIError) else exc).strip().split("\n")[0]
            logger.warning("heartbeat: the database did not answer (%s); again in %g s", first,
                           HEARTBEAT_S)  # fmt: skip
            gauges = []
        self.recorder.heartbeat(self.status(), self.alerts)
        self.recorder.cases(gauges)

    def _gone_peers(self) -> tuple[str, ...]:
        """The collectors of this one's share group whose heartbeat stopped between
        `peer_timeout_s` and `cover_max_h` ago, if this one is to cover them: the first, by
        id, of those still heard of (one cover is enough; docs/scaling.md, "A gone
        collector's share")."""
        ingest = self.config.ingest
        share = f"$share/{ingest.shared_group}/"
        now = datetime.now(UTC)
        newest = now - timedelta(seconds=ingest.peer_timeout_s)
        oldest = now - timedelta(hours=ingest.cover_max_h)
        group = [
            record
            for record in self.store.collectors()
            if any(topic.startswith(share) for topic in record.subscriptions)
        ]
        alive = [r.collector_id for r in group if r.seen_at >= newest or r.collector_id == self.id]
        if min(alive, default=self.id) != self.id:
            return ()
        return tuple(
            r.collector_id for r in group if r.collector_id not in alive and r.seen_at > oldest
        )

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set; pending messages are stored and acked on the way out."""
        # What start-up made (modules, schemas, compiled statements) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it (one
        # took 98 ms under load on PostgreSQL, every thread stopped, an alert waiting).
        gc.collect()
        gc.freeze()
        threads = [
            threading.Thread(target=self.ingestor.run, args=(stop,), name="ingest", daemon=True),
            threading.Thread(target=self.overdue.run, args=(stop,), name="overdue", daemon=True),
            threading.Thread(target=self.alerts.run, args=(stop,), name="alerts", daemon=True),
        ]
        if self.config.retention.enabled:
            threads.append(
                threading.Thread(
                    target=self.retention.run, args=(stop,), name="retention", daemon=True
                )
            )
        threads.extend(
            threading.Thread(
                target=dispatcher.run,
                args=(stop,),
                name=f"notify-{dispatcher.channel.name}",
                daemon=True,
            )
            for dispatcher in self.dispatchers
        )
        self.metrics.start()
        for thread in threads:
            thread.start()
        if self.http is not None:
            self.http.start()
        logger.info(
            "collector %s running: database %s, %s, http %s",
            self.id,
            self.store.engine.url.render_as_string(hide_password=True),
            (
                f"NATS {', '.join(self.config.nats.servers)}"
                if self.config.ingest.source == "nats"
                else f"broker {self.config.mqtt.host}:{self.config.mqtt.port}"
            ),
            f"{self.config.http.host}:{self.config.http.port}" if self.http else "off",
        )
        while True:
            self._heartbeat()
            if stop.wait(HEARTBEAT_S):
                break
        for thread in threads:
            thread.join(timeout=10)
        if self.http is not None:
            self.http.stop()
        self._heartbeat()
        self.metrics.close(timeout=10)
        logger.info("collector %s stopped; %s", self.id, self.status())
        self.store.close()
