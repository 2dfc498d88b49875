"""What the acquirer simulator gets wrong on purpose: per-transaction rates and scenarios.

Rates are probabilities per approved sale (or pre-authorisation completion). The random
faults exclude each other: one draw per transaction picks at most one of them, so a
transaction has at most one injected fault. Scenarios act on whole groups and take
precedence over the random faults:

- `frozen`: every settlement of these merchants FAILS with a merchant code (M102 ...);
- `outages`: between two virtual times, settlements to one bank FAIL with a bank code
  or are DELAYED past their deadline and then credited;
- `offline_lost`: a transaction the terminal reported while its link was down, or that
  was approved offline (RC Y1/Y3), is never uploaded and gets no settlement at all (a SAF
  backlog with the link up is older sales being uploaded: a sale approved online then
  reached the host);
- the batch gate (`AcquirerConfig.batch_gate`): a T1 transaction whose batch was never
  closed (no BAT) by its deadline gets no settlement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta

from posmon.reasons import DEFAULT_REASON_CODES
from posmon.wire.models import Cause

# Which codes a random fault draws from (each must be in posmon.reasons).
ACCOUNT_FAIL_CODES = ("AC01", "AC03", "AC04", "AC06", "BE01", "RC01")
ACCOUNT_RETURN_CODES = ("AC01", "AC04", "AC06", "BE01")
RISK_HOLD_CODES = ("M103",)
BANK_FAIL_CODES = ("B202", "B203", "TM01")
OUTAGE_FAIL_CODES = ("B201", "B202", "B203", "B204")
UNSPECIFIED_CODES = ("MS03", "NARR")
FROZEN_DEFAULT_CODE = "M102"

_RATES = (
    "account_failed",
    "account_returned",
    "risk_hold",
    "bank_failed",
    "unspecified_failed",
    "late",
    "duplicate",
    "mismatch",
)


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probabilities per approved sale; the first eight together must not exceed 1.

    - `account_failed`: FAILED, account code (AC01, AC03, AC04, AC06, BE01, RC01);
    - `account_returned`: CREDITED, then RETURNED later with an account code;
    - `risk_hold`: FAILED with M103 (merchant on risk hold);
    - `bank_failed`: FAILED with a bank code (B202, B203, TM01);
    - `unspecified_failed`: FAILED with MS03 or NARR (cause UNKNOWN);
    - `late`: CREDITED after the deadline;
    - `duplicate`: CREDITED twice, under two settlement ids;
    - `mismatch`: CREDITED for another amount (keyed wrong), so the net differs;
    - `orphan`: in addition, a settlement for a transaction that never existed;
    - `offline_lost`: a transaction taken offline is never uploaded (see the module);
    - `void_ignored`: an approved VOID or REVERSAL of a sale not yet settled is not
      processed, so the sale is credited anyway (drawn when the void arrives).
    """

    account_failed: float = 0.0
    account_returned: float = 0.0
    risk_hold: float = 0.0
    bank_failed: float = 0.0
    unspecified_failed: float = 0.0
    late: float = 0.0
    duplicate: float = 0.0
    mismatch: float = 0.0
    orphan: float = 0.0
    offline_lost: float = 1.0
    void_ignored: float = 0.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{item.name} must be a probability in 0..1, got {value}")
        if self.exclusive_total() > 1.0 + 1e-9:
            raise ValueError(
                f"the exclusive fault rates ({', '.join(_RATES)}) add up to more than 1"
            )

    def exclusive_total(self) -> float:
        """The chance that a transaction gets one of the mutually exclusive faults."""
        return float(sum(getattr(self, name) for name in _RATES))

    def exclusive(self) -> tuple[tuple[str, float], ...]:
        """(name, rate) of the mutually exclusive faults, in a fixed order."""
        return tuple((name, float(getattr(self, name))) for name in _RATES)

    @classmethod
    def none(cls) -> FaultRates:
        """No random faults, and transactions taken offline are uploaded after all."""
        return cls(offline_lost=0.0)

    @classmethod
    def demo(cls) -> FaultRates:
        """A mix where every kind of fault shows up within a few hundred transactions."""
        return cls(
            account_failed=0.02,
            account_returned=0.01,
            risk_hold=0.005,
            bank_failed=0.01,
            unspecified_failed=0.005,
            late=0.02,
            duplicate=0.01,
            mismatch=0.01,
            orphan=0.01,
            offline_lost=1.0,
            void_ignored=0.2,
        )


@dataclass(frozen=True, slots=True)
class FrozenMerchant:
    """A merchant whose every settlement fails with `code` (a MERCHANT_QUALIFICATION code)."""

    mid: str
    code: str = FROZEN_DEFAULT_CODE

    def __post_init__(self) -> None:
        reason = DEFAULT_REASON_CODES.get(self.code)
        if reason is None or reason.cause is not Cause.MERCHANT_QUALIFICATION:
            raise ValueError(f"{self.code!r} is not a merchant qualification code")


@dataclass(frozen=True, slots=True)
class BankOutage:
    """A bank down between `start` and `end` (virtual, aware): its settlements fail or wait.

    A settlement to `bank_code` attempted in the window is DELAYED past its deadline (then
    credited) with probability `delay_share`, and FAILS with a bank code otherwise.
    """

    bank_code: str
    start: datetime
    end: datetime
    delay_share: float = 0.5

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            if getattr(self, name).utcoffset() is None:
                raise ValueError(f"outage {name} must be timezone-aware")
        if self.end <= self.start:
            raise ValueError("an outage must end after it starts")
        if not 0.0 <= self.delay_share <= 1.0:
            raise ValueError("delay_share must be a probability in 0..1")
        if not re.fullmatch(r"[0-9A-Za-z]{1,11}", self.bank_code):
            raise ValueError(f"bank code {self.bank_code!r} is not 1..11 letters or digits")

    def covers(self, bank_code: str, moment: datetime) -> bool:
        """True when a settlement to `bank_code` at `moment` falls in the outage."""
        return bank_code == self.bank_code and self.start <= moment < self.end


_OFFSET = re.compile(r"^\+(\d+(?:\.\d+)?)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_moment(text: str, origin: datetime) -> datetime:
    """`+26h`, `+90m`, `+1.5d` after `origin`, or an ISO 8601 time with an offset."""
    text = text.strip()
    match = _OFFSET.match(text)
    if match:
        return origin + timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is neither +N[d|h|m] nor an ISO 8601 time") from exc
    if moment.utcoffset() is None:
        raise ValueError(f"{text!r} needs a UTC offset, e.g. +08:00")
    return moment


def parse_outage(text: str, origin: datetime, delay_share: float = 0.5) -> BankOutage:
    """`BANK@START/END`, e.g. `0102@+26h/+30h` or `0105@2026-11-26T09:00+08:00/...`."""
    bank, sep, window = text.partition("@")
    start, sep2, end = window.partition("/")
    if not (sep and sep2 and bank and start and end):
        raise ValueError(f"outage {text!r} is not BANK@START/END")
    return BankOutage(
        bank.strip(), parse_moment(start, origin), parse_moment(end, origin), delay_share
    )


def parse_frozen(text: str) -> FrozenMerchant:
    """`MID` or `MID:CODE`, e.g. `898100012340002:M101`."""
    mid, _, code = text.partition(":")
    return FrozenMerchant(mid.strip(), code.strip().upper() or FROZEN_DEFAULT_CODE)


@dataclass(frozen=True, slots=True)
class Scenarios:
    """The group faults: frozen merchants and bank outages."""

    frozen: tuple[FrozenMerchant, ...] = ()
    outages: tuple[BankOutage, ...] = ()
    _frozen_codes: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_frozen_codes", {item.mid: item.code for item in self.frozen})

    def frozen_code(self, mid: str) -> str | None:
        """The code every settlement of `mid` fails with, or None when it is not frozen."""
        return self._frozen_codes.get(mid)

    def outage(self, bank_code: str, moment: datetime) -> BankOutage | None:
        """The outage of `bank_code` at `moment`, if there is one."""
        for outage in self.outages:
            if outage.covers(bank_code, moment):
                return outage
        return None
