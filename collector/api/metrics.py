"""GET /metrics: Prometheus text, read from the database at each scrape.

Gauges rather than counters: each is what the database holds now (open alerts, cases,
rows stored), so several collectors on one database report the same figures and a
restart loses nothing. The collectors' lag comes from the liveness record each collector
writes every few seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.api.context import Services

# The posmon tables whose row counts are exported, by metric name.
_TABLES = {
    "posmon_transactions_stored": ("transactions", "Transactions stored."),
    "posmon_settlements_stored": ("settlements", "Settlement results stored."),
    "posmon_deadletters_stored": ("deadletters", "Dead letters stored."),
    "posmon_status_events_stored": ("status_events", "Terminal status messages stored."),
}


class DatabaseCollector(Collector):
    """The figures of one collector database, for prometheus_client's registry."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        counts = self.services.store.counts()
        for name, (table, text) in _TABLES.items():
            yield GaugeMetricFamily(name, text, value=counts[table])
        outcomes = GaugeMetricFamily(
            "posmon_transactions_by_outcome", "Transactions by outcome.", labels=["outcome"]
        )
        for key, value in counts.items():
            if key.startswith("outcome."):
                outcomes.add_metric([key.removeprefix("outcome.")], value)
        yield outcomes
        alerts = GaugeMetricFamily(
            "posmon_alerts_open", "Open alerts (firing or acknowledged) by type.", labels=["type"]
        )
        for alert_type, value in sorted(self.services.alerts.counts().items()):
            alerts.add_metric([alert_type], value)
        yield alerts
        cases = GaugeMetricFamily("posmon_cases", "Re-remittance cases by state.", labels=["state"])
        for state, value in sorted(self.services.cases.counts().items()):
            cases.add_metric([state], value)
        yield cases
        yield from self._collectors()

    def _collectors(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "posmon_collector_lag_seconds",
            "Age of the newest message at its last ingest, per collector.",
            labels=["collector"],
        )
        seen = GaugeMetricFamily(
            "posmon_collector_seen_seconds_ago",
            "Seconds since the collector last recorded itself alive.",
            labels=["collector"],
        )
        now = datetime.now(UTC)
        for record in self.services.store.collectors():
            value = record.counters.get("lag_s")
            if isinstance(value, int | float):
                lag.add_metric([record.collector_id], float(value))
            seen.add_metric([record.collector_id], (now - record.seen_at).total_seconds())
        yield lag
        yield seen


def registry(services: Services) -> CollectorRegistry:
    """A registry of its own (not the process-wide default) holding the database's figures."""
    made = CollectorRegistry(auto_describe=False)
    made.register(DatabaseCollector(services))
    return made


def exposition(made: CollectorRegistry) -> tuple[bytes, str]:
    """The text to serve and its content type."""
    return generate_latest(made), CONTENT_TYPE_LATEST
