"""The alert engine: stored facts in, classified alerts with a lifecycle out.

It only dispatches. The feed (`feed`) hands it each new row of the followed tables; it
passes each to the part whose concern it is (`settlements`, `terminals`, `batches`,
`transactions`, `cases`, `group`), and every verdict goes through `lifecycle` (fire once
per fingerprint, muted by `mute`, resolved once). The ingest wakes it after each commit,
so an alert follows its cause within milliseconds; a sweep every `alerts.sweep_s`
checks what time alone decides (no heartbeat, a link down for N s, a batch not closed by
the cut-off, an outage that has passed, a case past its SLA, re-notification).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from collector.alerts.batches import BatchWatch, OpenBatch
from collector.alerts.cases import CaseLink
from collector.alerts.feed import Feed
from collector.alerts.group import BankOutages
from collector.alerts.lifecycle import Lifecycle
from collector.alerts.mute import Mutes, declare_maintenance
from collector.alerts.rows import (
    BatchRow,
    ConflictRow,
    FactRow,
    OutcomeRow,
    StatusRow,
    StoredAlert,
    TxnRow,
)
from collector.alerts.settlements import LATE_CREDIT_OUTCOMES, SettlementAlerts
from collector.alerts.store import AlertStore, new_alert_id
from collector.alerts.terminals import TerminalWatch
from collector.alerts.transactions import TransactionWatch
from collector.config import CollectorConfig
from collector.correlate import Outcome
from collector.rules import (
    CLEARED_BY_ANY_CHANGE,
    OUTCOME_ALERT,
    AlertType,
    LinkWatch,
    txn_fingerprint,
)
from posmon.clockwatch import ClockWatch

if TYPE_CHECKING:
    from collector.casestore import CaseStore

logger = logging.getLogger(__name__)


class AlertEngine:
    """Turns stored facts into alerts; see the module docstring."""

    def __init__(
        self,
        config: CollectorConfig,
        store: AlertStore,
        clock: Callable[[], datetime],
        *,
        on_queued: Callable[[], None] = lambda: None,
        on_fact: Callable[[str, FactRow], None] = lambda table, row: None,
        on_alert: Callable[[StoredAlert], None] = lambda row: None,
        cases: CaseStore | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.settings = config.alerts
        self.store = store
        self.clock = clock
        self.on_queued = on_queued
        self.wake = threading.Event()  # set by the ingest after each commit
        self.monotonic = monotonic
        # A step of this machine's wall clock is logged and counted, and changes nothing.
        self.clock_watch = ClockWatch(wall=wall, monotonic=monotonic)
        self.mutes = Mutes()
        self.lifecycle = Lifecycle(store, self.mutes, on_queued, on_alert)
        self.feed = Feed(store.facts, self, clock, self.wake, on_fact)
        self.outages = BankOutages(store, self.settings)
        self.settlements = SettlementAlerts(config, store.facts, self.outages, self.mutes)
        self.terminals = TerminalWatch(self.settings, self.lifecycle, monotonic)
        self.batches = BatchWatch(config, self.lifecycle)
        self.transactions = TransactionWatch(self.settings, self.lifecycle, clock)
        self.cases = (
            CaseLink(config, cases, store.facts, self.lifecycle) if cases is not None else None
        )
        self._next_sweep = 0.0

    # --- what the collector and the metrics read ----------------------------------------

    @property
    def heard(self) -> dict[str, float]:
        """tid -> when its latest status came, on `monotonic` (the terminals' liveness)."""
        return self.terminals.heard

    @property
    def links(self) -> LinkWatch:
        return self.terminals.links

    @property
    def open(self) -> set[str]:
        """Fingerprints of the open alerts."""
        return self.lifecycle.open

    @property
    def open_batches(self) -> dict[tuple[str, str], OpenBatch]:
        return self.batches.open

    @property
    def fired(self) -> int:
        return self.lifecycle.fired

    @property
    def resolved(self) -> int:
        return self.lifecycle.resolved

    # --- start-up and the loop ----------------------------------------------------------

    def start(self) -> None:
        """Load the cursors (or start at the end of each table) and the terminals' state."""
        facts = self.store.facts
        self.feed.start()
        if self.cases is not None:
            self.cases.start()
        self.lifecycle.refresh()
        seeded_upto = facts.end_positions()["transactions"]  # before the batches are read
        self.batches.start(facts.unclosed_batches(), seeded_upto)
        self.terminals.start(facts.latest_statuses())
        declare_maintenance(self.store, self.settings.maintenance, self.clock())

    def run(self, stop: threading.Event) -> None:
        """Follow the tables and sweep until `stop` is set."""
        self.start()
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                logger.exception("alert engine step failed; trying again")
                stop.wait(1.0)
            self.wake.wait(self.settings.sweep_s)
            self.wake.clear()
        self.feed.stop()

    def step(self) -> None:
        """Take every new fact, and sweep when it is time."""
        while self.feed.follow():
            pass
        if time.monotonic() >= self._next_sweep:
            self.sweep()
            self._next_sweep = time.monotonic() + self.settings.sweep_s

    def sweep(self) -> None:
        """What time alone decides; between its stages, a woken failure does not wait."""
        self.lifecycle.refresh()
        self.mutes.refresh(self.store.silences_in_force(self.clock()))
        self.clock_watch.check()
        now = self.clock()
        elapsed = self.monotonic()
        self.terminals.offline(now, elapsed, self.store.facts.offline_agents())
        self.feed.outcomes_if_woken()
        self.terminals.links_down(now, elapsed)
        self.feed.outcomes_if_woken()
        self.batches.unclosed(now)
        for fingerprint, note in self.outages.over(now):
            self.lifecycle.resolve(fingerprint, now, note)
        self.feed.outcomes_if_woken()
        if self.cases is not None:
            self.cases.slas(now)
            self.feed.outcomes_if_woken()
        for row in self.store.renotify_due(timedelta(minutes=self.settings.renotify_min)):
            logger.info(
                "alert %s (%s) still unacknowledged: notified again", row.alert_id, row.type
            )
            self.on_queued()

    # --- each followed table's rows (collector.alerts.feed.Handlers) --------------------

    def outcome(self, row: OutcomeRow) -> None:
        """A settlement outcome: what it clears, its case, its alert, its bank's outage."""
        outcome, previous = row.outcome, row.previous
        now = self.clock()
        if row.transaction_id is not None and row.tid and row.rrn:
            if previous is not None and previous != outcome:
                cleared = OUTCOME_ALERT.get(previous)
                if cleared in CLEARED_BY_ANY_CHANGE:
                    note = f"the transaction is now {outcome.value}"
                    self.lifecycle.resolve(txn_fingerprint(cleared, row.tid, row.rrn), now, note)
            if row.settlement_id:
                self.lifecycle.resolve(
                    f"{AlertType.ORPHAN_SETTLEMENT.value}:{row.settlement_id}",
                    now,
                    f"matched to TID {row.tid} RRN {row.rrn}",
                )
                if self.cases is not None:
                    self.cases.settled(row, now)
        if previous is Outcome.PENDING and outcome in LATE_CREDIT_OUTCOMES and row.credited_late:
            self._credited_late(row, now)
        alert_type = OUTCOME_ALERT.get(outcome)
        if alert_type is None:
            return
        if (
            outcome is Outcome.ORPHAN
            and self.cases is not None
            and self.cases.by_reference(row, now)
        ):
            return  # a re-remittance under its own RRN, naming its case: no orphan
        candidate, txn = self.settlements.candidate(alert_type, outcome, row, now)
        # A failure about the merchant or its account says nothing about the bank.
        at_bank = self.outages.counts(candidate)
        group_id = self.outages.open_group(str(candidate.bank_code)) if at_bank else None
        case_id = None
        alert_id = new_alert_id()  # made first, so the case opened before it can name it
        if self.cases is not None and txn is not None:
            case_id = self.cases.open(alert_type, txn, candidate, now, alert_id)
        fired = self.lifecycle.fire(
            candidate, now, group_id=group_id, case_id=case_id, alert_id=alert_id
        )
        if fired and at_bank and group_id is None and candidate.bank_code:
            outage = self.outages.outage(candidate, now)
            group = self.lifecycle.fire(outage.candidate, now) if outage else None
            if outage is not None and group is not None:
                self.outages.join(group.alert_id, outage, now)

    def _credited_late(self, row: OutcomeRow, now: datetime) -> None:
        """SETTLEMENT_OVERDUE for a credit settled after the deadline that reached the
        collector before the overdue watch saw the deadline pass (the sale, or the credit,
        came late): the money was late all the same. Resolved at once: it is paid."""
        candidate, _ = self.settlements.candidate(
            AlertType.SETTLEMENT_OVERDUE, Outcome.OVERDUE, row, now
        )
        if self.lifecycle.fire(candidate, now) is not None and row.settled_at is not None:
            settled = row.settled_at.isoformat(timespec="seconds")
            self.lifecycle.resolve(candidate.fingerprint, now, f"credited late, at {settled}")

    def status(self, row: StatusRow) -> None:
        self.terminals.status(row, self.clock())

    def batch(self, row: BatchRow) -> None:
        self.batches.close(row, self.clock())

    def txn(self, row: TxnRow) -> None:
        self.batches.sale(row)
        self.transactions.txn(row)

    def conflict(self, row: ConflictRow) -> None:
        self.transactions.conflict(row)
