"""Muting: silences and maintenance windows, as Alertmanager's silences are.

A muted alert is stored and shown, but not notified. A maintenance window declared for a
bank is also evidence: a failure at that bank during it is the bank's doing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from collector.alertconfig import MaintenanceWindow
from collector.alerts.rows import StoredSilence
from collector.alerts.store import AlertStore
from collector.rules import Candidate


class Mutes:
    """The silences and maintenance windows not yet over, refreshed at each sweep."""

    def __init__(self) -> None:
        self.silences: list[StoredSilence] = []

    def refresh(self, silences: list[StoredSilence]) -> None:
        self.silences = silences

    def silence_for(self, candidate: Candidate, at: datetime) -> StoredSilence | None:
        """The silence or maintenance window muting this alert at `at` (each matcher a
        silence sets must match; those it leaves empty match anything)."""
        return next(
            (row for row in self.silences if row.covers(at) and row.matches(candidate)), None
        )

    def maintenance_for(self, bank_code: str, at: datetime) -> str | None:
        """The reason of a maintenance window declared for this bank at `at`."""
        for row in self.silences:
            if row.covers(at) and row.maintenance and row.bank_code == bank_code:
                return row.reason
        return None


def declare_maintenance(
    store: AlertStore, windows: Iterable[MaintenanceWindow], now: datetime
) -> None:
    """Store the configuration's maintenance windows (same window, same id: replaced)."""
    for window in windows:
        store.add_silence(
            silence_id=f"config-{window.bank_code or window.mid or window.tid}-"
            f"{int(window.start.timestamp())}",
            starts_at=window.start,
            ends_at=window.end,
            reason=window.reason,
            created_by="configuration",
            now=now,
            bank_code=window.bank_code,
            mid=window.mid,
            tid=window.tid,
            maintenance=True,
        )
