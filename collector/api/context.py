"""What the API's routes work on: the collector's stores over one database, and its clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from collector.alerts import AlertStore
from collector.casestore import CaseStore
from collector.store import IngestReport, Store
from collector.terminals import TerminalStore
from collector.tokens import TokenStore


@dataclass(frozen=True, slots=True)
class Services:
    """The stores the routes use; built once per application from the collector's Store."""

    store: Store
    alerts: AlertStore
    cases: CaseStore
    terminals: TerminalStore
    tokens: TokenStore
    on_report: Callable[[IngestReport], None]

    @classmethod
    def of(cls, store: Store, on_report: Callable[[IngestReport], None]) -> Services:
        return cls(
            store=store,
            # No channels: acknowledging or silencing queues no notification.
            alerts=AlertStore(store.engine, store.collector_id, [], reads=store.reads),
            cases=CaseStore(store.engine, reads=store.reads),
            terminals=TerminalStore(store.reads),
            tokens=TokenStore(store.engine, reads=store.reads),
            on_report=on_report,
        )

    def now(self) -> datetime:
        """The collector's time (a simulation's accelerated clock, or real time)."""
        return self.store.clock()
