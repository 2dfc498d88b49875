"""The re-remittance (补划款) case workflow: states, the transitions allowed, what moves
a case on by itself. Pure: no database, no clock (collector.casestore applies it).

```
 OPEN ─► VERIFYING ─► SUBMITTED ─► BANK_PROCESSING ─► REMITTED ─► CONFIRMED ─► CLOSED
                          ▲  │            │              │
                          │  └──────► REJECTED ◄──────────┘   (the bank says no, with its
                          └───────────────┘                    reason; submit again)
 any state before REMITTED ─► CANCELLED   (by a person, or by itself when the original
                                           credit arrives after all)
 any open state ─► CONFIRMED   by itself, when the re-remitted money arrives in full
 SUBMITTED, BANK_PROCESSING, REMITTED ─► REJECTED   by itself, when the re-remittance
                                                    fails or comes back
```

A case exists for one original transaction (a unique constraint in the database, so
concurrent openings give one case). It is confirmed at most once: a second remittance for
a confirmed case is an alert, never a second confirmation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from posmon.wire.models import Cause


class CaseState(StrEnum):
    """Where a re-remittance stands."""

    OPEN = "OPEN"  # opened for a failed, returned or overdue transaction
    VERIFYING = "VERIFYING"  # the cause is being checked, evidence gathered
    SUBMITTED = "SUBMITTED"  # sent to the bank or acquirer
    BANK_PROCESSING = "BANK_PROCESSING"  # the bank has it
    REMITTED = "REMITTED"  # the bank says it sent the money
    CONFIRMED = "CONFIRMED"  # the money arrived (a REREMITTANCE settlement, in full)
    CLOSED = "CLOSED"  # followed up and done
    REJECTED = "REJECTED"  # the bank refused, with its reason; can be submitted again
    CANCELLED = "CANCELLED"  # not needed after all (the original credit arrived late)


TERMINAL = frozenset({CaseState.CLOSED, CaseState.CANCELLED})
# States in which the money has not been sent yet: a late original credit cancels them.
BEFORE_REMITTANCE = frozenset(
    {
        CaseState.OPEN,
        CaseState.VERIFYING,
        CaseState.SUBMITTED,
        CaseState.BANK_PROCESSING,
        CaseState.REJECTED,
    }
)
OPEN_STATES = frozenset(set(CaseState) - TERMINAL - {CaseState.CONFIRMED})

# What a person may do from each state.
TRANSITIONS: dict[CaseState, frozenset[CaseState]] = {
    CaseState.OPEN: frozenset({CaseState.VERIFYING, CaseState.CANCELLED}),
    CaseState.VERIFYING: frozenset({CaseState.SUBMITTED, CaseState.OPEN, CaseState.CANCELLED}),
    CaseState.SUBMITTED: frozenset(
        {CaseState.BANK_PROCESSING, CaseState.REJECTED, CaseState.CANCELLED}
    ),
    CaseState.BANK_PROCESSING: frozenset(
        {CaseState.REMITTED, CaseState.REJECTED, CaseState.CANCELLED}
    ),
    CaseState.REMITTED: frozenset({CaseState.CONFIRMED, CaseState.REJECTED}),
    CaseState.CONFIRMED: frozenset({CaseState.CLOSED}),
    CaseState.REJECTED: frozenset({CaseState.SUBMITTED, CaseState.VERIFYING, CaseState.CANCELLED}),
    CaseState.CLOSED: frozenset(),
    CaseState.CANCELLED: frozenset(),
}

# Causes whose failed money a re-remittance can bring (all of them by default; the
# configuration can leave some to other processes).
REMITTABLE = frozenset(Cause)


class CaseError(Exception):
    """A transition that is not allowed, or a case that does not exist."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Move:
    """A state change to record: from, to, and why."""

    to: CaseState
    note: str


def manual(current: CaseState, to: CaseState, *, reason: str | None = None) -> Move:
    """A person moves a case; raises `CaseError` for a move the workflow does not allow."""
    if to not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(state.value for state in TRANSITIONS[current])) or "none"
        raise CaseError(f"a case {current.value} cannot go to {to.value} (allowed: {allowed})")
    if to is CaseState.REJECTED and not reason:
        raise CaseError("a rejection needs the bank's reason")
    # Confirming by hand is for money seen outside posmon: say where.
    if to is CaseState.CONFIRMED and not reason:
        raise CaseError("confirming by hand needs a note saying where the money was seen")
    return Move(to, reason or "")


def remittance_arrived(current: CaseState, *, expected: int | None, credited: int) -> Move | None:
    """The re-remitted money arrived: CONFIRMED when in full; None when nothing changes.

    A short or excess amount does not confirm (the caller raises an alert), and neither
    does a second remittance for a case already confirmed or closed.
    """
    if current in (CaseState.CONFIRMED, CaseState.CLOSED, CaseState.CANCELLED):
        return None
    if expected is not None and credited != expected:
        return None
    return Move(CaseState.CONFIRMED, f"re-remittance of {credited} arrived")


def original_arrived(current: CaseState) -> Move | None:
    """The original credit arrived late: the case is not needed, if nothing was sent yet."""
    if current in BEFORE_REMITTANCE:
        return Move(CaseState.CANCELLED, "the original credit arrived after all")
    return None


def remittance_failed(current: CaseState, reason: str) -> Move | None:
    """The bank refused or returned the re-remittance: REJECTED, with its reason, from a
    state in which it had it (submitted, processing, remitted)."""
    if current in (CaseState.SUBMITTED, CaseState.BANK_PROCESSING, CaseState.REMITTED):
        return Move(CaseState.REJECTED, reason)
    return None
