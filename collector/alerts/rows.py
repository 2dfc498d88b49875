"""What flows between the parts of alerting: frozen rows of the followed tables, stored
alerts and silences, and what a classification looks at.

The parts of `collector.alerts` hand these to one another (and to the metrics), never a
`dict[str, Any]`: strict mypy sees every key, and types, causes, outcomes and kinds are
enums. Rows are built from the database's mapping by `from_row` (a column read is one
field added here). JSON documents (an alert's details, a conflict's payload) stay
mappings: they are documents, not rows. Over 400 lines only because it is declarations:
one frozen class per row, field by field, and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping

from collector.classify import TerminalContext
from collector.correlate import Outcome
from collector.rules import AlertType, Candidate
from collector.store.rows import StoredSettlement, StoredTransaction
from posmon.wire.models import AlertEvent, AlertState, Cause, Severity, TxnKind

# A row as the database hands it out, or a mapping of its columns by name.
Columns = RowMapping | Mapping[str, Any]

# --- the followed tables (collector.alerts.feed) -------------------------------------------


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    """A line of this collector's `outcome_log`, with the business key and what the
    classification (`FactReader.evidence`) and the metrics look up."""

    id: int
    transaction_id: int | None
    settlement_id: str | None
    outcome: Outcome
    previous: Outcome | None
    note: str | None
    tid: str | None
    rrn: str | None
    txn_batch: str | None
    txn_observed_at: datetime | None
    mid: str | None
    amount: int | None
    expected_net: int | None
    terminal_time: datetime | None
    deadline: datetime | None  # a credit settled after it was late, whenever it came
    net_amount: int | None
    bank_code: str | None
    settled_at: datetime | None

    @classmethod
    def from_row(cls, row: Columns) -> OutcomeRow:
        return cls(
            id=row["id"],
            transaction_id=row["transaction_id"],
            settlement_id=row["settlement_id"],
            outcome=Outcome(row["outcome"]),
            previous=Outcome(row["previous"]) if row["previous"] else None,
            note=row["note"],
            tid=row["tid"],
            rrn=row["rrn"],
            txn_batch=row["txn_batch"],
            txn_observed_at=row["txn_observed_at"],
            mid=row["mid"],
            amount=row["amount"],
            expected_net=row["expected_net"],
            terminal_time=row["terminal_time"],
            deadline=row["deadline"],
            net_amount=row["net_amount"],
            bank_code=row["bank_code"],
            settled_at=row["settled_at"],
        )

    @property
    def credited_late(self) -> bool:
        """Whether its credit was settled at or after its transaction's deadline (the
        acquirer's own time of the credit, however late it reached the collector)."""
        deadline, settled = self.deadline, self.settled_at
        return deadline is not None and settled is not None and settled >= deadline


@dataclass(frozen=True, slots=True)
class StatusRow:
    """A terminal's status or heartbeat (`status_events`)."""

    id: int
    tid: str
    link_up: bool
    saf_pending: int
    observed_at: datetime  # the agent's clock
    # For the metrics (collector/metrics.py).
    serial_ok: bool | None = None
    rssi_dbm: int | None = None
    host_rtt_ms: int | None = None
    battery_pct: int | None = None

    @classmethod
    def from_row(cls, row: Columns) -> StatusRow:
        return cls(
            id=row["id"],
            tid=row["tid"],
            link_up=bool(row["link_up"]),
            saf_pending=row["saf_pending"],
            observed_at=row["observed_at"],
            serial_ok=row["serial_ok"],
            rssi_dbm=row["rssi_dbm"],
            host_rtt_ms=row["host_rtt_ms"],
            battery_pct=row["battery_pct"],
        )


@dataclass(frozen=True, slots=True)
class BatchRow:
    """A batch close (BAT) as the terminal reported it (`batches`)."""

    id: int
    tid: str
    mid: str
    batch: str
    count: int
    total: int
    currency: str
    result: str

    @classmethod
    def from_row(cls, row: Columns) -> BatchRow:
        return cls(
            id=row["id"],
            tid=row["tid"],
            mid=row["mid"],
            batch=row["batch"],
            count=row["count"],
            total=row["total"],
            currency=row["currency"],
            result=row["result"],
        )


@dataclass(frozen=True, slots=True)
class TxnRow:
    """What the alerts and metrics read of a stored transaction (`transactions`)."""

    id: int
    tid: str
    mid: str
    approved: bool
    rc: str
    kind: TxnKind
    batch: str
    amount: int
    currency: str
    terminal_time: datetime

    @classmethod
    def from_row(cls, row: Columns) -> TxnRow:
        return cls(
            id=row["id"],
            tid=row["tid"],
            mid=row["mid"],
            approved=bool(row["approved"]),
            rc=row["rc"],
            kind=TxnKind(row["kind"]),
            batch=row["batch"],
            amount=row["amount"],
            currency=row["currency"],
            terminal_time=row["terminal_time"],
        )


@dataclass(frozen=True, slots=True)
class ConflictRow:
    """A transaction's business key claimed again with other money or card (`conflicts`)."""

    id: int
    event_id: str
    tid: str
    rrn: str
    kind: str
    first_event_id: str
    differences: str
    payload: Mapping[str, Any]  # the conflicting message, as JSON

    @classmethod
    def from_row(cls, row: Columns) -> ConflictRow:
        return cls(
            id=row["id"],
            event_id=row["event_id"],
            tid=row["tid"],
            rrn=row["rrn"],
            kind=row["kind"],
            first_event_id=row["first_event_id"],
            differences=row["differences"],
            payload=row["payload"],
        )


# A new row of any followed table (the engine's `on_fact` hook, the metrics).
FactRow = OutcomeRow | StatusRow | BatchRow | TxnRow | ConflictRow


# --- what the engine starts from ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TerminalState:
    """A terminal's latest status, read once at start-up."""

    tid: str
    link_up: bool
    saf_pending: int
    observed_at: datetime


@dataclass(frozen=True, slots=True)
class OfflineAgent:
    """An agent its MQTT will has declared offline (`presence`), and its terminals."""

    agent_id: str
    tids: tuple[str, ...]
    observed_at: datetime


@dataclass(frozen=True, slots=True)
class UnclosedBatch:
    """A terminal's batch with open approved transactions and no BAT."""

    tid: str
    batch: str
    mid: str
    currency: str
    first_time: datetime
    count: int
    total: int


# --- what a settlement alert's classification reads -----------------------------------------


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the classification of one settlement outcome looks at (`FactReader.evidence`)."""

    txn: StoredTransaction | None
    settlement: StoredSettlement | None
    terminal: TerminalContext | None  # None without a transaction
    batch_closed: bool | None  # None without a transaction
    batch_result: str | None
    # Other sales of its batch approved offline that have a settlement result (credited,
    # failed or returned): the terminal's store-and-forward uploads reach the acquirer.
    offline_settled: int = 0

    @property
    def bank_code(self) -> str | None:
        """The settlement's bank, if there is a settlement and it names one."""
        return self.settlement.bank_code if self.settlement else None


@dataclass(frozen=True, slots=True)
class BankFailure:
    """An unresolved failure at a bank, and when it happened (`AlertStore.bank_failures`)."""

    alert_id: str
    fingerprint: str
    at: datetime
    amount_at_risk: int | None
    currency: str | None


# --- alerts and silences ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredAlert:
    """An alert as stored (`alerts`): what it is about, its state, who acknowledged it."""

    alert_id: str
    fingerprint: str
    type: AlertType
    severity: Severity
    status: str  # firing, acknowledged, resolved
    cause: Cause
    summary: str
    started_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    occurred_at: datetime | None
    tid: str | None
    mid: str | None
    rrn: str | None
    bank_code: str | None
    amount_at_risk: int | None
    currency: str | None
    case_id: str | None
    details: Mapping[str, Any] | None  # the evidence, as JSON
    group_id: str | None
    silence_id: str | None
    acked_at: datetime | None
    acked_by: str | None
    notified_at: datetime | None
    collector_id: str

    @classmethod
    def from_row(cls, row: Columns) -> StoredAlert:
        return cls(
            alert_id=row["alert_id"],
            fingerprint=row["fingerprint"],
            type=AlertType(row["type"]),
            severity=Severity(row["severity"]),
            status=row["status"],
            cause=Cause(row["cause"]),
            summary=row["summary"],
            started_at=row["started_at"],
            updated_at=row["updated_at"],
            resolved_at=row["resolved_at"],
            occurred_at=row["occurred_at"],
            tid=row["tid"],
            mid=row["mid"],
            rrn=row["rrn"],
            bank_code=row["bank_code"],
            amount_at_risk=row["amount_at_risk"],
            currency=row["currency"],
            case_id=row["case_id"],
            details=row["details"],
            group_id=row["group_id"],
            silence_id=row["silence_id"],
            acked_at=row["acked_at"],
            acked_by=row["acked_by"],
            notified_at=row["notified_at"],
            collector_id=row["collector_id"],
        )


def alert_event(alert: StoredAlert) -> AlertEvent:
    """The `posmon.alert/1` message of a stored alert."""
    resolved = alert.status == "resolved"
    details = dict(alert.details or {})
    if alert.acked_at is not None:
        details["acknowledged"] = {"by": alert.acked_by, "at": alert.acked_at.isoformat()}
    if alert.group_id:
        details["group_id"] = alert.group_id
    return AlertEvent(
        alert_id=alert.alert_id,
        fingerprint=alert.fingerprint,
        type=alert.type.value,
        severity=alert.severity,
        state=AlertState.RESOLVED if resolved else AlertState.FIRING,
        cause=alert.cause,
        summary=alert.summary,
        started_at=alert.started_at,
        updated_at=alert.updated_at,
        resolved_at=alert.resolved_at if resolved else None,
        tid=alert.tid,
        mid=alert.mid,
        rrn=alert.rrn,
        bank_code=alert.bank_code,
        amount_at_risk=alert.amount_at_risk,
        currency=alert.currency if alert.amount_at_risk is not None else None,
        case_id=alert.case_id,
        details=details or None,
    )


@dataclass(frozen=True, slots=True)
class AlertHistoryEntry:
    """One step of an alert's life (`alert_history`): fired, acknowledged, resolved ..."""

    alert_id: str
    at: datetime
    event: str
    actor: str
    note: str | None

    @classmethod
    def from_row(cls, row: Columns) -> AlertHistoryEntry:
        return cls(
            alert_id=row["alert_id"],
            at=row["at"],
            event=row["event"],
            actor=row["actor"],
            note=row["note"],
        )


@dataclass(frozen=True, slots=True)
class StoredSilence:
    """A silence or maintenance window: its matchers (None matches anything), its time."""

    silence_id: str
    type: str | None
    bank_code: str | None
    mid: str | None
    tid: str | None
    starts_at: datetime
    ends_at: datetime
    maintenance: bool
    reason: str
    created_by: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: Columns) -> StoredSilence:
        return cls(
            silence_id=row["silence_id"],
            type=row["type"],
            bank_code=row["bank_code"],
            mid=row["mid"],
            tid=row["tid"],
            starts_at=row["starts_at"],
            ends_at=row["ends_at"],
            maintenance=bool(row["maintenance"]),
            reason=row["reason"],
            created_by=row["created_by"],
            created_at=row["created_at"],
        )

    def covers(self, at: datetime) -> bool:
        return self.starts_at <= at < self.ends_at

    def matches(self, candidate: Candidate) -> bool:
        """Each matcher this silence sets matches the candidate."""
        wanted = (
            (self.type, candidate.type.value),
            (self.bank_code, candidate.bank_code),
            (self.mid, candidate.mid),
            (self.tid, candidate.tid),
        )
        return all(mine is None or mine == theirs for mine, theirs in wanted)


@dataclass(frozen=True, slots=True)
class Queued:
    """A notification written to the queue: handed to its channel once committed."""

    notification_id: int
    channel: str
    payload: str
