"""Scoring a run's alerts against what was injected. Pure: lines and rows in, a score out.

Each injected fault expects one alert, named by a key:

| injected (ground truth)                  | expected alert                          |
|------------------------------------------|-----------------------------------------|
| FAILED, RETURNED, MISMATCH, DUPLICATE    | SETTLEMENT_FAILED ... for (tid, rrn)    |
| MISSING (never settled), LATE            | SETTLEMENT_OVERDUE for (tid, rrn)       |
| VOID_IGNORED (credited despite its void) | REVERSED_BUT_SETTLED for (tid, rrn)     |
| VOID_AFTER_CREDIT (voided once paid)     | REVERSED_BUT_SETTLED for (tid, rrn)     |
| ORPHAN                                   | ORPHAN_SETTLEMENT for its settlement id |
| BANK_OUTAGE with enough failures          | BANK_OUTAGE for the bank                |
| MERCHANT_FROZEN                          | any failure alert of the merchant       |
| FAILED with cause UNKNOWN at a bank down  | its alert, with cause BANK_SYSTEM       |
| without it (see `_joined_outage`)         |                                         |
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
  (virtual seconds / scale). Terminal faults are not timed;
- **late in transit**: an OVERDUE about a transaction the acquirer credited by its deadline,
  whose credit the collector stored only after its overdue watch had marked it OVERDUE.
  The collector was right by what it had; the delay was the run's own (a loaded machine:
  on a clock of 10 000x, 60 real ms of delay are ten virtual minutes). Counted apart,
  neither false nor expected, and shown in the report so a run with many of them can be
  judged too slow to be timed;
- **pending**: faults that become visible only after the run ended;
- **unshowable**: faults the run was too short or too small to show, by the minimum
  evidence of the collector's rules (`Thresholds`): a decline spike with fewer
  transactions before it than the baseline needs, or too few in it for a window; a bank
  outage with fewer failures within the outage window than `bank_outage_failures`; a
  terminal silent for less than the heartbeat timeout before the run ended; a host link
  down for less than `link_down_s`; a batch never closed with no sale in it, or whose
  first sale's next cut-off (when the rule judges it) came after the run ended; an
  unbalanced terminal that closed no batch. They are neither expected nor missed, and an
  alert about one is related, not false.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

EXPECTED_FOR_KIND = {
    "FAILED": "SETTLEMENT_FAILED",
    "RETURNED": "SETTLEMENT_RETURNED",
    "MISMATCH": "AMOUNT_MISMATCH",
    "DUPLICATE": "DUPLICATE_SETTLEMENT",
    "MISSING": "SETTLEMENT_OVERDUE",
    "LATE": "SETTLEMENT_OVERDUE",
    "VOID_IGNORED": "REVERSED_BUT_SETTLED",
    "VOID_AFTER_CREDIT": "REVERSED_BUT_SETTLED",
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


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The minimum evidence of the collector's rules (its `[alerts]` settings) and the
    run's length: what a fault needs before the collector can show it."""

    outage_failures: int = 3
    outage_window_min: float = 60.0
    decline_window: int = 20
    decline_baseline_min: int = 40
    heartbeat_timeout_s: float = 120.0
    link_down_s: float = 60.0
    run_s: float | None = None  # real seconds from the fleet's start to the run's end

    @classmethod
    def of(cls, alerts: Any, run_s: float | None = None) -> Thresholds:
        """From a collector's `AlertsSection`."""
        return cls(
            outage_failures=alerts.bank_outage_failures,
            outage_window_min=alerts.bank_outage_window_min,
            decline_window=alerts.decline_window,
            decline_baseline_min=alerts.decline_baseline_min,
            heartbeat_timeout_s=alerts.heartbeat_timeout_s,
            link_down_s=alerts.link_down_s,
            run_s=run_s,
        )


# Real seconds of slack for a time-based rule: the sweep's period and the agent's latency.
_SLACK_S = 1.5


def unshowable_because(fault: Mapping[str, Any], thresholds: Thresholds) -> str | None:
    """Why the run could not show a terminal fault (None: it could). The evidence is what
    the scenario counted at the terminal (`terminal-truth.jsonl`); without it, showable."""
    check = _TERMINAL_EVIDENCE.get(fault["alert_type"])
    return None if check is None else check(fault, fault.get("evidence") or {}, thresholds)


def _spike(fault: Mapping[str, Any], evidence: Mapping[str, Any], limits: Thresholds) -> str | None:
    if not evidence:
        return None
    before, during = evidence.get("txns_before", 0), evidence.get("txns_during", 0)
    # The baseline takes what leaves the window until the spike fills half of it.
    need = limits.decline_baseline_min + limits.decline_window
    if before < need:
        return f"{before} transactions before the spike; the baseline and a window need {need}"
    if during < 2 * limits.decline_window:
        window = limits.decline_window
        return f"{during} transactions in the spike; the rule needs two windows of {window}"
    return None


def _silent(
    fault: Mapping[str, Any], evidence: Mapping[str, Any], limits: Thresholds
) -> str | None:
    if limits.run_s is None:
        return None
    silent = limits.run_s - float(fault.get("at_s", 0.0))
    if silent < limits.heartbeat_timeout_s + _SLACK_S:
        return (
            f"silent {silent:.1f} s before the end; the timeout is {limits.heartbeat_timeout_s:g} s"
        )
    return None


def _link(fault: Mapping[str, Any], evidence: Mapping[str, Any], limits: Thresholds) -> str | None:
    if "link_down_seen_s" not in evidence:
        return None
    seen = float(evidence["link_down_seen_s"])
    if seen < limits.link_down_s + _SLACK_S:
        return f"reported down for {seen:.1f} s; the rule waits {limits.link_down_s:g} s"
    return None


def _unclosed(
    fault: Mapping[str, Any], evidence: Mapping[str, Any], limits: Thresholds
) -> str | None:
    if evidence.get("approved_sales", 1) == 0:
        return "no approved sale in the batch never closed"
    # The rule judges a batch at the first cut-off after its first sale: a batch opened
    # after the day's cut-off (a run starting late in the day, on a fast clock) is due a
    # virtual day later, which a run of seconds may never reach.
    due = evidence.get("due_s")
    if due is not None and limits.run_s is not None and due + _SLACK_S > limits.run_s:
        return (
            f"the batch is due at the cut-off after its first sale, {due:.1f} s into the run; "
            f"the run lasted {limits.run_s:.1f} s"
        )
    return None


def _unbalanced(
    fault: Mapping[str, Any], evidence: Mapping[str, Any], limits: Thresholds
) -> str | None:
    if evidence.get("batch_closes", 1) == 0:
        return "no batch closed"
    return None


_TERMINAL_EVIDENCE: dict[
    str, Callable[[Mapping[str, Any], Mapping[str, Any], Thresholds], str | None]
] = {
    "DECLINE_SPIKE": _spike,
    "TERMINAL_OFFLINE": _silent,
    "HOST_LINK_DOWN": _link,
    "BATCH_NOT_CLOSED": _unclosed,
    "BATCH_UNBALANCED": _unbalanced,
}


@dataclass(slots=True)
class Score:
    """The result of scoring one run."""

    expected: list[Expected]
    false_alerts: list[dict[str, Any]]
    related: int
    scale: float
    pending: int = 0  # faults due to show only after the run ended
    delays_s: dict[str, list[float]] = field(default_factory=dict)
    unshowable: list[tuple[Expected, str]] = field(default_factory=list)
    late_in_transit: list[dict[str, Any]] = field(default_factory=list)

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
            "unshowable": [{"key": list(item.key), "why": why} for item, why in self.unshowable],
            "by_type": {
                name: {"expected": a, "detected": b, "cause_right": c}
                for name, (a, b, c) in self.by_type().items()
            },
            # Every timed alert together, and each one's delay (real seconds), for tables
            # over many runs (scripts/soak).
            "time_to_alert_all_s": sorted(
                round(value, 4) for values in self.delays_s.values() for value in values
            ),
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
            "late_in_transit": [
                {"type": row["type"], "fingerprint": row["fingerprint"], "summary": row["summary"]}
                for row in self.late_in_transit
            ],
        }


def percentile(ordered: list[float], share: float) -> float:
    """The nearest-rank percentile of sorted values (`share` 0.99 for p99)."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 3),
        "p95": round(percentile(ordered, 0.95), 3),
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
    thresholds: Thresholds | None = None,
) -> tuple[list[Expected], list[tuple[Expected, str]]]:
    """What the injected faults call for (see the module's table), and what they would
    call for but the run could not show (with why)."""
    limits = thresholds or Thresholds(outage_failures=outage_failures)
    lines = list(truth)
    expected: list[Expected] = []
    unshowable: list[tuple[Expected, str]] = []
    for line in lines:
        kind, cause = line["kind"], line.get("cause")
        alert_type = EXPECTED_FOR_KIND.get(kind)
        if alert_type is not None:
            visible = (
                line.get("deadline") if kind in ("MISSING", "LATE") else line.get("settled_at")
            )
            txn_key: tuple[str, ...] = (alert_type, line["tid"], line["rrn"])
            if cause == "UNKNOWN" and kind in ("FAILED", "RETURNED"):
                cause = _joined_outage(lines, line, limits) or cause
            expected.append(Expected(txn_key, cause, _time(visible)))
        elif kind == "ORPHAN":
            orphan_key: tuple[str, ...] = ("ORPHAN_SETTLEMENT", line["settlement_ids"][0])
            expected.append(Expected(orphan_key, cause, _time(line.get("settled_at"))))
        elif kind == "BANK_OUTAGE":
            item = Expected(("BANK_OUTAGE", line["bank_code"]), cause)
            most = _outage_failures(lines, line["bank_code"], limits.outage_window_min)
            if most >= limits.outage_failures:
                expected.append(item)
            else:
                why = (
                    f"at most {most} failures within {limits.outage_window_min:g} min; "
                    f"an outage needs {limits.outage_failures}"
                )
                unshowable.append((item, why))
        elif kind == "MERCHANT_FROZEN":
            expected.append(Expected(("MERCHANT_FROZEN", line["mid"]), cause))
    for fault in terminal_truth:
        item = Expected((fault["alert_type"], fault["tid"]), fault["cause"])
        short = unshowable_because(fault, limits)
        if short is None:
            expected.append(item)
        else:
            unshowable.append((item, short))
    # One expectation per key: a transaction with two lines (an outage delay that is
    # also late) expects its alert once.
    unique: dict[tuple[str, ...], Expected] = {}
    for item in expected:
        unique.setdefault(item.key, item)
    return list(unique.values()), unshowable


def _joined_outage(
    lines: list[Mapping[str, Any]], line: Mapping[str, Any], limits: Thresholds
) -> str | None:
    """BANK_SYSTEM for a failure with nothing of its own to say (cause UNKNOWN) at a bank
    that is down without it: `outage_failures` of the bank's failures (BANK_SYSTEM: failed
    at `settled_at`, or credited late past `deadline`) within the outage window before it
    (what came after it is not known when it is classified).
    Nothing in such a failure tells it from the outage around it; the collector and an
    acquirer's staff put it on the outage (classify rule 4), and so does the score."""
    at = _time(line.get("settled_at"))
    if at is None or not line.get("bank_code"):
        return None
    window = timedelta(minutes=limits.outage_window_min)
    times = sorted(
        moment
        for other in lines
        if other is not line
        and other.get("bank_code") == line["bank_code"]
        and other.get("cause") == "BANK_SYSTEM"
        and other["kind"] in ("FAILED", "LATE")
        and (moment := _time(other.get("deadline" if other["kind"] == "LATE" else "settled_at")))
        and at - window < moment <= at
    )
    return "BANK_SYSTEM" if len(times) >= limits.outage_failures else None


def _outage_failures(lines: list[Mapping[str, Any]], bank_code: str, window_min: float) -> int:
    """The most failures of an outage at one bank within any window of `window_min`."""
    times = sorted(
        moment
        for line in lines
        if line["kind"] == "FAILED"
        and line.get("scenario") == "bank_outage"
        and line.get("bank_code") == bank_code
        and (moment := _time(line.get("settled_at"))) is not None
    )
    window = timedelta(minutes=window_min)
    most, first = 0, 0
    for last, moment in enumerate(times):
        while moment - times[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


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
    thresholds: Thresholds | None = None,
    late_in_transit: Collection[tuple[str, str]] = (),
) -> Score:
    """Score stored alerts (rows with type, fingerprint, cause, tid, rrn, mid, bank_code,
    started_at) against the acquirer's ground truth and the scenario's terminal truth.

    With `until` (the virtual time the run stopped), a fault that only became visible
    after it (a return due after the end) is not expected: it is counted as pending. With
    `thresholds` (the collector's rules and the run's length), faults the run could not
    show are set apart as unshowable. `late_in_transit`: the (tid, rrn) of transactions
    credited by their deadline whose credit the collector stored after marking them
    OVERDUE (see the module); an OVERDUE about one of them is counted apart, not false.
    """
    lines = list(truth)
    terminal_lines = list(terminal_truth)
    limits = thresholds or Thresholds(outage_failures=outage_failures)
    expected, unshowable = expected_alerts(lines, terminal_lines, thresholds=limits)
    pending = [item for item in expected if until and item.visible_at and item.visible_at > until]
    expected = [item for item in expected if item not in pending]
    by_key = {item.key: item for item in expected}
    set_apart = {item.key for item in pending} | {item.key for item, _ in unshowable}
    faulty_txns = {
        (line.get("tid"), line.get("rrn"))
        for line in lines
        if line.get("rrn") and line["kind"] not in ("NORMAL", "CANCELLED")
    }
    bank_faults = Counter(
        line.get("bank_code")
        for line in lines
        if line.get("cause") == "BANK_SYSTEM" and line["kind"] in ("FAILED", "LATE", "MISSING")
    )
    troubled_banks = {bank for bank, n in bank_faults.items() if n >= limits.outage_failures}
    spiking_mids = {line["mid"] for line in terminal_lines if line["alert_type"] == "DECLINE_SPIKE"}
    false_alerts: list[dict[str, Any]] = []
    related = 0
    result = Score(expected, false_alerts, 0, scale, pending=len(pending), unshowable=unshowable)
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
        if any(key in set_apart for key in alert_keys(alert)) or _related(
            alert, faulty_txns, spiking_mids, troubled_banks
        ):
            related += 1
        elif (
            alert["type"] == "SETTLEMENT_OVERDUE"
            and (alert["tid"], alert["rrn"]) in late_in_transit
        ):
            result.late_in_transit.append(dict(alert))
        else:
            false_alerts.append(dict(alert))
    result.related = related
    return result


def _related(
    alert: Mapping[str, Any],
    faulty_txns: set[tuple[Any, Any]],
    spiking_mids: set[str],
    troubled_banks: set[Any],
) -> bool:
    """An alert about something injected, though not the alert expected for it."""
    if alert["type"] in TXN_ALERTS or alert["type"] == "CASE_SLA_BREACHED":
        # (Nobody works the cases in a simulation: their SLAs run out. That follows from
        # the injected fault too.)
        return (alert["tid"], alert["rrn"]) in faulty_txns
    if alert["type"] == "BANK_OUTAGE":
        # Injected bank-side failures (late or failed credits) that happen to cluster at
        # one bank: the alert says what the truth shows, without an outage injected.
        return alert.get("bank_code") in troubled_banks
    return alert["type"] == "DECLINE_SPIKE" and alert.get("mid") in spiking_mids


def _timed(result: Score, item: Expected, alert: Mapping[str, Any]) -> None:
    started = _time(alert["started_at"])
    if item.visible_at is None or started is None:
        return
    delay = max((started - item.visible_at).total_seconds() / result.scale, 0.0)
    item.delay_s = delay
    result.delays_s.setdefault(item.alert_type, []).append(delay)
