"""Why a settlement failed: a cause (CONTRACT §3) and the evidence behind it. Pure.

The reason code decides when it names a cause. Otherwise the context does, strongest
evidence first, in the order an acquirer's own processing goes (the acquirer simulator's
precedence: offline > batch gate > frozen merchant > bank > the sale's own fault):

1. for a settlement that never came, the terminal's state when the sale was made
   (approved offline, LINK=DOWN in its latest status, or a SAF backlog with either):
   NETWORK. The host never saw the sale, so nothing else about it (its merchant, its bank)
   can have held its money back. A SAF backlog alone, with the link up and the sale
   approved online (an RC other than Y1/Y3), is other sales being uploaded: the host
   answered this one, so it is only evidence. And when other offline sales of its batch
   have settlement results since (credited, failed or returned), the terminal's uploads
   reach the acquirer, and the network explains nothing;
2. for a settlement that never came, its batch never closed (no BAT, or only a close that
   FAILed on the terminal): OPERATOR, when the merchant is paid out of closed batches
   (T1): the sale was never submitted for settlement. D0 and T0 merchants are paid sale
   by sale, without waiting for the batch: an open batch explains nothing.
   A batch that closed UNBALANCED is closed: acquirers settle it on their own records
   (the acquirer simulator pays it like a balanced one), so the difference is the
   operator's to explain (BATCH_UNBALANCED, an alert of its own) but it keeps no single
   sale's credit back; it is noted as evidence and the other rules decide;
3. the merchant's status (frozen, licence expired, risk hold): MERCHANT_QUALIFICATION;
4. for money not paid (failed, returned, overdue): a declared maintenance window, or a
   bank that is in an outage without this failure (`bank_outage_threshold` other
   failures there within the outage window before it, by when each happened):
   BANK_SYSTEM. A failure with nothing of its own to say (no reason code naming a cause)
   joins an outage; it never tips one over;
5. what the outcome itself says: an amount credited other than expected was keyed wrong
   (OPERATOR); a credit sent twice is the bank's (BANK_SYSTEM); a voided transaction that
   was credited anyway was mishandled (OPERATOR); a settlement that never came although
   the terminal was online and its batch closed (for D0 and T0, whatever its batch) is
   late on the bank's side (BANK_SYSTEM).

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
    batch_gated: bool = True  # paid out of closed batches (T1); D0 and T0 sale by sale
    bank_code: str | None = None
    # The other failures at the bank within the outage window before this one (by when
    # each happened). This failure is not counted: a failure with nothing of its own to
    # say joins a bank outage, it does not make one.
    bank_failures: int = 0
    bank_outage_threshold: int = 3
    maintenance: str | None = None  # the reason of a maintenance window covering the bank
    expected_net: int | None = None
    credited_net: int | None = None
    offline_settled: int = 0  # other offline sales of its batch settled: uploads got through


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
    if facts.outcome in NEVER_CAME:
        network = _network(facts)
        if network and facts.offline_settled:
            # Taken offline, but the terminal's uploads reach the acquirer: the batch's
            # other offline sales have settlement results. The network does not explain it.
            evidence.extend(network)
            evidence.append(
                f"{facts.offline_settled} other offline sales of its batch have settlement "
                "results (credited or failed): the terminal's uploads reach the acquirer"
            )
        elif network:
            return Classification(Cause.NETWORK, evidence + network)
        evidence.extend(_uploading(facts))
        if not facts.batch_gated:
            pass  # D0 and T0 are paid sale by sale: the batch holds nothing back
        elif facts.batch_closed is False:
            evidence.append("its batch was never closed (no BAT from the terminal)")
            return Classification(Cause.OPERATOR, evidence)
        elif facts.batch_result == "FAIL":
            evidence.append("its batch close FAILED on the terminal: the batch is still open")
            return Classification(Cause.OPERATOR, evidence)
        elif facts.batch_result == "UNBALANCED":
            evidence.append(
                "its batch closed UNBALANCED, which is settled on the acquirer's records: "
                "it held no credit back"
            )
    if facts.merchant_status != "active":
        evidence.append(f"merchant status is {facts.merchant_status}")
        return Classification(Cause.MERCHANT_QUALIFICATION, evidence)
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
    if outcome in NEVER_CAME and facts.terminal is not None:
        if facts.batch_closed:
            evidence.append(
                "nothing at the terminal held the sale back and its batch closed: "
                "the credit is late at the acquirer or bank"
            )
            return Classification(Cause.BANK_SYSTEM, evidence)
        if not facts.batch_gated:
            evidence.append(
                "nothing at the terminal held the sale back, and the merchant is paid sale by "
                "sale (D0/T0), whatever its batch: the credit is late at the acquirer or bank"
            )
            return Classification(Cause.BANK_SYSTEM, evidence)
    evidence.append("no evidence points to a cause")
    return Classification(Cause.UNKNOWN, evidence)


def _network(facts: Facts) -> list[str]:
    """Why the host may never have seen the sale; empty when nothing says so."""
    found: list[str] = []
    offline = facts.rc in OFFLINE_APPROVALS
    if offline:
        found.append(f"approved offline (RC {facts.rc}): the host never saw it")
    terminal = facts.terminal
    if terminal is not None:
        if terminal.link_down:
            found.append("the terminal reported LINK=DOWN around the transaction")
        # A SAF backlog with the link up is other sales being uploaded: a sale the host
        # approved online (an RC other than Y1/Y3) was not among them.
        if terminal.saf_max > 0 and (offline or terminal.link_down):
            found.append(f"the terminal held {terminal.saf_max} offline transactions (SAF)")
    return found


def _uploading(facts: Facts) -> list[str]:
    """The SAF backlog of a terminal whose link was up, beside a sale approved online."""
    terminal = facts.terminal
    if terminal is None or terminal.saf_max == 0 or terminal.link_down:
        return []
    if facts.rc in OFFLINE_APPROVALS:
        return []
    return [
        f"the terminal was uploading {terminal.saf_max} offline transactions (SAF) with its "
        f"link up, but the host approved this sale online (RC {facts.rc}): it was not "
        "among them"
    ]


def _bank(facts: Facts) -> list[str]:
    found: list[str] = []
    if facts.maintenance:
        found.append(f"bank {facts.bank_code} under maintenance: {facts.maintenance}")
    if facts.bank_code and facts.bank_failures >= facts.bank_outage_threshold:
        found.append(
            f"{facts.bank_failures} other failures at bank {facts.bank_code} within one "
            "outage window: the bank is down without this one"
        )
    return found


def _context(facts: Facts) -> list[str]:
    """What else is known, for the record, when the reason code already decided."""
    found = _bank(facts)
    if facts.merchant_status != "active":
        found.append(f"merchant status is {facts.merchant_status}")
    return found
