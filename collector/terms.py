"""Settlement terms: how much a merchant should receive for a transaction, and by when.

Pure functions of the configuration and a business-day calendar. Business days come from
the `holidays` library, which knows Chinese public holidays and the adjusted working
days (调休) that move a weekend day into the working week.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays

from collector.config import CollectorConfig, MerchantRule, SettlementMode

_HALF_UP = 5000  # rounding to the nearest minor unit, half up, in basis points


class BusinessCalendar:
    """Working days of one country (default CN), holidays and adjusted days included."""

    def __init__(self, country: str = "CN") -> None:
        self._holidays = holidays.country_holidays(country)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one calendar per collector, bounded
    def is_business_day(self, day: date) -> bool:
        return bool(self._holidays.is_working_day(day))

    def next_business_day(self, day: date) -> date:
        """The first business day strictly after `day`."""
        candidate = day + timedelta(days=1)
        while not self.is_business_day(candidate):
            candidate += timedelta(days=1)
        return candidate


@dataclass(frozen=True, slots=True)
class Terms:
    """One merchant's settlement terms, resolved from the configuration."""

    mode: SettlementMode
    cutoff: time
    t0_hours: float
    fee_bp: int
    fee_fixed: int

    def fee(self, amount: int) -> int:
        """The acquirer's fee in minor units: basis points rounded half up, plus the fixed part.

        A negative amount (a refund) has the negative of the fee its positive amount would
        have: a refund gives back what the sale cost, fixed part included, and rounds half
        away from zero as the sale does. The acquirer simulator (the oracle) does the same.
        """
        if amount < 0:
            return -self.fee(-amount)
        return (amount * self.fee_bp + _HALF_UP) // 10_000 + self.fee_fixed

    def expected_net(self, amount: int) -> int:
        return amount - self.fee(amount)


class SettlementTerms:
    """Terms per merchant, the calendar and the local time zone: deadlines and amounts."""

    def __init__(self, config: CollectorConfig, calendar: BusinessCalendar | None = None) -> None:
        section = config.settlement
        self.tz = ZoneInfo(section.timezone)
        self.calendar = calendar or BusinessCalendar(section.calendar)
        self.default = Terms(
            section.mode, section.cutoff, section.t0_hours, section.fee_bp, section.fee_fixed
        )
        self._by_mid = {rule.mid: _terms(rule, self.default) for rule in config.merchants}

    def for_merchant(self, mid: str) -> Terms:
        return self._by_mid.get(mid, self.default)

    def local_date(self, moment: datetime) -> date:
        """The calendar date of `moment` where the merchant is."""
        return moment.astimezone(self.tz).date()

    def deadline(self, mid: str, transaction_time: datetime) -> datetime:
        """When the money for a transaction made at `transaction_time` is due.

        T1: the cut-off on the first business day after the transaction's date.
        D0: the cut-off on the transaction's date, or the next day's if it came after it.
        T0: `t0_hours` after the transaction.
        """
        terms = self.for_merchant(mid)
        local = transaction_time.astimezone(self.tz)
        if terms.mode is SettlementMode.T0:
            return transaction_time + timedelta(hours=terms.t0_hours)
        if terms.mode is SettlementMode.D0:
            day = local.date() if local.time() < terms.cutoff else local.date() + timedelta(1)
        else:
            day = self.calendar.next_business_day(local.date())
        return datetime.combine(day, terms.cutoff, tzinfo=self.tz)


def _terms(rule: MerchantRule, default: Terms) -> Terms:
    """A merchant's terms: what its rule names, the default for the rest."""
    return Terms(
        default.mode if rule.mode is None else rule.mode,
        default.cutoff if rule.cutoff is None else rule.cutoff,
        default.t0_hours if rule.t0_hours is None else rule.t0_hours,
        default.fee_bp if rule.fee_bp is None else rule.fee_bp,
        default.fee_fixed if rule.fee_fixed is None else rule.fee_fixed,
    )
