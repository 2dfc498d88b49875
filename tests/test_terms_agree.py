"""The collector's settlement terms and the acquirer simulator's (the oracle) agree.

The two are kept apart on purpose: the simulator is what the collector is checked
against, so it does not import the collector's code. This property test is what keeps
them the same rules: fee, net and deadline over amounts (negative and zero included),
moments around the cut-off, weekends, public holidays and adjusted working days (调休),
and every settlement mode.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import CollectorConfig, SettlementMode, SettlementSection
from collector.terms import SettlementTerms as CollectorTerms
from simulators.acquirer.terms import BusinessCalendar as SimulatorCalendar
from simulators.acquirer.terms import SettlementMode as SimulatorMode
from simulators.acquirer.terms import SettlementTerms as SimulatorTerms

MID = "898100012340001"
ZONES = ("Asia/Shanghai", "Asia/Hong_Kong", "UTC")
FIRST, LAST = date(2024, 1, 1), date(2027, 12, 31)
CN = holidays.country_holidays("CN", years=range(FIRST.year, LAST.year + 1))
# Public holidays, the weekend days made working days (调休) and the days on either side.
SPECIAL_DAYS = sorted(
    {day + timedelta(days=shift) for day in CN for shift in (-1, 0, 1)}
    | {
        day
        for day in (FIRST + timedelta(days=n) for n in range((LAST - FIRST).days + 1))
        if day.weekday() >= 5 and CN.is_working_day(day)
    }
)
SIMULATOR_CALENDAR = SimulatorCalendar("CN")

days = st.one_of(st.sampled_from(SPECIAL_DAYS), st.dates(FIRST, LAST))
cutoffs = st.times().map(lambda t: t.replace(second=0, microsecond=0))
amounts = st.one_of(
    st.integers(-(10**10), 10**10),
    st.integers(-1_000, 1_000),
    # Amounts whose basis points land on exactly half a minor unit.
    st.tuples(st.integers(-10_000, 10_000), st.sampled_from([2, 8, 40, 200, 5_000])).map(
        lambda pair: pair[0] * 10_000 // pair[1] + 5_000 // pair[1]
    ),
)


@st.composite
def moments(draw: st.DrawFn, cutoff: time, zone: ZoneInfo) -> datetime:
    """An aware moment on a drawn local day, often within a minute of the cut-off."""
    day = draw(days)
    near_cutoff = datetime.combine(day, cutoff) + timedelta(seconds=draw(st.integers(-60, 60)))
    local = draw(
        st.one_of(st.just(near_cutoff), st.builds(datetime.combine, st.just(day), st.times()))
    )
    return local.replace(tzinfo=zone).astimezone(UTC)


@st.composite
def sections(draw: st.DrawFn) -> SettlementSection:
    """The collector's [settlement] section over every mode and any allowed terms."""
    return SettlementSection(
        timezone=draw(st.sampled_from(ZONES)),
        calendar="CN",
        mode=draw(st.sampled_from(list(SettlementMode))),
        cutoff=draw(cutoffs),
        t0_hours=draw(st.floats(0, 48, exclude_min=True, allow_nan=False)),
        fee_bp=draw(st.one_of(st.integers(0, 10_000), st.sampled_from([0, 38, 60, 10_000]))),
        fee_fixed=draw(st.one_of(st.just(0), st.integers(0, 10_000))),
    )


@settings(max_examples=400, deadline=None)
@given(section=sections(), amount=amounts, data=st.data())
def test_collector_and_simulator_terms_agree(
    section: SettlementSection, amount: int, data: st.DataObject
) -> None:
    zone = ZoneInfo(section.timezone)
    collector = CollectorTerms(CollectorConfig(settlement=section))
    simulator = SimulatorTerms(
        SimulatorMode(section.mode.value),
        section.cutoff,
        section.t0_hours,
        section.fee_bp,
        section.fee_fixed,
    )
    merchant = collector.for_merchant(MID)

    assert merchant.fee(amount) == simulator.fee(amount), "fee"
    assert merchant.expected_net(amount) == simulator.net(amount), "net"

    made = data.draw(moments(section.cutoff, zone), label="transaction time")
    assert collector.deadline(MID, made) == simulator.deadline(made, zone, SIMULATOR_CALENDAR)


def test_every_settlement_mode_exists_in_both() -> None:
    assert {m.value for m in SettlementMode} == {m.value for m in SimulatorMode}
