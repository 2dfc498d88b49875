"""Alerting's side of the re-remittance cases: what alerts and settlements do to a case.

A failed, returned or overdue sale whose cause calls for a re-remittance opens its case
(once) with its alert; the settlements that follow move the case on by themselves (the
re-remitted money arrived, the original credit came after all, the bank refused the
re-remittance); a case held in a state too long is a CASE_SLA_BREACHED alert. The
workflow itself (states, allowed moves) is `collector.cases`, pure; its SQL is
`collector.casestore`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from collector.alerts.facts import FactReader
from collector.alerts.lifecycle import Lifecycle
from collector.alerts.rows import OutcomeRow
from collector.cases import (
    OPEN_STATES,
    CaseError,
    original_arrived,
    remittance_arrived,
    remittance_failed,
)
from collector.config import CollectorConfig
from collector.rules import CLEARED_BY_ANY_CHANGE, AlertType, Candidate, txn_fingerprint
from collector.store.rows import StoredSettlement, StoredTransaction
from posmon.money import money
from posmon.reasons import remedy_for
from posmon.wire.models import SettlementKind, SettlementStatus

if TYPE_CHECKING:
    from collector.caserows import StoredCase
    from collector.casestore import CaseStore

logger = logging.getLogger(__name__)

# Alerts whose transaction is owed money a re-remittance can bring.
CASE_ALERTS = frozenset(
    {AlertType.SETTLEMENT_FAILED, AlertType.SETTLEMENT_RETURNED, AlertType.SETTLEMENT_OVERDUE}
)
_REFUSED = (SettlementStatus.FAILED, SettlementStatus.RETURNED)


class CaseLink:
    """Opens cases for alerts, and moves them when their settlements arrive."""

    def __init__(
        self,
        config: CollectorConfig,
        cases: CaseStore,
        facts: FactReader,
        lifecycle: Lifecycle,
    ) -> None:
        self.config = config
        self.cases = cases
        self.facts = facts
        self.lifecycle = lifecycle
        self.actor = f"collector:{facts.collector_id}"
        self.causes = {cause.value for cause in config.cases.open_for}
        # Transactions with a case still open -> its id: their settlements move the case.
        self.txns: dict[int, str] = {}

    def start(self) -> None:
        for case in self.cases.search(state="open", limit=1_000_000):
            self.txns[case.transaction_id] = case.case_id

    def open(
        self,
        alert_type: AlertType,
        txn: StoredTransaction,
        candidate: Candidate,
        now: datetime,
        alert_id: str,
    ) -> str | None:
        """The transaction's case, opened (once) when its alert is owed money and its cause
        calls for a re-remittance."""
        if alert_type not in CASE_ALERTS or candidate.cause.value not in self.causes:
            return None
        settlement = candidate.details.get("settlement") or {}
        opened = self.cases.open(
            txn,
            cause=candidate.cause.value,
            now=now,
            actor=self.actor,
            alert_id=alert_id,
            remedy=remedy_for(settlement.get("reason_code")),
            bank_code=candidate.bank_code,
        )
        case = opened.case
        if case.state in OPEN_STATES:
            self.txns[txn.id] = case.case_id
        if opened.created:
            logger.warning(
                "case %s opened for TID %s RRN %s (%s, %s)",
                case.case_id,
                case.tid,
                case.rrn,
                case.cause.value,
                money(case.amount, case.currency),
            )
        return case.case_id

    def settled(self, row: OutcomeRow, now: datetime) -> None:
        """A settlement of a transaction with an open case: the money arrived, or the
        original credit came after all."""
        txn_id = row.transaction_id
        case_id = self.txns.get(txn_id) if txn_id is not None else None
        settlement = (
            self.facts.settlement_by_id(row.settlement_id)
            if case_id and row.settlement_id
            else None
        )
        if txn_id is None or case_id is None or settlement is None:
            return
        case = self.cases.get(case_id)
        if case is None:
            return
        if settlement.kind is SettlementKind.REREMITTANCE and settlement.status in _REFUSED:
            self._remittance_failed(case, settlement, now)
            return
        if settlement.status is not SettlementStatus.CREDITED:
            return
        if settlement.kind is SettlementKind.REREMITTANCE:
            move = remittance_arrived(
                case.state, expected=case.amount, credited=settlement.net_amount
            )
            values = {"remittance_settlement_id": settlement.settlement_id}
        else:
            move, values = original_arrived(case.state), {}
        if move is None:
            return
        try:
            self.cases.apply(case, move, actor=self.actor, now=now, values=values)
        except CaseError as exc:
            logger.info("case %s not moved by settlement %s: %s", case_id, row.settlement_id, exc)
            return
        logger.info("case %s %s: %s", case_id, move.to.value, move.note)
        if move.to not in OPEN_STATES:
            self.txns.pop(txn_id, None)

    def by_reference(self, row: OutcomeRow, now: datetime) -> bool:
        """A REREMITTANCE that matches no transaction but names its case (or the original
        settlement): it moves that case, and the original failure's alerts resolve."""
        settlement = self.facts.settlement_by_id(row.settlement_id) if row.settlement_id else None
        if settlement is None or settlement.kind is not SettlementKind.REREMITTANCE:
            return False
        case = self.cases.get(settlement.case_id) if settlement.case_id else None
        original_id = settlement.original_settlement_id
        if case is None and original_id:
            original = self.facts.settlement_by_id(original_id)
            if original is not None and original.transaction_id is not None:
                case = self.cases.for_transaction(original.transaction_id)
        if case is None:
            return False
        if settlement.status in _REFUSED:
            self._remittance_failed(case, settlement, now)
        elif settlement.status is SettlementStatus.CREDITED:
            move = remittance_arrived(
                case.state, expected=case.amount, credited=settlement.net_amount
            )
            if move is None:
                return False  # short, excess or a second remittance: the orphan alert stays
            values = {"remittance_settlement_id": settlement.settlement_id}
            try:
                self.cases.apply(case, move, actor=self.actor, now=now, values=values)
            except CaseError:
                return False
            self.txns.pop(case.transaction_id, None)
            for cleared in CLEARED_BY_ANY_CHANGE:
                self.lifecycle.resolve(
                    txn_fingerprint(cleared, case.tid, case.rrn),
                    now,
                    f"re-remitted under case {case.case_id} ({settlement.settlement_id})",
                )
        logger.info(
            "re-remittance %s (%s) is case %s's",
            settlement.settlement_id,
            settlement.status.value,
            case.case_id,
        )
        return True

    def slas(self, now: datetime) -> None:
        """CASE_SLA_BREACHED for a case held in a state too long; resolved once it moves."""
        sla_hours = self.config.cases.sla_hours
        for case in self.cases.past_sla(sla_hours, now):
            state = case.state.value
            hours = sla_hours[state]
            self.lifecycle.fire(
                Candidate(
                    type=AlertType.CASE_SLA_BREACHED,
                    fingerprint=f"{AlertType.CASE_SLA_BREACHED.value}:{case.case_id}:{state}",
                    cause=case.cause,
                    summary=f"Case {case.case_id} (TID {case.tid} RRN {case.rrn}) "
                    f"{state} for more than {hours:g} h",
                    tid=case.tid,
                    mid=case.mid,
                    rrn=case.rrn,
                    amount_at_risk=case.amount,
                    currency=case.currency,
                    details={
                        "evidence": [f"{state} since {case.state_since.isoformat()}"],
                        "case_id": case.case_id,
                        "state": state,
                        "sla_hours": hours,
                    },
                ),
                now,
            )
            self.cases.sla_alerted(case.case_id, case.state)
        prefix = f"{AlertType.CASE_SLA_BREACHED.value}:"
        for fingerprint in [f for f in self.lifecycle.open if f.startswith(prefix)]:
            _, case_id, state = fingerprint.split(":", 2)
            current = self.cases.get(case_id)
            if current is None or current.state.value != state:
                moved = current.state.value if current else "gone"
                self.lifecycle.resolve(fingerprint, now, f"the case moved on to {moved}")

    def _remittance_failed(
        self, case: StoredCase, settlement: StoredSettlement, now: datetime
    ) -> None:
        """The bank refused or returned the re-remittance: the case is REJECTED."""
        parts = (settlement.status.value, settlement.reason_code, settlement.reason_text)
        reason = " ".join(str(part) for part in parts if part)
        move = remittance_failed(case.state, f"bank: {reason}")
        if move is None:
            return
        try:
            self.cases.apply(
                case,
                move,
                actor=self.actor,
                now=now,
                values={"rejection_reason": move.note[:256]},
            )
        except CaseError as exc:
            logger.info("case %s not rejected: %s", case.case_id, exc)
            return
        logger.warning("case %s REJECTED by the bank: %s", case.case_id, reason)
