"""Firing and resolving: a condition becomes a stored alert once, and resolves once.

Every part of alerting that decides a condition holds (or has cleared) goes through
here: the open fingerprints keep a condition that persists from firing again, muting is
looked up, and each stored change is logged, queued for its channels (`on_queued`) and
handed to the metrics (`on_alert`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from collector.alerts.mute import Mutes
from collector.alerts.rows import StoredAlert
from collector.alerts.store import AlertStore
from collector.rules import Candidate

logger = logging.getLogger(__name__)


class Lifecycle:
    """Fires and resolves alerts in the store; knows which conditions are open."""

    def __init__(
        self,
        store: AlertStore,
        mutes: Mutes,
        on_queued: Callable[[], None],
        on_alert: Callable[[StoredAlert], None],
    ) -> None:
        self.store = store
        self.mutes = mutes
        self.on_queued = on_queued
        self.on_alert = on_alert
        # Fingerprints of the open alerts, refreshed at each sweep: a status or batch that
        # clears nothing costs no query, and a condition that persists is not re-fired.
        self.open: set[str] = set()
        self.fired = 0
        self.resolved = 0

    def refresh(self) -> None:
        self.open = self.store.open_fingerprints()

    def fire(
        self,
        candidate: Candidate,
        now: datetime,
        *,
        group_id: str | None = None,
        case_id: str | None = None,
        alert_id: str | None = None,
    ) -> StoredAlert | None:
        """Store the alert of a condition not open yet; the stored alert, or None."""
        if candidate.fingerprint in self.open:
            return None
        silence = self.mutes.silence_for(candidate, now)
        row = self.store.fire(
            candidate, now, silence=silence, group_id=group_id, case_id=case_id, alert_id=alert_id
        )
        self.open.add(candidate.fingerprint)
        if row is not None:
            self.fired += 1
            logger.warning(
                "alert %s %s (%s): %s%s",
                candidate.type.value,
                row.alert_id,
                candidate.cause.value,
                candidate.summary,
                f" [muted: {silence.reason}]" if silence else "",
            )
            self.on_queued()
            self.on_alert(row)
        return row

    def resolve(self, fingerprint: str, now: datetime, note: str) -> None:
        """Resolve the open alert of a condition, if there is one."""
        if fingerprint not in self.open:
            return
        self.open.discard(fingerprint)
        row = self.store.resolve(fingerprint, now, note)
        if row is not None:
            self.resolved += 1
            logger.info("alert %s %s resolved: %s", row.type.value, row.alert_id, note)
            self.on_queued()
            self.on_alert(row)
