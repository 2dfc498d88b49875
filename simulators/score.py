"""Scoring a run's alerts against what was injected. Pure: lines and rows in, a score out.

Each injected fault expects one alert, named by a key:

| injected (ground truth)                  | expected alert                          |
|------------------------------------------|-----------------------------------------|
| FAILED, RETURNED, MISMATCH, DUPLICATE    | SETTLEMENT_FAILED ... for (tid, rrn)    |
| MISSING (never settled), LATE            | SETTLEMENT_OVERDUE for (tid, rrn)       |
| VOID_IGNORED (credited despite its void) | REVERSED_BUT_SETTLED for (tid, rrn)     |
| ORPHAN                                   | ORPHAN_SETTLEMENT for its settlement id |
| BANK_OUTAGE with enough failures          | BANK_OUTAGE for the bank                |
| MERCHANT_FROZEN                          | any failure alert of the merchant       |
| terminal faults (the scenario's own file) | TERMINAL_OFFLINE ... for the terminal   |

- **recall**: expected alerts found / expected;
- **cause accuracy**: found alerts whose cause is the injected cause / found (faults
  injected with a cause only);
- **false alerts**: alerts about nothing injected. An alert about a transaction that had
  some injected fault (an OVERDUE before its FAILED, the SLA of its re-remittance case
  running out) or a merchant-level DECLINE_SPIKE of a spiking terminal's merchant is
  related, not false;
- **time to alert**: from the moment the fault became visible (the settlement's time, or
  the deadline for a missing or late one; virtual) to the alert's start, in real seconds
  (virtual seconds / scale). Terminal faults are not timed.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

EXPECTED_FOR_KIND = {
    "FAILED": "SETTLEMENT_FAILED",
    "RETURNED": "SETTLEMENT_RETURNED",
    "MISMATCH": "AMOUNT_MISMATCH",
    "DUPLICATE": "DUPLICATE_SETTLEMENT",
    "MISSING": "SETTLEMENT_OVERDUE",
    "LATE": "SETTLEMENT_OVERDUE",
    "VOID_IGNORED": "REVERSED_BUT_SETTLED",
}
TXN_ALERTS = frozenset(
    {
        "SETTLEMENT_FAILED",
        "SETTLEMENT_RETURNED",
        "SETTLEMENT_OVERDUE",
        "AMOUNT_MISMATCH",
        "DUPLICATE_SETTLEMENT",
        "REVERSED_BUT_SETTLED",
    }
)


@dataclass(slots=True)
class Expected:
    """One alert the injected faults call for."""

    key: tuple[str, ...]
    cause: str | None
    visible_at: datetime | None = None
    found: dict[str, Any] | None = None  # the alert that detected it
    delay_s: float | None = None  # real seconds from visible to the alert

    @property
    def alert_type(self) -> str:
        return self.key[0]

    @property
    def cause_right(self) -> bool | None:
        if self.found is None or self.cause is None:
            return None
        return bool(self.found["cause"] == self.cause)


@dataclass(slots=True)
class Score:
    """The result of scoring one run."""

    expected: list[Expected]
    false_alerts: list[dict[str, Any]]
    related: int
    scale: float
    pending: int = 0  # faults due to show only after the run ended
    delays_s: dict[str, list[float]] = field(default_factory=dict)

    @property
    def detected(self) -> int:
        return sum(item.found is not None for item in self.expected)

    @property
    def recall(self) -> float:
        return self.detected / len(self.expected) if self.expected else 1.0

    @property
    def cause_accuracy(self) -> float:
        judged = [item.cause_right for item in self.expected if item.cause_right is not None]
        return sum(judged) / len(judged) if judged else 1.0

    def by_type(self) -> dict[str, tuple[int, int, int]]:
        """Alert type -> (expected, detected, cause right)."""
        rows: dict[str, list[int]] = {}
        for item in self.expected:
            row = rows.setdefault(item.alert_type, [0, 0, 0])
            row[0] += 1
            row[1] += item.found is not None
            row[2] += item.cause_right is True
        return {name: (a, b, c) for name, (a, b, c) in sorted(rows.items())}

    def passed(self, *, recall: float = 1.0, accuracy: float = 0.95) -> bool:
        """The targets: everything detected, >= 95% causes right, no false alert."""
        return self.recall >= recall and self.cause_accuracy >= accuracy and not self.false_alerts

    def as_dict(self) -> dict[str, Any]:
        return {
            "expected": len(self.expected),
            "detected": self.detected,
            "recall": round(self.recall, 4),
            "cause_accuracy": round(self.cause_accuracy, 4),
            "false_alerts": len(self.false_alerts),
            "related_alerts": self.related,
            "pending": self.pending,
            "by_type": {
                name: {"expected": a, "detected": b, "cause_right": c}
                for name, (a, b, c) in self.by_type().items()
            },
            "time_to_alert_s": {
                name: _summary(values) for name, values in sorted(self.delays_s.items())
            },
            "missed": [
                {"key": list(item.key), "cause": item.cause}
                for item in self.expected
                if item.found is None
            ],
            "wrong_cause": [
                {"key": list(item.key), "injected": item.cause, "found": item.found["cause"]}
                for item in self.expected
                if item.found is not None and item.cause_right is False
            ],
            "false": [
                {"type": row["type"], "fingerprint": row["fingerprint"], "summary": row["summary"]}
                for row in self.false_alerts
            ],
        }


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 3),
        "p95": round(p95, 3),
        "max": round(ordered[-1], 3),
    }


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def expected_alerts(
    truth: Iterable[Mapping[str, Any]],
    terminal_truth: Iterable[Mapping[str, Any]],
    *,
    outage_failures: int = 3,
) -> list[Expected]:
    """What the injected faults call for (see the module's table)."""
    lines = list(truth)
    expected: list[Expected] = []
    outage_counts = Counter(
        line.get("bank_code")
        for line in lines
        if line["kind"] == "FAILED" and line.get("scenario") == "bank_outage"
    )
    for line in lines:
        kind, cause = line["kind"], line.get("cause")
        alert_type = EXPECTED_FOR_KIND.get(kind)
        if alert_type is not None:
            visible = (
                line.get("deadline") if kind in ("MISSING", "LATE") else line.get("settled_at")
            )
            txn_key: tuple[str, ...] = (alert_type, line["tid"], line["rrn"])
            expected.append(Expected(txn_key, cause, _time(visible)))
        elif kind == "ORPHAN":
            orphan_key: tuple[str, ...] = ("ORPHAN_SETTLEMENT", line["settlement_ids"][0])
            expected.append(Expected(orphan_key, cause, _time(line.get("settled_at"))))
        elif kind == "BANK_OUTAGE" and outage_counts[line["bank_code"]] >= outage_failures:
            expected.append(Expected(("BANK_OUTAGE", line["bank_code"]), cause))
        elif kind == "MERCHANT_FROZEN":
            expected.append(Expected(("MERCHANT_FROZEN", line["mid"]), cause))
    for fault in terminal_truth:
        expected.append(Expected((fault["alert_type"], fault["tid"]), fault["cause"]))
    # One expectation per key: a transaction with two lines (an outage delay that is
    # also late) expects its alert once.
    unique: dict[tuple[str, ...], Expected] = {}
    for item in expected:
        unique.setdefault(item.key, item)
    return list(unique.values())


def alert_keys(alert: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The expectation keys an alert can satisfy."""
    alert_type = alert["type"]
    fingerprint = str(alert["fingerprint"])
    if alert_type in TXN_ALERTS:
        keys: list[tuple[str, ...]] = [(alert_type, alert["tid"], alert["rrn"])]
        if alert_type == "SETTLEMENT_FAILED" and alert["cause"] == "MERCHANT_QUALIFICATION":
            keys.append(("MERCHANT_FROZEN", alert["mid"]))
        return keys
    if alert_type == "ORPHAN_SETTLEMENT":
        return [(alert_type, fingerprint.split(":", 1)[1])]
    if alert_type == "BANK_OUTAGE":
        return [(alert_type, alert["bank_code"])]
    if alert.get("tid"):
        return [(alert_type, alert["tid"])]
    return [(alert_type, fingerprint)]


def score(
    truth: Iterable[Mapping[str, Any]],
    terminal_truth: Iterable[Mapping[str, Any]],
    alerts: Iterable[Mapping[str, Any]],
    *,
    scale: float,
    outage_failures: int = 3,
    until: datetime | None = None,
) -> Score:
    """Score stored alerts (rows with type, fingerprint, cause, tid, rrn, mid, bank_code,
    started_at) against the acquirer's ground truth and the scenario's terminal truth.

    With `until` (the virtual time the run stopped), a fault that only became visible
    after it (a return due after the end) is not expected: it is counted as pending.
    """
    lines = list(truth)
    terminal_lines = list(terminal_truth)
    expected = expected_alerts(lines, terminal_lines, outage_failures=outage_failures)
    pending = [item for item in expected if until and item.visible_at and item.visible_at > until]
    expected = [item for item in expected if item not in pending]
    by_key = {item.key: item for item in expected}
    faulty_txns = {
        (line.get("tid"), line.get("rrn"))
        for line in lines
        if line.get("rrn") and line["kind"] not in ("NORMAL", "CANCELLED")
    }
    spiking_mids = {line["mid"] for line in terminal_lines if line["alert_type"] == "DECLINE_SPIKE"}
    false_alerts: list[dict[str, Any]] = []
    related = 0
    result = Score(expected, false_alerts, 0, scale, pending=len(pending))
    for alert in sorted(alerts, key=lambda row: row["started_at"]):
        matched = False
        for key in alert_keys(alert):
            item = by_key.get(key)
            if item is not None:
                matched = True
                if item.found is None:
                    item.found = dict(alert)
                    _timed(result, item, alert)
        if matched:
            continue
        if _related(alert, faulty_txns, spiking_mids):
            related += 1
        else:
            false_alerts.append(dict(alert))
    result.related = related
    return result


def _related(
    alert: Mapping[str, Any], faulty_txns: set[tuple[Any, Any]], spiking_mids: set[str]
) -> bool:
    """An alert about something injected, though not the alert expected for it."""
    if alert["type"] in TXN_ALERTS or alert["type"] == "CASE_SLA_BREACHED":
        # (Nobody works the cases in a simulation: their SLAs run out. That follows from
        # the injected fault too.)
        return (alert["tid"], alert["rrn"]) in faulty_txns
    return alert["type"] == "DECLINE_SPIKE" and alert.get("mid") in spiking_mids


def _timed(result: Score, item: Expected, alert: Mapping[str, Any]) -> None:
    started = _time(alert["started_at"])
    if item.visible_at is None or started is None:
        return
    delay = max((started - item.visible_at).total_seconds() / result.scale, 0.0)
    item.delay_s = delay
    result.delays_s.setdefault(item.alert_type, []).append(delay)
