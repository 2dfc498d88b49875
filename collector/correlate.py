"""What a settlement result means for the transaction it belongs to: pure verdicts.

A transaction that should bring the merchant money (an approved SALE or
PREAUTH_COMPLETION) starts PENDING with an expected net amount and a deadline. Settlement
results, voids and the clock move it on:

| from                      | event                                  | to                    |
|---------------------------|----------------------------------------|-----------------------|
| PENDING, OVERDUE          | CREDITED, net as expected              | SETTLED               |
| PENDING, OVERDUE          | CREDITED, another net                  | MISMATCH              |
| SETTLED, MISMATCH         | CREDITED again (another settlement id) | DUPLICATE             |
| PENDING, OVERDUE          | FAILED                                 | FAILED                |
| any credited              | RETURNED                               | RETURNED              |
| FAILED, RETURNED          | CREDITED (e.g. a re-remittance)        | SETTLED / MISMATCH    |
| PENDING                   | deadline passed                        | OVERDUE               |
| PENDING, OVERDUE          | approved VOID or REVERSAL              | CANCELLED             |
| SETTLED, MISMATCH         | approved VOID or REVERSAL              | REVERSED_BUT_SETTLED  |
| CANCELLED                 | CREDITED                               | REVERSED_BUT_SETTLED  |
| CANCELLED                 | FAILED or RETURNED                     | CANCELLED (unchanged) |

A settlement that matches no transaction is an ORPHAN until one arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from posmon.wire.models import SettlementStatus, TxnKind


class Outcome(StrEnum):
    """Where a transaction (or a settlement result) stands."""

    PENDING = "PENDING"
    SETTLED = "SETTLED"
    FAILED = "FAILED"
    RETURNED = "RETURNED"
    OVERDUE = "OVERDUE"
    MISMATCH = "MISMATCH"
    DUPLICATE = "DUPLICATE"
    CANCELLED = "CANCELLED"
    REVERSED_BUT_SETTLED = "REVERSED_BUT_SETTLED"
    NOT_EXPECTED = "NOT_EXPECTED"  # declined, refunds, the voids themselves
    ORPHAN = "ORPHAN"  # settlements only: no transaction (yet)
    UNEXPECTED = "UNEXPECTED"  # settlements only: credit for a transaction owed nothing


EXPECTS_MONEY = frozenset({TxnKind.SALE, TxnKind.PREAUTH_COMPLETION})
CANCELS = frozenset({TxnKind.VOID, TxnKind.REVERSAL})
CREDITED_OUTCOMES = frozenset({Outcome.SETTLED, Outcome.MISMATCH, Outcome.DUPLICATE})
OPEN_OUTCOMES = frozenset({Outcome.PENDING, Outcome.OVERDUE})


@dataclass(frozen=True, slots=True)
class TxnState:
    """What the correlation needs to know of a stored transaction."""

    outcome: Outcome
    expected_net: int | None
    credited_by: str | None  # the settlement id that credited it


@dataclass(frozen=True, slots=True)
class Verdict:
    """The transaction's new outcome (None: unchanged) and the settlement's own."""

    txn: Outcome | None
    settlement: Outcome
    credited_by: str | None = None
    note: str = ""


def initial_outcome(kind: TxnKind, approved: bool) -> Outcome:
    """PENDING for an approved sale or completion, NOT_EXPECTED for everything else."""
    return Outcome.PENDING if approved and kind in EXPECTS_MONEY else Outcome.NOT_EXPECTED


def judge(
    state: TxnState, settlement_id: str, status: SettlementStatus, net_amount: int
) -> Verdict:
    """Apply one settlement result to a transaction (see the module's table)."""
    if status is SettlementStatus.PENDING:
        return Verdict(None, Outcome.PENDING, note="acquirer reports the credit pending")
    if state.outcome is Outcome.NOT_EXPECTED:
        return Verdict(None, Outcome.UNEXPECTED, note="no money was owed for this transaction")
    if status is SettlementStatus.CREDITED:
        return _credited(state, settlement_id, net_amount)
    return _not_credited(state, status)


def _not_credited(state: TxnState, status: SettlementStatus) -> Verdict:
    """A FAILED or RETURNED result."""
    if state.outcome is Outcome.CANCELLED:
        # Voided or reversed before any credit: no money was owed, so none failed.
        return Verdict(None, Outcome(status.value), note="the transaction was cancelled")
    if status is SettlementStatus.RETURNED:
        return Verdict(Outcome.RETURNED, Outcome.RETURNED, note="the credit came back")
    if state.outcome in CREDITED_OUTCOMES:
        return Verdict(None, Outcome.FAILED, note="a failure after the money was credited")
    return Verdict(Outcome.FAILED, Outcome.FAILED)


def _credited(state: TxnState, settlement_id: str, net_amount: int) -> Verdict:
    if state.outcome in (Outcome.CANCELLED, Outcome.REVERSED_BUT_SETTLED):
        return Verdict(
            Outcome.REVERSED_BUT_SETTLED,
            Outcome.REVERSED_BUT_SETTLED,
            credited_by=settlement_id,
            note="credited although the transaction was voided or reversed",
        )
    if state.outcome in CREDITED_OUTCOMES and state.credited_by not in (None, settlement_id):
        return Verdict(
            Outcome.DUPLICATE,
            Outcome.DUPLICATE,
            credited_by=state.credited_by,
            note=f"already credited by {state.credited_by}",
        )
    if state.expected_net is not None and net_amount != state.expected_net:
        return Verdict(
            Outcome.MISMATCH,
            Outcome.MISMATCH,
            credited_by=settlement_id,
            note=f"credited {net_amount}, expected {state.expected_net}",
        )
    return Verdict(Outcome.SETTLED, Outcome.SETTLED, credited_by=settlement_id)


def after_cancel(outcome: Outcome) -> Outcome | None:
    """A transaction's outcome once an approved VOID or REVERSAL of it is seen."""
    if outcome in OPEN_OUTCOMES:
        return Outcome.CANCELLED
    if outcome in CREDITED_OUTCOMES:
        return Outcome.REVERSED_BUT_SETTLED
    return None
