"""What the store hands out: frozen rows, and what one batch did.

The other modules of the collector read stored facts through these, never through
`dict[str, Any]`: strict mypy sees every key, and outcomes, kinds and statuses are the
enums of `collector.correlate` and `posmon.wire.models`. Rows are built from the
database's mapping by `from_row` (a column added to the table is one field added here).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import RowMapping

from collector.correlate import Outcome
from posmon.wire.models import EntryMode, SettlementKind, SettlementStatus, TxnKind

# A collector's counters as it records them: names to plain JSON scalars.
CounterValue = int | float | str | bool | None


@dataclass(frozen=True, slots=True)
class OutcomeChange:
    """A transaction (or an orphan settlement) that changed outcome in a batch."""

    tid: str
    rrn: str
    outcome: Outcome
    previous: Outcome | None
    settlement_id: str | None
    at: datetime


@dataclass(slots=True)
class IngestReport:
    """What one batch did: counts by kind, repeats dropped, outcome changes."""

    stored: Counter[str] = field(default_factory=Counter)
    repeats: Counter[str] = field(default_factory=Counter)
    changes: list[OutcomeChange] = field(default_factory=list)

    def add_stored(self, kind: str, count: int) -> None:
        if count:  # no key for a kind with nothing stored
            self.stored[kind] += count

    def add_repeats(self, kind: str, count: int) -> None:
        if count:
            self.repeats[kind] += count


@dataclass(frozen=True, slots=True)
class StoredTransaction:
    """A stored transaction: the terminal's facts, its expectation and its outcome."""

    id: int
    event_id: str
    agent_id: str
    tid: str
    mid: str
    kind: TxnKind
    amount: int
    currency: str
    pan_masked: str
    rc: str
    approved: bool
    rrn: str
    stan: str
    batch: str
    txn_date: date  # terminal-local
    terminal_time: datetime
    observed_at: datetime
    stored_at: datetime
    auth_code: str | None
    issuer: str | None
    entry_mode: EntryMode | None
    orig_stan: str | None
    orig_rrn: str | None
    extra: Mapping[str, str] | None
    expected_net: int | None
    deadline: datetime | None
    outcome: Outcome
    outcome_at: datetime | None
    settlement_id: str | None

    @classmethod
    def from_row(cls, row: RowMapping | Mapping[str, Any]) -> StoredTransaction:
        entry_mode = row["entry_mode"]
        return cls(
            id=row["id"],
            event_id=row["event_id"],
            agent_id=row["agent_id"],
            tid=row["tid"],
            mid=row["mid"],
            kind=TxnKind(row["kind"]),
            amount=row["amount"],
            currency=row["currency"],
            pan_masked=row["pan_masked"],
            rc=row["rc"],
            approved=row["approved"],
            rrn=row["rrn"],
            stan=row["stan"],
            batch=row["batch"],
            txn_date=row["txn_date"],
            terminal_time=row["terminal_time"],
            observed_at=row["observed_at"],
            stored_at=row["stored_at"],
            auth_code=row["auth_code"],
            issuer=row["issuer"],
            entry_mode=EntryMode(entry_mode) if entry_mode is not None else None,
            orig_stan=row["orig_stan"],
            orig_rrn=row["orig_rrn"],
            extra=row["extra"],
            expected_net=row["expected_net"],
            deadline=row["deadline"],
            outcome=Outcome(row["outcome"]),
            outcome_at=row["outcome_at"],
            settlement_id=row["settlement_id"],
        )


@dataclass(frozen=True, slots=True)
class StoredSettlement:
    """A stored settlement result: the acquirer's facts, where it came from, its verdict."""

    settlement_id: str
    mid: str
    tid: str
    rrn: str
    txn_date: date
    amount: int
    fee: int
    net_amount: int
    currency: str
    status: SettlementStatus
    settled_at: datetime
    kind: SettlementKind
    stan: str | None
    batch: str | None
    reason_code: str | None
    reason_text: str | None
    bank_code: str | None
    account_masked: str | None
    original_settlement_id: str | None
    case_id: str | None
    source: str
    received_at: datetime
    transaction_id: int | None  # the transaction it matched
    outcome: Outcome

    @classmethod
    def from_row(cls, row: RowMapping | Mapping[str, Any]) -> StoredSettlement:
        return cls(
            settlement_id=row["settlement_id"],
            mid=row["mid"],
            tid=row["tid"],
            rrn=row["rrn"],
            txn_date=row["txn_date"],
            amount=row["amount"],
            fee=row["fee"],
            net_amount=row["net_amount"],
            currency=row["currency"],
            status=SettlementStatus(row["status"]),
            settled_at=row["settled_at"],
            kind=SettlementKind(row["kind"]),
            stan=row["stan"],
            batch=row["batch"],
            reason_code=row["reason_code"],
            reason_text=row["reason_text"],
            bank_code=row["bank_code"],
            account_masked=row["account_masked"],
            original_settlement_id=row["original_settlement_id"],
            case_id=row["case_id"],
            source=row["source"],
            received_at=row["received_at"],
            transaction_id=row["transaction_id"],
            outcome=Outcome(row["outcome"]),
        )


@dataclass(frozen=True, slots=True)
class CollectorRecord:
    """A collector as it last recorded itself alive: its subscriptions and counters."""

    collector_id: str
    started_at: datetime
    seen_at: datetime
    subscriptions: tuple[str, ...]
    counters: Mapping[str, CounterValue]

    @classmethod
    def from_row(cls, row: RowMapping) -> CollectorRecord:
        return cls(
            collector_id=row["collector_id"],
            started_at=row["started_at"],
            seen_at=row["seen_at"],
            subscriptions=tuple(row["subscriptions"]),
            counters=dict(row["counters"]),
        )


# --- between the store's own modules (matching -> settlements, transactions -> outcomes) ---


@dataclass(frozen=True, slots=True)
class TxnOutcome:
    """What judging a settlement reads of its transaction: its key and its state so far."""

    id: int
    tid: str
    rrn: str
    outcome: Outcome
    expected_net: int | None
    settlement_id: str | None

    @classmethod
    def from_row(cls, row: RowMapping | Mapping[str, Any]) -> TxnOutcome:
        return cls(
            id=row["id"],
            tid=row["tid"],
            rrn=row["rrn"],
            outcome=Outcome(row["outcome"]),
            expected_net=row["expected_net"],
            settlement_id=row["settlement_id"],
        )


@dataclass(frozen=True, slots=True)
class OrphanSettlement:
    """A stored settlement with no transaction yet: the keys its transaction may match
    by, and what judging it reads."""

    settlement_id: str
    tid: str
    rrn: str
    batch: str | None
    stan: str | None
    txn_date: date
    settled_at: datetime
    status: SettlementStatus
    net_amount: int

    @classmethod
    def from_row(cls, row: RowMapping | Mapping[str, Any]) -> OrphanSettlement:
        return cls(
            settlement_id=row["settlement_id"],
            tid=row["tid"],
            rrn=row["rrn"],
            batch=row["batch"],
            stan=row["stan"],
            txn_date=row["txn_date"],
            settled_at=row["settled_at"],
            status=SettlementStatus(row["status"]),
            net_amount=row["net_amount"],
        )
