"""Which conditions are alerts: types, severities, fingerprints, and the stateful detectors.

Nothing here touches the database or the network. `collector.alerts` feeds these rules
with stored facts and turns their verdicts into stored, notified alerts.

A fingerprint names a condition, so one condition has at most one open alert:
`SETTLEMENT_FAILED:{tid}:{rrn}`, `ORPHAN_SETTLEMENT:{settlement_id}`,
`TERMINAL_OFFLINE:{tid}`, `BANK_OUTAGE:{bank_code}`, `BATCH_NOT_CLOSED:{tid}:{batch}` ...
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

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

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.type]


class LinkWatch:
    """Since when each terminal's host link has been in trouble (LINK=DOWN or SAF high)."""

    def __init__(self, saf_threshold: int) -> None:
        self.saf_threshold = saf_threshold
        self.trouble_since: dict[str, datetime] = {}
        self.last: dict[str, tuple[bool, int]] = {}  # tid -> (link_up, saf)

    def feed(self, tid: str, link_up: bool, saf: int, at: datetime) -> bool:
        """Take one status; returns True when the trouble has just cleared."""
        self.last[tid] = (link_up, saf)
        if not link_up or saf >= self.saf_threshold:
            self.trouble_since.setdefault(tid, at)
            return False
        return self.trouble_since.pop(tid, None) is not None

    def due(self, now: datetime, hold_s: float) -> list[tuple[str, datetime]]:
        """Terminals in trouble for at least `hold_s`, with since when."""
        return [
            (tid, since)
            for tid, since in self.trouble_since.items()
            if (now - since).total_seconds() >= hold_s
        ]


@dataclass(slots=True)
class _Rates:
    recent: deque[bool]
    baseline_declines: int = 0
    baseline_total: int = 0
    spiking: bool = False


class DeclineWatch:
    """A decline rate far above its own baseline, per key (a terminal or a merchant).

    The last `window` transactions are compared with every earlier one (the baseline).
    A spike is called when the baseline holds at least `baseline_min` transactions, the
    window is full, and the window's rate is at least `factor` times the baseline's and at
    least `min_rate`. It ends when the window's rate falls below half that threshold.
    """

    def __init__(self, window: int, baseline_min: int, factor: float, min_rate: float) -> None:
        self.window = window
        self.baseline_min = baseline_min
        self.factor = factor
        self.min_rate = min_rate
        self.keys: dict[str, _Rates] = {}

    def feed(self, key: str, declined: bool) -> tuple[str, float, float] | None:
        """Take one transaction; returns ("start"|"end", rate, baseline) on a change."""
        rates = self.keys.get(key)
        if rates is None:
            rates = self.keys[key] = _Rates(deque(maxlen=self.window))
        if len(rates.recent) == self.window:
            # The oldest recent transaction becomes part of the baseline.
            rates.baseline_declines += rates.recent[0]
            rates.baseline_total += 1
        rates.recent.append(declined)
        if rates.baseline_total < self.baseline_min or len(rates.recent) < self.window:
            return None
        rate = sum(rates.recent) / self.window
        baseline = rates.baseline_declines / rates.baseline_total
        threshold = max(baseline * self.factor, self.min_rate)
        if not rates.spiking and rate >= threshold:
            rates.spiking = True
            return "start", rate, baseline
        if rates.spiking and rate < threshold / 2:
            rates.spiking = False
            return "end", rate, baseline
        return None
