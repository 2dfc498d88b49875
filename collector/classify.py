"""Why a settlement failed: a cause (CONTRACT §3) and the evidence behind it. Pure.

The reason code decides when it names a cause. Otherwise the context does, strongest
evidence first:

1. the merchant's status (frozen, licence expired, risk hold): MERCHANT_QUALIFICATION;
2. the terminal's link around the transaction (approved offline, LINK=DOWN, a SAF
   backlog): NETWORK, for a settlement that never came;
3. its batch never closed, or closed unbalanced: OPERATOR, for a settlement that never came;
4. for money not paid (failed, returned, overdue): a declared maintenance window or a
   cluster of failures at the merchant's bank: BANK_SYSTEM;
5. what the outcome itself says: an amount credited other than expected was keyed wrong
   (OPERATOR); a credit sent twice is the bank's (BANK_SYSTEM); a voided transaction that
   was credited anyway was mishandled (OPERATOR); a settlement that never came although
   the terminal was online and its batch closed is late on the bank's side (BANK_SYSTEM).

A settlement that matches no transaction (ORPHAN) has no context: UNKNOWN, unless its
reason code says more. Anything else is UNKNOWN. The evidence is a list of plain
sentences for the alert's details.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from collector.correlate import Outcome
from posmon.reasons import DEFAULT_REASON_CODES
from posmon.wire.models import Cause

# ISO 8583 field 39: approved offline, so the host has not seen the transaction yet.
OFFLINE_APPROVALS = frozenset({"Y1", "Y3"})


@dataclass(frozen=True, slots=True)
class TerminalContext:
    """The terminal's state around the transaction, from its status events."""

    statuses: int = 0  # status events within the window
    link_down: bool = False
    saf_max: int = 0
    serial_down: bool = False


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the classification looks at for one transaction or settlement."""

    outcome: Outcome
    reason_code: str | None = None
    rc: str | None = None  # the transaction's response code
    merchant_status: str = "active"
    terminal: TerminalContext | None = None
    batch_closed: bool | None = None  # None: not known (no transaction)
    batch_result: str | None = None
    bank_code: str | None = None
    bank_failures: int = 0  # failures at the bank within the outage window
    bank_outage_threshold: int = 3
    maintenance: str | None = None  # the reason of a maintenance window covering the bank
    expected_net: int | None = None
    credited_net: int | None = None


@dataclass(frozen=True, slots=True)
class Classification:
    """A cause and the sentences that justify it."""

    cause: Cause
    evidence: list[str] = field(default_factory=list)


NEVER_CAME = frozenset({Outcome.OVERDUE})
NOT_PAID = frozenset({Outcome.FAILED, Outcome.RETURNED, Outcome.OVERDUE})


def reason_cause(code: str | None, overrides: Mapping[str, Cause]) -> tuple[Cause, str] | None:
    """The cause a reason code names (configuration first), with its text; None if unknown."""
    if code is None:
        return None
    key = code.strip().upper()
    if key in overrides:
        return overrides[key], f"reason code {key} (configured as {overrides[key].value})"
    reason = DEFAULT_REASON_CODES.get(key)
    if reason is None or reason.cause is Cause.UNKNOWN:
        return None
    return reason.cause, f"reason code {key}: {reason.text}"


def classify(  # noqa: PLR0911 - one return per rule, in the order the docstring gives
    facts: Facts, overrides: Mapping[str, Cause] | None = None
) -> Classification:
    """The cause of one failure, and why (see the module's rules)."""
    evidence: list[str] = []
    named = reason_cause(facts.reason_code, overrides or {})
    if named is not None:
        cause, text = named
        evidence.append(text)
        evidence.extend(_context(facts))
        return Classification(cause, evidence)
    if facts.reason_code:
        evidence.append(f"reason code {facts.reason_code} names no cause")
    if facts.outcome is Outcome.ORPHAN:
        evidence.append("no transaction matches this settlement: nothing shows why")
        return Classification(Cause.UNKNOWN, evidence)
    if facts.merchant_status != "active":
        evidence.append(f"merchant status is {facts.merchant_status}")
        return Classification(Cause.MERCHANT_QUALIFICATION, evidence)
    if facts.outcome in NEVER_CAME:
        network = _network(facts)
        if network:
            return Classification(Cause.NETWORK, evidence + network)
        if facts.batch_closed is False:
            evidence.append("its batch was never closed (no BAT from the terminal)")
            return Classification(Cause.OPERATOR, evidence)
        if facts.batch_result not in (None, "OK"):
            evidence.append(f"its batch closed {facts.batch_result}")
            return Classification(Cause.OPERATOR, evidence)
    # The bank's state explains money that did not come; not a wrong amount or a double
    # credit, which the outcome itself explains.
    bank = _bank(facts) if facts.outcome in NOT_PAID else []
    if bank:
        return Classification(Cause.BANK_SYSTEM, evidence + bank)
    return _by_outcome(facts, evidence)


def _by_outcome(facts: Facts, evidence: list[str]) -> Classification:
    outcome = facts.outcome
    if outcome is Outcome.MISMATCH:
        evidence.append(
            f"credited {facts.credited_net}, expected {facts.expected_net}: amount keyed wrong"
        )
        return Classification(Cause.OPERATOR, evidence)
    if outcome is Outcome.DUPLICATE:
        evidence.append("the same transaction was credited twice by the bank")
        return Classification(Cause.BANK_SYSTEM, evidence)
    if outcome is Outcome.REVERSED_BUT_SETTLED:
        evidence.append("credited although the terminal voided or reversed it")
        return Classification(Cause.OPERATOR, evidence)
    if outcome in NEVER_CAME and facts.terminal is not None and facts.batch_closed:
        evidence.append(
            "the terminal was online with no SAF backlog and closed its batch: "
            "the credit is late at the acquirer or bank"
        )
        return Classification(Cause.BANK_SYSTEM, evidence)
    evidence.append("no evidence points to a cause")
    return Classification(Cause.UNKNOWN, evidence)


def _network(facts: Facts) -> list[str]:
    found: list[str] = []
    if facts.rc in OFFLINE_APPROVALS:
        found.append(f"approved offline (RC {facts.rc}): the host never saw it")
    terminal = facts.terminal
    if terminal is not None:
        if terminal.link_down:
            found.append("the terminal reported LINK=DOWN around the transaction")
        if terminal.saf_max > 0:
            found.append(f"the terminal held {terminal.saf_max} offline transactions (SAF)")
    return found


def _bank(facts: Facts) -> list[str]:
    found: list[str] = []
    if facts.maintenance:
        found.append(f"bank {facts.bank_code} under maintenance: {facts.maintenance}")
    if facts.bank_code and facts.bank_failures >= facts.bank_outage_threshold:
        found.append(
            f"{facts.bank_failures} failures at bank {facts.bank_code} within the outage window"
        )
    return found


def _context(facts: Facts) -> list[str]:
    """What else is known, for the record, when the reason code already decided."""
    found = _bank(facts)
    if facts.merchant_status != "active":
        found.append(f"merchant status is {facts.merchant_status}")
    return found
