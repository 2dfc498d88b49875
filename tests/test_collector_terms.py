"""Settlement terms: deadlines on the Chinese business calendar, fees, per-merchant rules."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone

import holidays
import pytest

from collector.config import CollectorConfig, MerchantRule, SettlementMode, SettlementSection
from collector.terms import BusinessCalendar, SettlementTerms, Terms

CST = timezone(timedelta(hours=8))
MID = "898100012340001"
OTHER_MID = "898100012340002"
CN = holidays.country_holidays("CN")


def terms(**settlement: object) -> SettlementTerms:
    section = SettlementSection.model_validate(settlement)
    return SettlementTerms(CollectorConfig(settlement=section))


def local(day: str, hhmm: str = "10:30") -> datetime:
    return datetime.combine(date.fromisoformat(day), time.fromisoformat(hhmm), tzinfo=CST)


def test_the_calendar_is_the_one_the_cases_below_assume() -> None:
    # The holidays library is the source of truth; if it changes its view of 2026, the
    # deadline cases below need new dates, not new expectations.
    assert CN.is_working_day(date(2026, 2, 13))  # Friday before the Spring Festival
    assert CN.is_working_day(date(2026, 2, 14))  # Saturday, adjusted working day (调休)
    assert not any(CN.is_working_day(date(2026, 2, d)) for d in range(15, 24))
    assert CN.is_working_day(date(2026, 2, 24))
    assert CN.is_working_day(date(2026, 9, 30))
    assert not any(CN.is_working_day(date(2026, 10, d)) for d in range(1, 8))
    assert CN.is_working_day(date(2026, 10, 8))
    assert CN.is_working_day(date(2026, 10, 10))  # Saturday, adjusted working day


@pytest.mark.parametrize(
    ("made", "due"),
    [
        pytest.param("2026-11-25", "2026-11-26", id="wednesday-to-thursday"),
        pytest.param("2026-11-27", "2026-11-30", id="friday-to-monday"),
        pytest.param("2026-11-28", "2026-11-30", id="saturday-to-monday"),
        pytest.param("2026-09-30", "2026-10-08", id="before-national-day"),
        pytest.param("2026-02-13", "2026-02-14", id="friday-to-working-saturday"),
        pytest.param("2026-02-14", "2026-02-24", id="working-saturday-over-spring-festival"),
        pytest.param("2026-10-09", "2026-10-10", id="friday-to-working-saturday-october"),
        pytest.param("2025-12-31", "2026-01-04", id="over-new-year-to-a-working-sunday"),
    ],
)
def test_t1_deadline_is_the_cutoff_on_the_next_business_day(made: str, due: str) -> None:
    deadline = terms().deadline(MID, local(made))
    assert deadline == local(due, "18:00")
    assert CN.is_working_day(deadline.date())


def test_t1_counts_from_the_local_date_not_the_utc_date() -> None:
    # 17:00 UTC on Friday is 01:00 on Saturday in Shanghai: the transaction is Saturday's.
    friday_utc = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)
    settlement = terms()
    assert settlement.local_date(friday_utc) == date(2026, 11, 28)
    assert settlement.deadline(MID, friday_utc) == local("2026-11-30", "18:00")
    # 15:00 UTC is 23:00 on the Friday: due on Monday all the same.
    assert settlement.deadline(MID, friday_utc - timedelta(hours=2)) == local("2026-11-30", "18:00")


def test_t1_takes_the_configured_cutoff_and_time_zone() -> None:
    settlement = terms(cutoff="09:30", timezone="Asia/Shanghai")
    assert settlement.deadline(MID, local("2026-11-25", "23:59")) == local("2026-11-26", "09:30")


@pytest.mark.parametrize(
    ("made", "due"),
    [
        pytest.param(("2026-11-25", "10:30"), ("2026-11-25", "18:00"), id="before-cutoff"),
        pytest.param(("2026-11-25", "17:59"), ("2026-11-25", "18:00"), id="just-before-cutoff"),
        pytest.param(("2026-11-25", "18:00"), ("2026-11-26", "18:00"), id="at-cutoff"),
        pytest.param(("2026-11-25", "20:15"), ("2026-11-26", "18:00"), id="after-cutoff"),
        # D0 is calendar days: a Saturday's money is due on the Saturday.
        pytest.param(("2026-11-28", "10:00"), ("2026-11-28", "18:00"), id="saturday"),
        pytest.param(("2026-10-01", "10:00"), ("2026-10-01", "18:00"), id="holiday"),
    ],
)
def test_d0_deadline_is_the_same_day_before_the_cutoff_else_the_next(
    made: tuple[str, str], due: tuple[str, str]
) -> None:
    settlement = terms(mode="D0")
    assert settlement.deadline(MID, local(*made)) == local(*due)


@pytest.mark.parametrize("hours", [0.0005, 0.5, 2.0, 24.0, 48.0])
def test_t0_deadline_is_hours_after_the_transaction(hours: float) -> None:
    settlement = terms(mode="T0", t0_hours=hours)
    # Any day, holidays included: T0 does not look at the calendar.
    made = local("2026-10-01", "23:30")
    assert settlement.deadline(MID, made) == made + timedelta(hours=hours)


@pytest.mark.parametrize(
    ("amount", "fee_bp", "fee_fixed", "fee"),
    [
        (10_000, 60, 0, 60),  # exact
        (12_345, 60, 0, 74),  # 74.07 rounds down
        (12_400, 38, 0, 47),  # 47.12 rounds down
        (12_500, 38, 0, 48),  # 47.50 rounds half up
        (12_525, 38, 0, 48),  # 47.595 rounds up
        (25, 200, 0, 1),  # 0.50 rounds half up
        (24, 200, 0, 0),  # 0.48 rounds down
        (12_500, 38, 100, 148),  # the fixed part is added after rounding
        (0, 60, 100, 100),
        (99_999_999, 10_000, 0, 99_999_999),  # 100 %
    ],
)
def test_fee_is_basis_points_rounded_half_up_plus_the_fixed_part(
    amount: int, fee_bp: int, fee_fixed: int, fee: int
) -> None:
    rule = Terms(SettlementMode.T1, time(18), 2.0, fee_bp, fee_fixed)
    assert rule.fee(amount) == fee
    assert rule.expected_net(amount) == amount - fee


def test_a_merchant_rule_overrides_the_defaults_for_that_merchant_only() -> None:
    config = CollectorConfig(
        settlement=SettlementSection(mode=SettlementMode.T1, fee_bp=60),
        merchants=[
            MerchantRule(mid=MID, mode=SettlementMode.D0, cutoff=time(23, 0), fee_bp=38),
        ],
    )
    settlement = SettlementTerms(config)
    made = local("2026-11-27", "20:00")  # a Friday evening
    assert settlement.deadline(MID, made) == local("2026-11-27", "23:00")
    assert settlement.for_merchant(MID).expected_net(12_500) == 12_500 - 48
    assert settlement.deadline(OTHER_MID, made) == local("2026-11-30", "18:00")
    assert settlement.for_merchant(OTHER_MID).expected_net(12_500) == 12_500 - 75


def test_a_merchant_rule_inherits_what_it_does_not_name() -> None:
    # An operator who writes `mode = "T0"` for one merchant has not said its fee is zero.
    config = CollectorConfig(
        settlement=SettlementSection(
            mode=SettlementMode.T1, cutoff=time(17, 0), t0_hours=3.0, fee_bp=60, fee_fixed=5
        ),
        merchants=[MerchantRule(mid=MID, mode=SettlementMode.T0)],
    )
    settlement = SettlementTerms(config)
    rule = settlement.for_merchant(MID)
    assert rule == Terms(SettlementMode.T0, time(17, 0), 3.0, 60, 5)
    made = local("2026-11-27", "10:00")
    assert settlement.deadline(MID, made) == made + timedelta(hours=3)
    only_fee = SettlementTerms(
        CollectorConfig(
            settlement=SettlementSection(mode=SettlementMode.D0, cutoff=time(16, 0)),
            merchants=[MerchantRule(mid=MID, fee_bp=10)],
        )
    )
    assert only_fee.for_merchant(MID) == Terms(SettlementMode.D0, time(16, 0), 2.0, 10, 0)


def test_another_country_calendar() -> None:
    # The calendar is configuration; a plain weekend calendar moves Friday to Monday too.
    calendar = BusinessCalendar("US")
    assert calendar.next_business_day(date(2026, 11, 27)) == date(2026, 11, 30)
    assert calendar.next_business_day(date(2026, 11, 25)) == date(2026, 11, 27)  # Thanksgiving
