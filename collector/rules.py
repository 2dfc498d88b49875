"""Which conditions are alerts: types, severities, fingerprints, and the stateful detectors.

Nothing here touches the database or the network. `collector.alerts` feeds these rules
with stored facts and turns their verdicts into stored, notified alerts.

A fingerprint names a condition, so one condition has at most one open alert:
`SETTLEMENT_FAILED:{tid}:{rrn}`, `ORPHAN_SETTLEMENT:{settlement_id}`,
`TERMINAL_OFFLINE:{tid}`, `BANK_OUTAGE:{bank_code}`, `BATCH_NOT_CLOSED:{tid}:{batch}` ...
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from collector.correlate import Outcome
from posmon.wire.models import Cause, Severity


class AlertType(StrEnum):
    """Every alert posmon raises (`posmon.alert/1` `type`, and the topic's last segment)."""

    SETTLEMENT_FAILED = "SETTLEMENT_FAILED"
    SETTLEMENT_RETURNED = "SETTLEMENT_RETURNED"
    SETTLEMENT_OVERDUE = "SETTLEMENT_OVERDUE"
    AMOUNT_MISMATCH = "AMOUNT_MISMATCH"
    DUPLICATE_SETTLEMENT = "DUPLICATE_SETTLEMENT"
    ORPHAN_SETTLEMENT = "ORPHAN_SETTLEMENT"
    REVERSED_BUT_SETTLED = "REVERSED_BUT_SETTLED"
    TERMINAL_OFFLINE = "TERMINAL_OFFLINE"
    HOST_LINK_DOWN = "HOST_LINK_DOWN"
    BATCH_NOT_CLOSED = "BATCH_NOT_CLOSED"
    BATCH_UNBALANCED = "BATCH_UNBALANCED"
    BANK_OUTAGE = "BANK_OUTAGE"
    DECLINE_SPIKE = "DECLINE_SPIKE"
    CASE_SLA_BREACHED = "CASE_SLA_BREACHED"  # a re-remittance case held in a state too long
    # A transaction's business key claimed again with other money or another card.
    CONFLICTING_TRANSACTION = "CONFLICTING_TRANSACTION"


SEVERITY: dict[AlertType, Severity] = {
    AlertType.SETTLEMENT_FAILED: Severity.CRITICAL,
    AlertType.SETTLEMENT_RETURNED: Severity.CRITICAL,
    AlertType.SETTLEMENT_OVERDUE: Severity.MAJOR,
    AlertType.AMOUNT_MISMATCH: Severity.MAJOR,
    AlertType.DUPLICATE_SETTLEMENT: Severity.MINOR,
    AlertType.ORPHAN_SETTLEMENT: Severity.MINOR,
    AlertType.REVERSED_BUT_SETTLED: Severity.MAJOR,
    AlertType.TERMINAL_OFFLINE: Severity.MAJOR,
    AlertType.HOST_LINK_DOWN: Severity.MAJOR,
    AlertType.BATCH_NOT_CLOSED: Severity.MAJOR,
    AlertType.BATCH_UNBALANCED: Severity.MAJOR,
    AlertType.BANK_OUTAGE: Severity.CRITICAL,
    AlertType.DECLINE_SPIKE: Severity.MINOR,
    AlertType.CASE_SLA_BREACHED: Severity.MAJOR,
    AlertType.CONFLICTING_TRANSACTION: Severity.MAJOR,
}

# A transaction's outcome that is an alert of its own.
OUTCOME_ALERT: dict[Outcome, AlertType] = {
    Outcome.FAILED: AlertType.SETTLEMENT_FAILED,
    Outcome.RETURNED: AlertType.SETTLEMENT_RETURNED,
    Outcome.OVERDUE: AlertType.SETTLEMENT_OVERDUE,
    Outcome.MISMATCH: AlertType.AMOUNT_MISMATCH,
    Outcome.DUPLICATE: AlertType.DUPLICATE_SETTLEMENT,
    Outcome.ORPHAN: AlertType.ORPHAN_SETTLEMENT,
    Outcome.REVERSED_BUT_SETTLED: AlertType.REVERSED_BUT_SETTLED,
}
# Conditions that clear as soon as the transaction's outcome moves on (the late credit
# arrives, the void cancels what was owed, a failure replaces the wait). The others
# (a mismatch, a duplicate, a reversed-but-settled) need a person or a case to clear.
CLEARED_BY_ANY_CHANGE = frozenset(
    {AlertType.SETTLEMENT_OVERDUE, AlertType.SETTLEMENT_FAILED, AlertType.SETTLEMENT_RETURNED}
)
# Failures that count towards a bank outage.
BANK_FAILURES = frozenset({AlertType.SETTLEMENT_FAILED, AlertType.SETTLEMENT_OVERDUE})


def txn_fingerprint(alert_type: AlertType, tid: str, rrn: str) -> str:
    return f"{alert_type.value}:{tid}:{rrn}"


T = TypeVar("T")


def densest_window(
    moments: Iterable[tuple[datetime, T]], at: datetime, window: timedelta
) -> list[T]:
    """The most of `moments` that lie together within one `window` that also holds `at`.

    A bank outage is "this many failures within this window", measured on the failures'
    own times (when the settlement failed, when the credit fell due), not on when the
    collector heard of them: a busy or catching-up collector hears them later and closer
    together, and the verdict must not depend on that. Ties go to the earliest window.
    """
    ordered = sorted(
        (item for item in moments if abs(item[0] - at) < window), key=lambda item: item[0]
    )
    # Every window holding `at` slides, without losing a member, to start at a moment
    # before `at` or at `at` itself: those are the windows to try.
    starts = [moment for moment, _ in ordered if moment < at] + [at]
    best: list[T] = []
    for start in starts:
        members = [value for moment, value in ordered if start <= moment < start + window]
        if len(members) > len(best):
            best = members
    return best


@dataclass(frozen=True, slots=True)
class Candidate:
    """A condition that holds now: fired as a new alert, or updates the open one."""

    type: AlertType
    fingerprint: str
    cause: Cause
    summary: str
    tid: str | None = None
    mid: str | None = None
    rrn: str | None = None
    bank_code: str | None = None
    amount_at_risk: int | None = None
    currency: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    occurred_at: datetime | None = None  # when it happened by its own record (alerts.occurred_at)

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.type]


class LinkWatch:
    """Since when each terminal's host link has been in trouble (LINK=DOWN or SAF high).

    How long is measured on the collector's monotonic clock (`heard`: when each status
    was taken), so that neither the agent's clock nor a step of the collector's own wall
    clock can shorten or lengthen it; `since` (the terminal's time of the first status in
    trouble) is only shown.
    """

    def __init__(self, saf_threshold: int) -> None:
        self.saf_threshold = saf_threshold
        self.trouble_since: dict[str, tuple[datetime, float]] = {}  # tid -> (since, heard)
        self.last: dict[str, tuple[bool, int]] = {}  # tid -> (link_up, saf)

    def feed(self, tid: str, link_up: bool, saf: int, at: datetime, heard: float) -> bool:
        """Take one status, the agent's time `at`, taken at monotonic time `heard`; returns
        True when the trouble has just cleared."""
        self.last[tid] = (link_up, saf)
        if not link_up or saf >= self.saf_threshold:
            self.trouble_since.setdefault(tid, (at, heard))
            return False
        return self.trouble_since.pop(tid, None) is not None

    def due(self, elapsed: float, hold_s: float) -> list[tuple[str, datetime]]:
        """Terminals in trouble for at least `hold_s` at monotonic time `elapsed`, with
        since when (the terminal's time)."""
        return [
            (tid, since)
            for tid, (since, heard) in self.trouble_since.items()
            if elapsed - heard >= hold_s
        ]


# A spike's window must be this improbable under the baseline's rate (a one-sided binomial
# test). Each transaction tests a window, so the chance of a false spike grows with the
# traffic, not with the fleet's size or the run's length alone: a thousand terminals of
# 200 transactions a day (about 20,000 independent windows) make one every few months.
SPIKE_SIGNIFICANCE = 1e-6


@dataclass(slots=True)
class _Rates:
    recent: deque[bool]
    baseline_declines: int = 0
    baseline_total: int = 0
    spiking: bool = False
    elevated: bool = False  # the window at or above the threshold: the baseline waits


def binomial_tail(n: int, k: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how likely k or more declines of n are at rate p."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    return min(1.0, sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


class DeclineWatch:
    """A decline rate far above its own baseline, per key (a terminal or a merchant).

    The last `window` transactions are compared with every earlier one (the baseline).
    Minimum evidence, so that a small fleet or a short run gives no alert rather than a
    wrong one: the baseline holds at least `baseline_min` transactions and the window is
    full. A spike is then called when the window's rate is at least `factor` times the
    baseline's and at least `min_rate`, and the window's declines would happen by chance
    at the baseline's rate with a probability below `SPIKE_SIGNIFICANCE`. The baseline's
    rate is estimated as (declines + 1) / (transactions + 2), so a short baseline without
    a decline is not taken for a rate of zero. While the window's rate is at or above the
    threshold (a spike suspected or called), the transactions leaving the window do not
    join the baseline: a spike must not become its own baseline before it is called. The
    spike ends when the window's rate falls below half the threshold.
    """

    def __init__(
        self,
        window: int,
        baseline_min: int,
        factor: float,
        min_rate: float,
        significance: float = SPIKE_SIGNIFICANCE,
    ) -> None:
        self.window = window
        self.baseline_min = baseline_min
        self.factor = factor
        self.min_rate = min_rate
        self.significance = significance
        self.keys: dict[str, _Rates] = {}

    def feed(self, key: str, declined: bool) -> tuple[str, float, float] | None:
        """Take one transaction; returns ("start"|"end", rate, baseline) on a change."""
        rates = self.keys.get(key)
        if rates is None:
            rates = self.keys[key] = _Rates(deque(maxlen=self.window))
        if len(rates.recent) == self.window and not rates.elevated:
            # The oldest recent transaction becomes part of the baseline.
            rates.baseline_declines += rates.recent[0]
            rates.baseline_total += 1
        rates.recent.append(declined)
        if rates.baseline_total < self.baseline_min or len(rates.recent) < self.window:
            return None
        declines = sum(rates.recent)
        rate = declines / self.window
        baseline = rates.baseline_declines / rates.baseline_total
        threshold = max(baseline * self.factor, self.min_rate)
        rates.elevated = rate >= threshold
        if not rates.spiking and rate >= threshold:
            expected = (rates.baseline_declines + 1) / (rates.baseline_total + 2)
            if binomial_tail(self.window, declines, expected) < self.significance:
                rates.spiking = True
                return "start", rate, baseline
        if rates.spiking and rate < threshold / 2:
            rates.spiking = False
            return "end", rate, baseline
        return None
