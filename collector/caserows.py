"""What the case store hands out: a case, its audit log, what its evidence is made of.

Frozen rows built from the database's mapping by `from_row` (a column read is one field
added here); states and causes are the enums of `collector.cases` and `posmon.wire`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping

from collector.cases import CaseState
from collector.correlate import Outcome
from collector.store.rows import StoredSettlement, StoredTransaction
from posmon.wire.models import Cause

# A row as the database hands it out, or a mapping of its columns by name.
Columns = RowMapping | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StoredCase:
    """A re-remittance case as stored (`cases`), its fields in the table's order."""

    case_id: str
    transaction_id: int
    tid: str
    mid: str
    rrn: str
    amount: int  # what is owed: the transaction's expected net
    currency: str
    cause: Cause
    remedy: str | None
    alert_id: str | None
    state: CaseState
    state_since: datetime
    opened_at: datetime
    updated_at: datetime
    bank_code: str | None
    account_masked: str | None
    rejection_reason: str | None
    remittance_settlement_id: str | None
    sla_breached_state: CaseState | None  # the state whose SLA alert has fired

    @classmethod
    def from_row(cls, row: Columns) -> StoredCase:
        breached = row["sla_breached_state"]
        return cls(
            case_id=row["case_id"],
            transaction_id=row["transaction_id"],
            tid=row["tid"],
            mid=row["mid"],
            rrn=row["rrn"],
            amount=row["amount"],
            currency=row["currency"],
            cause=Cause(row["cause"]),
            remedy=row["remedy"],
            alert_id=row["alert_id"],
            state=CaseState(row["state"]),
            state_since=row["state_since"],
            opened_at=row["opened_at"],
            updated_at=row["updated_at"],
            bank_code=row["bank_code"],
            account_masked=row["account_masked"],
            rejection_reason=row["rejection_reason"],
            remittance_settlement_id=row["remittance_settlement_id"],
            sla_breached_state=CaseState(breached) if breached else None,
        )

    def columns(self) -> dict[str, Any]:
        """The case as the table's columns by name, plain values (what `posmon cases show`
        lists field by field)."""
        return {item.name: _plain_enum(getattr(self, item.name)) for item in fields(StoredCase)}


@dataclass(frozen=True, slots=True)
class CaseEntry:
    """One line of a case's append-only audit log (`case_events`)."""

    id: int
    case_id: str
    at: datetime
    actor: str
    from_state: CaseState | None
    to_state: CaseState
    note: str | None

    @classmethod
    def from_row(cls, row: Columns) -> CaseEntry:
        before = row["from_state"]
        return cls(
            id=row["id"],
            case_id=row["case_id"],
            at=row["at"],
            actor=row["actor"],
            from_state=CaseState(before) if before else None,
            to_state=CaseState(row["to_state"]),
            note=row["note"],
        )


@dataclass(frozen=True, slots=True)
class StatusAround:
    """A terminal status near a case's transaction, as its evidence shows it."""

    observed_at: datetime
    link_up: bool
    network: str
    saf_pending: int
    serial_ok: bool

    @classmethod
    def from_row(cls, row: Columns) -> StatusAround:
        return cls(
            observed_at=row["observed_at"],
            link_up=bool(row["link_up"]),
            network=row["network"],
            saf_pending=row["saf_pending"],
            serial_ok=bool(row["serial_ok"]),
        )


@dataclass(frozen=True, slots=True)
class OutcomeStep:
    """An outcome the case's transaction went through, and when (`outcome_log`)."""

    at: datetime
    outcome: Outcome

    @classmethod
    def from_row(cls, row: Columns) -> OutcomeStep:
        return cls(at=row["at"], outcome=Outcome(row["outcome"]))


@dataclass(frozen=True, slots=True)
class CaseEvidence:
    """What an evidence package is made of: the transaction, every settlement of it
    (oldest first), the terminal's status around it, and its outcomes."""

    transaction: StoredTransaction | None
    settlements: tuple[StoredSettlement, ...]
    statuses: tuple[StatusAround, ...]
    outcomes: tuple[OutcomeStep, ...]


def _plain_enum(value: object) -> object:
    return value.value if isinstance(value, CaseState | Cause) else value
