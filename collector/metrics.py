"""Metrics: what the collector measures, as samples handed to a sink that never blocks.

The alert engine already reads every new transaction, status, batch and settlement
outcome (it follows those tables by id); the `Recorder` rides on that one reader through
the engine's `on_fact` and `on_alert` hooks, and on the collector's heartbeat for its own
health and the fleet's. It turns each into a `Sample` and gives it to a `MetricsSink`,
whose `submit()` only queues: a slow or absent InfluxDB never slows ingest or alerts
(both defined in `collector/samples.py`, which the sinks import instead of this module).
`collector/influx.py` is the sink that writes to InfluxDB, the only module that talks to
it. The measurements, their tags (kept to bounded sets) and fields are documented in
docs/metrics.md; the dashboards in `dashboards/` query exactly these names.

Every sample is stamped with the collector's clock when the collector handles the fact
(milliseconds after it is stored), so a simulation on an accelerated clock writes its
metrics on the same virtual timeline as its alerts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from collector.alerts.rows import (
    BatchRow,
    FactRow,
    OutcomeRow,
    StatusRow,
    StoredAlert,
    TxnRow,
)
from collector.correlate import Outcome
from collector.rules import LinkWatch
from collector.samples import FieldValue, MetricsSink, Sample

if TYPE_CHECKING:
    from collector.config import MetricsSection

logger = logging.getLogger(__name__)

# Measurement names: the dashboards and docs/metrics.md use these.
TRANSACTIONS = "transactions"
TERMINAL_STATUS = "terminal_status"
BATCHES = "batches"
SETTLEMENTS = "settlements"
ALERTS = "alerts"
CASES = "cases"
COLLECTOR = "collector"
FLEET = "fleet"

# What each measurement carries: (tags, fields). docs/metrics.md describes them; the
# dashboards' test fails on a panel that names anything else.
SCHEMA: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    TRANSACTIONS: (
        frozenset({"tid", "mid", "kind", "approved", "currency"}),
        frozenset({"count", "amount", "approval"}),
    ),
    TERMINAL_STATUS: (
        frozenset({"tid"}),
        frozenset({"link_up", "saf_pending", "serial_ok", "rssi_dbm", "host_rtt_ms", "battery"}),
    ),
    BATCHES: (frozenset({"tid", "mid", "result"}), frozenset({"count", "total", "closes"})),
    SETTLEMENTS: (
        frozenset({"outcome", "mid", "bank_code"}),
        frozenset({"count", "success", "amount", "expected_net", "net", "latency_s"}),
    ),
    ALERTS: (
        frozenset({"type", "severity", "cause", "state"}),
        frozenset({"count", "amount_at_risk", "alert_id", "summary", "tid", "mid", "bank_code"}),
    ),
    CASES: (
        frozenset({"state", "cause"}),
        frozenset({"count", "amount", "oldest_age_s", "sla_breached"}),
    ),
    COLLECTOR: (
        frozenset({"collector"}),
        frozenset(
            {
                "received",
                "stored",
                "dead_letters",
                "lag_s",
                "mqtt_connected",
                "alerts_fired",
                "alerts_resolved",
                "metrics_written",
                "metrics_dropped",
                "metrics_buffered",
            }
        ),
    ),
    FLEET: (
        frozenset({"collector"}),
        frozenset({"terminals", "online", "offline", "links_down", "saf_pending", "alerts_open"}),
    ),
}

# Settlement outcomes that count against the success rate; SETTLED counts for it. Pending,
# cancelled and not-expected outcomes are no verdict on the money and count for neither.
FAILURES = frozenset(
    {
        Outcome.FAILED,
        Outcome.RETURNED,
        Outcome.OVERDUE,
        Outcome.MISMATCH,
        Outcome.DUPLICATE,
        Outcome.REVERSED_BUT_SETTLED,
        Outcome.ORPHAN,
        Outcome.UNEXPECTED,
    }
)


@dataclass(frozen=True, slots=True)
class CaseGauge:
    """The re-remittance cases in one state with one cause, at one moment (issue 6)."""

    state: str  # OPEN, VERIFYING, SUBMITTED, BANK_PROCESSING, REMITTED, CONFIRMED ...
    cause: str  # a contract cause: NETWORK, ACCOUNT_INFO ...
    count: int
    amount: int  # minor units owed to the merchants in these cases
    oldest_age_s: float  # the oldest of them, seconds since it was opened
    sla_breached: int  # how many are held in this state longer than its SLA


class FleetView(Protocol):
    """What the alert engine knows of the terminals (collector.alerts.AlertEngine)."""

    @property
    def heard(self) -> dict[str, float]:
        """tid -> when its latest status came, on `monotonic`."""
        ...

    @property
    def links(self) -> LinkWatch: ...

    def monotonic(self) -> float:
        """The engine's monotonic clock."""
        ...

    @property
    def open(self) -> set[str]:
        """Fingerprints of the open alerts."""
        ...


class NoMetrics:
    """The sink when no metrics are configured: samples go nowhere, at no cost."""

    def start(self) -> None:
        return None

    def submit(self, sample: Sample) -> None:
        return None

    def counters(self) -> dict[str, int]:
        return {}

    def close(self, timeout: float) -> None:
        return None


def metrics_sink(section: MetricsSection) -> MetricsSink:
    """The InfluxDB sink when `[metrics] url` is set, else `NoMetrics`."""
    if section.url is None:
        return NoMetrics()
    from collector.influx import InfluxSink  # noqa: PLC0415 - loads the client library

    return InfluxSink(section)


def _tags(**values: str | None) -> dict[str, str]:
    """Tags without the empty ones (line protocol has no empty tag value)."""
    return {key: value for key, value in values.items() if value}


def _fields(**values: FieldValue | None) -> dict[str, FieldValue]:
    return {key: value for key, value in values.items() if value is not None}


class Recorder:
    """Turns the collector's facts, alerts and health into samples for a sink."""

    def __init__(
        self,
        sink: MetricsSink,
        clock: Callable[[], datetime],
        collector_id: str,
        *,
        silent_after_s: float,
    ) -> None:
        self.sink = sink
        self.clock = clock
        self.collector_id = collector_id
        self.silent_after_s = silent_after_s  # no status for this long: offline
        # No sample of every row is built for a sink that takes none.
        self._quiet = isinstance(sink, NoMetrics)

    # --- hooks ----------------------------------------------------------------------------

    def fact(self, table: str, row: FactRow) -> None:
        """A new row of a table the alert engine follows (its `on_fact` hook)."""
        if self._quiet:
            return
        try:
            sample = self._fact(row)
        except Exception:  # a row the metrics cannot read must not stop the alert engine
            logger.exception("metrics: cannot record %s row %s", table, row.id)
            return
        if sample is not None:
            self.sink.submit(sample)

    def _fact(self, row: FactRow) -> Sample | None:
        match row:
            case TxnRow():
                return self._transaction(row)
            case StatusRow():
                return self._status(row)
            case BatchRow():
                return self._batch(row)
            case OutcomeRow():
                return self._outcome(row)
        return None  # conflicts: no metric

    def alert(self, row: StoredAlert) -> None:
        """An alert fired or resolved (the engine's `on_alert` hook): one point, also an
        annotation on the dashboards."""
        try:
            sample = self._alert(row)
        except Exception:  # as for facts: metrics never stop the alert engine
            logger.exception("metrics: cannot record alert %s", row.alert_id)
            return
        self.sink.submit(sample)

    def _alert(self, row: StoredAlert) -> Sample:
        state = "resolved" if row.status == "resolved" else "firing"
        return Sample(
            ALERTS,
            _tags(
                type=row.type.value,
                severity=row.severity.value,
                cause=row.cause.value,
                state=state,
            ),
            _fields(
                count=1,
                amount_at_risk=row.amount_at_risk,
                alert_id=row.alert_id,
                summary=row.summary,
                tid=row.tid,
                mid=row.mid,
                bank_code=row.bank_code,
            ),
            self.clock(),
        )

    def cases(self, gauges: Iterable[CaseGauge]) -> None:
        """Where the re-remittance cases stand, once a heartbeat: one point per (state,
        cause) that has cases. This is the hook for issue 6: its case store hands its
        gauges here from the collector's heartbeat; nothing calls it until cases exist.
        """
        now = self.clock()
        for gauge in gauges:
            self.sink.submit(
                Sample(
                    CASES,
                    {"state": gauge.state, "cause": gauge.cause},
                    {
                        "count": gauge.count,
                        "amount": gauge.amount,
                        "oldest_age_s": float(gauge.oldest_age_s),
                        "sla_breached": gauge.sla_breached,
                    },
                    now,
                )
            )

    def heartbeat(self, status: Mapping[str, Any], fleet: FleetView) -> None:
        """The collector's own health and its view of the fleet, once a heartbeat."""
        now = self.clock()
        counters = self.sink.counters()
        stored = sum(v for k, v in status.items() if k.startswith("stored.") and v is not None)
        self.sink.submit(
            Sample(
                COLLECTOR,
                {"collector": self.collector_id},
                _fields(
                    received=int(status.get("received", 0)),
                    stored=int(stored),
                    dead_letters=int(status.get("deadletters", 0)),
                    lag_s=float(status["lag_s"]) if status.get("lag_s") is not None else None,
                    # Connected to where messages come from: the broker, or with
                    # [ingest] source = "nats" the NATS cluster (the dashboards' field).
                    mqtt_connected=int(
                        bool(status.get("mqtt_connected", status.get("nats_connected")))
                    ),
                    alerts_fired=int(status.get("alerts_fired", 0)),
                    alerts_resolved=int(status.get("alerts_resolved", 0)),
                    metrics_written=counters.get("written", 0),
                    metrics_dropped=counters.get("dropped", 0),
                    metrics_buffered=counters.get("buffered", 0),
                ),
                now,
            )
        )
        # Copies: the alert engine's thread changes these while the heartbeat reads them.
        heard, links = dict(fleet.heard), dict(fleet.links.last)
        elapsed = fleet.monotonic()  # liveness as the engine measures it (AlertEngine.heard)
        silent = sum(1 for at in heard.values() if elapsed - at > self.silent_after_s)
        self.sink.submit(
            Sample(
                FLEET,
                {"collector": self.collector_id},
                {
                    "terminals": len(heard),
                    "online": len(heard) - silent,
                    "offline": silent,
                    "links_down": sum(1 for link_up, _ in links.values() if not link_up),
                    "saf_pending": sum(saf for _, saf in links.values()),
                    "alerts_open": len(fleet.open),
                },
                now,
            )
        )

    # --- the followed tables --------------------------------------------------------------

    def _transaction(self, row: TxnRow) -> Sample:
        approved = row.approved
        return Sample(
            TRANSACTIONS,
            _tags(
                tid=row.tid,
                mid=row.mid,
                kind=row.kind.value,
                approved="true" if approved else "false",
                currency=row.currency,
            ),
            {"count": 1, "amount": int(row.amount), "approval": int(approved)},
            self.clock(),
        )

    def _status(self, row: StatusRow) -> Sample:
        serial_ok = row.serial_ok
        return Sample(
            TERMINAL_STATUS,
            {"tid": row.tid},
            _fields(
                link_up=int(row.link_up),
                saf_pending=int(row.saf_pending),
                serial_ok=int(bool(serial_ok)) if serial_ok is not None else None,
                rssi_dbm=row.rssi_dbm,
                host_rtt_ms=row.host_rtt_ms,
                battery=row.battery_pct,
            ),
            self.clock(),
        )

    def _batch(self, row: BatchRow) -> Sample:
        return Sample(
            BATCHES,
            _tags(tid=row.tid, mid=row.mid, result=row.result),
            {"count": int(row.count), "total": int(row.total), "closes": 1},
            self.clock(),
        )

    def _outcome(self, row: OutcomeRow) -> Sample:
        outcome = row.outcome
        success: int | None = None
        if outcome is Outcome.SETTLED:
            success = 1
        elif outcome in FAILURES:
            success = 0
        latency: float | None = None
        settled_at, traded_at = row.settled_at, row.terminal_time
        if outcome is Outcome.SETTLED and settled_at is not None and traded_at is not None:
            latency = (settled_at - traded_at).total_seconds()
        return Sample(
            SETTLEMENTS,
            _tags(outcome=outcome.value, mid=row.mid, bank_code=row.bank_code),
            _fields(
                count=1,
                success=success,
                amount=row.amount,
                expected_net=row.expected_net,
                net=row.net_amount,
                latency_s=latency,
            ),
            self.clock(),
        )
