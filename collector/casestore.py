"""The SQL of re-remittance cases: opening (once per transaction), moving, the audit log.

Opening is an INSERT that the unique `transaction_id` lets through once: fifty collectors
or API calls opening a case for one transaction at once get one case, and each is told
which. A move is a compare-and-set (`UPDATE ... WHERE state = <the state it was decided
from>`) written with its audit line in one transaction, so two people moving one case at
once cannot both succeed from the same state.

It hands out typed rows (`StoredCase`, `CaseEntry`, `CaseEvidence`: `collector.caserows`),
never the database's mappings.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, select, update
from sqlalchemy.exc import IntegrityError

from collector.caserows import (
    CaseEntry,
    CaseEvidence,
    OutcomeStep,
    StatusAround,
    StoredCase,
)
from collector.cases import CaseError, CaseState, Move, manual
from collector.metrics import CaseGauge
from collector.schema import (
    aggregate_time,
    case_events,
    cases,
    outcome_log,
    settlements,
    status_events,
    transactions,
)
from collector.store.inserts import CaseInsert
from collector.store.rows import StoredSettlement, StoredTransaction

OPEN_CASE_STATES = tuple(
    state.value
    for state in CaseState
    if state not in (CaseState.CONFIRMED, CaseState.CLOSED, CaseState.CANCELLED)
)


def mask_account(account: str) -> str:
    """A settlement account as it may be kept: the last four digits, the rest starred."""
    digits = "".join(ch for ch in account if ch.isalnum())
    if len(digits) < 8:
        raise CaseError("an account number has at least 8 digits")
    return "*" * (len(digits) - 4) + digits[-4:]


@dataclass(frozen=True, slots=True)
class Opened:
    """The case for a transaction, and whether this call opened it."""

    case: StoredCase
    created: bool


class CaseStore:
    """Cases on the collector's database engine (writes) and its read engine."""

    def __init__(self, engine: Engine, *, reads: Engine | None = None) -> None:
        self.engine = engine
        self.reads = reads or engine

    # --- opening and moving -------------------------------------------------------------

    def open(
        self,
        txn: StoredTransaction,
        *,
        cause: str,
        now: datetime,
        actor: str,
        alert_id: str | None = None,
        remedy: str | None = None,
        bank_code: str | None = None,
    ) -> Opened:
        """Open the case of a stored transaction, or find it."""
        case_id = f"C-{uuid.uuid4().hex[:12]}"
        amount = txn.expected_net if txn.expected_net is not None else txn.amount
        # The insert's values, executed here (and read back as the case it opened).
        row: CaseInsert = {
            "case_id": case_id,
            "transaction_id": txn.id,
            "tid": txn.tid,
            "mid": txn.mid,
            "rrn": txn.rrn,
            "amount": amount,
            "currency": txn.currency,
            "cause": cause,
            "remedy": remedy,
            "alert_id": alert_id,
            "state": CaseState.OPEN.value,
            "state_since": now,
            "opened_at": now,
            "updated_at": now,
            "bank_code": bank_code,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(cases.insert().values(row))
                self._event(
                    conn, case_id, now, actor, None, after=CaseState.OPEN, note=f"cause {cause}"
                )
        except IntegrityError:
            existing = self.for_transaction(txn.id)
            if existing is None:  # the insert failed for another reason
                raise
            return Opened(existing, created=False)
        empty = {column.name: None for column in cases.columns}
        return Opened(StoredCase.from_row({**empty, **row}), created=True)

    def advance(
        self,
        case_id: str,
        to: CaseState,
        *,
        actor: str,
        now: datetime,
        note: str = "",
        account: str | None = None,
    ) -> StoredCase:
        """A person moves a case (validated by `collector.cases.manual`)."""
        case = self._must(case_id)
        move = manual(case.state, to, reason=note or None)
        values: dict[str, str] = {}
        if account is not None:
            values["account_masked"] = mask_account(account)
        if to is CaseState.REJECTED:
            values["rejection_reason"] = note[:256]
        return self.apply(case, move, actor=actor, now=now, values=values)

    def apply(
        self,
        case: StoredCase,
        move: Move,
        *,
        actor: str,
        now: datetime,
        values: Mapping[str, str] | None = None,
    ) -> StoredCase:
        """Record a move decided from `case.state`; `CaseError` if the case moved meanwhile.

        `values`: other columns set with the move (a masked account, the bank's reason,
        the re-remittance's settlement id)."""
        current = case.state
        with self.engine.begin() as conn:
            done = conn.execute(
                update(cases)
                .where(cases.c.case_id == case.case_id, cases.c.state == current.value)
                .values(
                    state=move.to.value,
                    state_since=now,
                    updated_at=now,
                    sla_breached_state=None,
                    **dict(values or {}),
                )
            )
            if done.rowcount != 1:
                raise CaseError(f"case {case.case_id} is no longer {current.value}; look again")
            self._event(conn, case.case_id, now, actor, current, after=move.to, note=move.note)
        return self._must(case.case_id)

    def sla_alerted(self, case_id: str, state: CaseState) -> None:
        """Record that the SLA alert of the case's `state` has fired (once per state)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(cases)
                .where(cases.c.case_id == case_id)
                .values(sla_breached_state=state.value)
            )

    # --- reading ------------------------------------------------------------------------

    def get(self, case_id: str) -> StoredCase | None:
        rows = self._rows(select(cases).where(cases.c.case_id == case_id))
        return StoredCase.from_row(rows[0]) if rows else None

    def for_transaction(self, transaction_id: int) -> StoredCase | None:
        rows = self._rows(select(cases).where(cases.c.transaction_id == transaction_id))
        return StoredCase.from_row(rows[0]) if rows else None

    def search(
        self,
        *,
        state: str | None = None,
        tid: str | None = None,
        mid: str | None = None,
        cause: str | None = None,
        limit: int = 100,
    ) -> list[StoredCase]:
        """Cases newest first; `state` "open" means any state still being worked."""
        key = cases.c
        query = select(cases).order_by(key.opened_at.desc(), key.case_id).limit(limit)
        if state == "open":
            query = query.where(key.state.in_(OPEN_CASE_STATES))
        elif state is not None:
            query = query.where(key.state == state)
        for column, value in ((key.tid, tid), (key.mid, mid), (key.cause, cause)):
            if value is not None:
                query = query.where(column == value)
        return [StoredCase.from_row(row) for row in self._rows(query)]

    def audit_log(self, case_id: str) -> list[CaseEntry]:
        """A case's moves, oldest first."""
        key = case_events.c
        query = select(case_events).where(key.case_id == case_id).order_by(key.id)
        return [CaseEntry.from_row(row) for row in self._rows(query)]

    def counts(self) -> dict[str, int]:
        """Cases per state."""
        from sqlalchemy import func  # noqa: PLC0415

        with self.reads.connect() as conn:
            rows = conn.execute(select(cases.c.state, func.count()).group_by(cases.c.state))
            return {str(state): int(count) for state, count in rows}

    def gauges(self, now: datetime) -> list[CaseGauge]:
        """Cases per (state, cause): how many, the money, the oldest, how many past SLA."""
        from sqlalchemy import func  # noqa: PLC0415

        key = cases.c
        query = select(
            key.state,
            key.cause,
            func.count(),
            func.sum(key.amount),
            func.min(key.opened_at),
            func.count(key.sla_breached_state),
        ).group_by(key.state, key.cause)
        found: list[CaseGauge] = []
        with self.reads.connect() as conn:
            for state, cause, count, amount, first, breached in conn.execute(query):
                oldest = aggregate_time(first)
                age = (now - oldest).total_seconds() if oldest is not None else 0.0
                found.append(
                    CaseGauge(
                        str(state), str(cause), int(count), int(amount or 0), age, int(breached)
                    )
                )
        return found

    def past_sla(self, sla: Mapping[str, float], now: datetime) -> list[StoredCase]:
        """Open cases held in a state longer than its SLA (hours), not yet alerted for it."""
        found: list[StoredCase] = []
        key = cases.c
        for state, hours in sla.items():
            query = select(cases).where(
                key.state == state,
                key.state_since <= now - timedelta(hours=hours),
                key.sla_breached_state.is_(None),
            )
            found.extend(StoredCase.from_row(row) for row in self._rows(query))
        return found

    def evidence(self, case: StoredCase, window: timedelta) -> CaseEvidence:
        """What an evidence package is made of: the transaction, its settlements, the
        terminal's status within `window` of it, and the outcome log."""
        txn_rows = self._rows(select(transactions).where(transactions.c.id == case.transaction_id))
        txn = StoredTransaction.from_row(txn_rows[0]) if txn_rows else None
        stl = settlements.c
        settled = self._rows(
            select(settlements)
            .where(stl.tid == case.tid, stl.rrn == case.rrn)
            .order_by(stl.received_at)
        )
        statuses: list[RowMapping] = []
        if txn is not None:
            key = status_events.c
            around = txn.observed_at
            statuses = self._rows(
                select(status_events)
                .where(
                    key.tid == case.tid,
                    key.observed_at >= around - window,
                    key.observed_at <= around + window,
                )
                .order_by(key.observed_at)
            )
        log = self._rows(
            select(outcome_log)
            .where(outcome_log.c.transaction_id == case.transaction_id)
            .order_by(outcome_log.c.id)
        )
        return CaseEvidence(
            transaction=txn,
            settlements=tuple(StoredSettlement.from_row(row) for row in settled),
            statuses=tuple(StatusAround.from_row(row) for row in statuses),
            outcomes=tuple(OutcomeStep.from_row(row) for row in log),
        )

    # --- inside -------------------------------------------------------------------------

    def _must(self, case_id: str) -> StoredCase:
        case = self.get(case_id)
        if case is None:
            raise CaseError(f"no case {case_id}")
        return case

    def _event(
        self,
        conn: Connection,
        case_id: str,
        at: datetime,
        actor: str,
        before: CaseState | None,
        *,
        after: CaseState,
        note: str,
    ) -> None:
        conn.execute(
            case_events.insert().values(
                case_id=case_id,
                at=at,
                actor=actor[:64],
                from_state=before.value if before else None,
                to_state=after.value,
                note=note or None,
            )
        )

    def _rows(self, query: Any) -> list[RowMapping]:
        with self.reads.connect() as conn:
            return list(conn.execute(query).mappings())
