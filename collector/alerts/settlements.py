"""The alert of a settlement outcome: its evidence read, its cause classified, its text.

A failed, returned, overdue, mismatched, duplicate, orphan or reversed-but-settled outcome
becomes a `Candidate`: the evidence (`FactReader.evidence`) and what the other parts know
(the failures clustered at its bank, a maintenance window, the merchant's rule) are put
into `Facts`, and `collector.classify` names the cause. Nothing here stores anything.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from collector.alerts.facts import FactReader
from collector.alerts.group import BankOutages
from collector.alerts.mute import Mutes
from collector.alerts.rows import Evidence, OutcomeRow
from collector.classify import Classification, Facts, classify
from collector.config import CollectorConfig, MerchantRule, SettlementMode
from collector.correlate import Outcome
from collector.rules import AlertType, Candidate, txn_fingerprint
from collector.store.rows import StoredSettlement, StoredTransaction
from posmon.money import money

# A credit that settles a transaction (a SETTLED or, with another amount, a MISMATCH).
LATE_CREDIT_OUTCOMES = frozenset({Outcome.SETTLED, Outcome.MISMATCH})
_SETTLEMENT_DETAILS = ("settlement_id", "status", "net_amount", "reason_code", "reason_text")


class SettlementAlerts:
    """Builds the alert of a settlement outcome."""

    def __init__(
        self, config: CollectorConfig, facts: FactReader, outages: BankOutages, mutes: Mutes
    ) -> None:
        self.config = config
        self.settings = config.alerts
        self.facts = facts
        self.outages = outages
        self.mutes = mutes
        self.merchants = {rule.mid: rule for rule in config.merchants}

    def candidate(
        self, alert_type: AlertType, outcome: Outcome, row: OutcomeRow, now: datetime
    ) -> tuple[Candidate, StoredTransaction | None]:
        """The alert for a settlement outcome, and the transaction it is about (if any)."""
        evidence = self.facts.evidence(
            row, window=timedelta(seconds=self.settings.context_window_s)
        )
        txn, settlement = evidence.txn, evidence.settlement
        source = txn or settlement
        tid = (source.tid if source else None) or row.tid
        rrn = (source.rrn if source else None) or row.rrn
        mid = source.mid if source else None
        # When the fault happened by its own record: the credit's deadline for one that
        # never came, else the settlement's time.
        occurred_at: datetime | None = None
        if outcome is Outcome.OVERDUE and txn is not None and txn.deadline is not None:
            occurred_at = txn.deadline
        elif settlement is not None:
            occurred_at = settlement.settled_at
        fingerprint = (
            f"{alert_type.value}:{row.settlement_id}"
            if alert_type is AlertType.ORPHAN_SETTLEMENT
            else txn_fingerprint(alert_type, str(tid), str(rrn))
        )
        facts = self._facts(outcome, evidence, now, occurred_at, fingerprint)
        result = classify(facts, self.settings.reason_codes)
        currency = source.currency if source else None
        amount = at_risk(outcome, txn, settlement)
        details: dict[str, object] = {
            "evidence": result.evidence,
            "outcome": outcome.value,
            "note": row.note,
        }
        if txn is not None:
            details["transaction"] = {
                "kind": txn.kind.value,
                "amount": txn.amount,
                "expected_net": txn.expected_net,
                "pan_masked": txn.pan_masked,
                "stan": txn.stan,
                "batch": txn.batch,
                "terminal_time": txn.terminal_time.isoformat(),
                "deadline": txn.deadline.isoformat() if txn.deadline else None,
            }
        if settlement is not None:
            details["settlement"] = _settlement_details(settlement)
        summary = _summary(alert_type, str(tid), str(rrn), money(amount, currency), result)
        candidate = Candidate(
            type=alert_type,
            fingerprint=fingerprint,
            cause=result.cause,
            summary=summary,
            tid=tid,
            mid=mid,
            rrn=rrn,
            bank_code=evidence.bank_code,
            amount_at_risk=amount,
            currency=currency if amount is not None else None,
            details=details,
            occurred_at=occurred_at,
        )
        return candidate, txn

    def _facts(
        self,
        outcome: Outcome,
        evidence: Evidence,
        now: datetime,
        occurred_at: datetime | None,
        fingerprint: str,
    ) -> Facts:
        txn, settlement, bank_code = evidence.txn, evidence.settlement, evidence.bank_code
        source = txn or settlement
        mid = source.mid if source else None
        rule = self.merchants.get(mid) if mid else None
        failures = 0
        maintenance = None
        if bank_code:
            # The other failures at the bank within the window before this one, by when
            # each happened.
            failures = self.outages.before(bank_code, occurred_at or now, fingerprint)
            maintenance = self.mutes.maintenance_for(bank_code, now)
        return Facts(
            outcome=outcome,
            reason_code=settlement.reason_code if settlement else None,
            rc=txn.rc if txn else None,
            merchant_status=rule.status if rule else "active",
            terminal=evidence.terminal,
            batch_closed=evidence.batch_closed,
            batch_result=evidence.batch_result,
            batch_gated=self._mode(rule) is SettlementMode.T1,
            bank_code=bank_code,
            bank_failures=failures,
            bank_outage_threshold=self.settings.bank_outage_failures,
            maintenance=maintenance,
            expected_net=txn.expected_net if txn else None,
            credited_net=settlement.net_amount if settlement else None,
            offline_settled=evidence.offline_settled,
        )

    def _mode(self, rule: MerchantRule | None) -> SettlementMode:
        """A merchant's settlement mode: its rule's, else the [settlement] default."""
        if rule is not None and rule.mode is not None:
            return rule.mode
        return self.config.settlement.mode


def at_risk(
    outcome: Outcome, txn: StoredTransaction | None, settlement: StoredSettlement | None
) -> int | None:
    """The merchant's money an alert about this outcome is about."""
    expected = txn.expected_net if txn else None
    credited = settlement.net_amount if settlement else None
    if outcome is Outcome.MISMATCH and expected is not None and credited is not None:
        return abs(expected - credited)
    if outcome in (Outcome.DUPLICATE, Outcome.ORPHAN, Outcome.REVERSED_BUT_SETTLED):
        return credited
    return expected if expected is not None else credited


def _settlement_details(settlement: StoredSettlement) -> dict[str, object]:
    """The settlement's part of an alert's details (JSON): the fields it has."""
    values: dict[str, object] = {
        "settlement_id": settlement.settlement_id,
        "status": settlement.status.value,
        "net_amount": settlement.net_amount,
        "reason_code": settlement.reason_code,
        "reason_text": settlement.reason_text,
    }
    return {key: values[key] for key in _SETTLEMENT_DETAILS if values[key] is not None}


def _summary(alert_type: AlertType, tid: str, rrn: str, amount: str, result: Classification) -> str:
    what = {
        AlertType.SETTLEMENT_FAILED: f"settlement failed, {amount} not credited",
        AlertType.SETTLEMENT_RETURNED: f"credit of {amount} returned",
        AlertType.SETTLEMENT_OVERDUE: f"{amount} not credited by its deadline",
        AlertType.AMOUNT_MISMATCH: f"credited amount differs by {amount}",
        AlertType.DUPLICATE_SETTLEMENT: f"credited twice, {amount} extra",
        AlertType.ORPHAN_SETTLEMENT: f"settlement of {amount} matches no transaction",
        AlertType.REVERSED_BUT_SETTLED: f"voided or reversed, yet {amount} credited",
    }[alert_type]
    return f"TID {tid} RRN {rrn}: {what} (cause {result.cause.value})"
