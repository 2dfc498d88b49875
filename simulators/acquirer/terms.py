"""Settlement terms of the simulated acquirer: when each merchant is paid, how much, where to.

The rules match what the collector expects (`collector.terms`), so that a settlement the
simulator means to be on time is on time for the collector too:

- T1: due at the cut-off on the first business day after the transaction's local date;
- D0: due at the cut-off on the transaction's date, or the next day's if it came after it;
- T0: due `t0_hours` after the transaction.

Business days come from the `holidays` library, which knows Chinese public holidays and
the adjusted working days (调休) that move a weekend day into the working week.
"""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from enum import StrEnum

import holidays

from posmon.pan import visible_digits_ok

# D0 and T0 are instant-settlement products: each sale is paid out on its own, none sooner
# than INSTANT_HOLD after it (or halfway through its window, if that is shorter). Until
# then the host still lets the terminal void it; the simulated terminals of such merchants
# void only sales at most VOID_WINDOW old, and refund older ones (simulators.stream).
INSTANT_HOLD = timedelta(hours=1)
VOID_WINDOW = timedelta(minutes=10)

_HALF_UP = 5_000  # basis points are 1/10,000: adding half of that rounds half up
_BASIS = 10_000


class SettlementMode(StrEnum):
    """When a merchant's money is due (see the module docstring)."""

    T1 = "T1"
    D0 = "D0"
    T0 = "T0"


class BusinessCalendar:
    """Working days of one country (default CN), public holidays and adjusted days included."""

    def __init__(self, country: str = "CN") -> None:
        self.country = country
        self._holidays = holidays.country_holidays(country)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one calendar per simulator, bounded
    def is_business_day(self, day: date) -> bool:
        """True on a working day: not a weekend or holiday, or an adjusted working day."""
        return bool(self._holidays.is_working_day(day))

    def next_business_day(self, day: date) -> date:
        """The first business day strictly after `day`."""
        candidate = day + timedelta(days=1)
        while not self.is_business_day(candidate):
            candidate += timedelta(days=1)
        return candidate


@dataclass(frozen=True, slots=True)
class SettlementTerms:
    """How one merchant is settled: mode, cut-off, T0 window and fee."""

    mode: SettlementMode = SettlementMode.T1
    cutoff: time = time(18, 0)
    t0_hours: float = 2.0
    fee_bp: int = 60
    fee_fixed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", SettlementMode(self.mode))  # "T1" is fine too
        if self.cutoff.tzinfo is not None:
            raise ValueError("cutoff is a local wall-clock time, without a zone")
        if not 0 < self.t0_hours <= 48:
            raise ValueError(f"t0_hours must be in (0, 48], got {self.t0_hours}")
        if not 0 <= self.fee_bp <= _BASIS:
            raise ValueError(f"fee_bp must be in 0..10000, got {self.fee_bp}")
        if self.fee_fixed < 0:
            raise ValueError(f"fee_fixed must be >= 0, got {self.fee_fixed}")

    def fee(self, amount: int) -> int:
        """The fee in fen: basis points of `amount` rounded half up, plus the fixed part."""
        if amount < 0:
            return -self.fee(-amount)  # symmetric, so a negative amount rounds half away too
        return (amount * self.fee_bp + _HALF_UP) // _BASIS + self.fee_fixed

    def net(self, amount: int) -> int:
        """What the merchant receives for `amount`: the amount less the fee."""
        return amount - self.fee(amount)

    def deadline(self, txn_time: datetime, tz: tzinfo, calendar: BusinessCalendar) -> datetime:
        """When the money for a transaction made at `txn_time` (aware) is due."""
        if self.mode is SettlementMode.T0:
            return txn_time + timedelta(hours=self.t0_hours)
        local = txn_time.astimezone(tz)
        if self.mode is SettlementMode.D0:
            day = local.date() if local.time() < self.cutoff else local.date() + timedelta(days=1)
        else:
            day = calendar.next_business_day(local.date())
        return datetime.combine(day, self.cutoff, tzinfo=tz)


@dataclass(frozen=True, slots=True)
class Bank:
    """A receiving bank: its 4-digit CNAPS/UnionPay code and a typical account prefix."""

    code: str
    name: str
    account_prefix: str


BANKS: tuple[Bank, ...] = (
    Bank("0102", "ICBC", "6222"),
    Bank("0103", "ABC", "6228"),
    Bank("0104", "BOC", "6217"),
    Bank("0105", "CCB", "6227"),
    Bank("0301", "BoCom", "6222"),
    Bank("0308", "CMB", "6225"),
    Bank("0309", "CIB", "6229"),
    Bank("0403", "PSBC", "6221"),
)
_BANKS_BY_CODE = {bank.code: bank for bank in BANKS}


def mask_account(prefix: str, last4: str, length: int = 16) -> str:
    """An account number as statements print it: first 4 and last 4 digits, `*` between."""
    return prefix + "*" * (length - len(prefix) - len(last4)) + last4


@dataclass(frozen=True, slots=True)
class MerchantProfile:
    """A merchant as the acquirer knows it: terms and the (masked) settlement account."""

    mid: str
    terms: SettlementTerms
    bank_code: str
    account_masked: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9A-Za-z]{15}", self.mid):
            raise ValueError(f"MID must be 15 letters or digits, got {self.mid!r}")
        if not re.fullmatch(r"[0-9A-Za-z]{1,11}", self.bank_code):
            raise ValueError(f"bank code {self.bank_code!r} is not 1..11 letters or digits")
        if not visible_digits_ok(self.account_masked):
            raise ValueError("the settlement account must be masked (first 6 / last 4 digits)")

    @classmethod
    def derive(
        cls, mid: str, terms: SettlementTerms, bank_code: str | None = None
    ) -> MerchantProfile:
        """A stable profile for `mid`: the same MID always gets the same bank and account.

        Unless `bank_code` is given, the bank is picked from `BANKS` by a checksum of the MID
        (not Python's `hash`, which changes from run to run).
        """
        digest = zlib.crc32(mid.encode())
        bank = _BANKS_BY_CODE.get(bank_code or "") or BANKS[digest % len(BANKS)]
        code = bank_code or bank.code
        last4 = f"{(digest // len(BANKS)) % 10_000:04d}"
        return cls(mid, terms, code, mask_account(bank.account_prefix, last4))
