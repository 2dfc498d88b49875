"""The overdue watch: deadlines are stored, so a restart loses none of them.

The watch marks every PENDING transaction whose deadline has passed as OVERDUE, reports
it, and sleeps until the next deadline (at most `max_sleep_s`, so deadlines stored by
other collectors or by the ingest meanwhile are seen quickly).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from collector.store import OutcomeChange, Store

logger = logging.getLogger(__name__)


class OverdueWatch:
    """Turns passed deadlines into OVERDUE outcomes, reported through `on_changes`."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime],
        on_changes: Callable[[list[OutcomeChange]], None],
        *,
        max_sleep_s: float = 0.2,
        scale: float = 1.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_changes = on_changes
        self.max_sleep_s = max_sleep_s
        self.scale = scale
        self.reported = 0

    def check(self) -> list[OutcomeChange]:
        """Mark and report what is overdue now; returns the changes."""
        changes: list[OutcomeChange] = []
        while True:
            batch = self.store.mark_overdue(self.clock())
            changes.extend(batch)
            if len(batch) < 500:
                break
        if changes:
            self.reported += len(changes)
            self.on_changes(changes)
        return changes

    def run(self, stop: threading.Event) -> None:
        """Check, then sleep until the next deadline or `max_sleep_s`, until stopped."""
        while not stop.is_set():
            try:
                self.check()
                wait = self.max_sleep_s
                upcoming = self.store.next_deadline()
                if upcoming is not None:
                    virtual = (upcoming - self.clock()).total_seconds()
                    wait = min(wait, max(virtual / self.scale, 0.0))
            except Exception:
                logger.exception("overdue check failed; trying again")
                wait = 1.0
            stop.wait(wait)
