"""The acquirer simulator: settlement terms, faults and ground truth, files, and the MQTT run.

The core is driven with made-up virtual times (it reads no clock); one test runs the whole
simulator against a real mosquitto on an accelerated `SimClock`, and one runs the CLI.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import Broker, Listener, wait_until
from typer.testing import CliRunner

from posmon.mqtt import MqttClient
from posmon.reasons import DEFAULT_REASON_CODES, Remedy, cause_for, codes_for, lookup
from posmon.simclock import SimClock, SystemClock
from posmon.wire.codec import APPROVED_CODES
from posmon.wire.models import (
    BatchEvent,
    BatchResult,
    Cause,
    Network,
    SettlementEvent,
    SettlementStatus,
    StatusEvent,
    TxnEvent,
    TxnKind,
)
from simulators.acquirer import (
    AcquirerConfig,
    AcquirerCore,
    BankOutage,
    FaultKind,
    FaultRates,
    FrozenMerchant,
    MerchantProfile,
    Scenario,
    Scenarios,
    SettlementMode,
    SettlementTerms,
    TruthRecord,
)
from simulators.acquirer import faults as fault_codes
from simulators.acquirer.faults import parse_frozen, parse_moment, parse_outage
from simulators.acquirer.files import (
    SettlementFiles,
    TruthLog,
    csv_columns,
    read_settlement_csv,
    read_truth,
)
from simulators.acquirer.runner import AcquirerRunner
from simulators.acquirer.terms import INSTANT_HOLD, VOID_WINDOW
from simulators.cli import app

SH = ZoneInfo("Asia/Shanghai")
TID = "10000001"
MID = "898100012340001"
MID2 = "898100012340002"
# Friday 20 November 2026, 10:00 in Shanghai.
FRIDAY = datetime(2026, 11, 20, 10, 0, tzinfo=SH)
MONDAY = date(2026, 11, 23)


# --- helpers --------------------------------------------------------------------------------


def sale(
    rrn: str,
    at: datetime,
    *,
    tid: str = TID,
    mid: str = MID,
    amount: int = 12800,
    kind: TxnKind = TxnKind.SALE,
    rc: str = "00",
    batch: str = "000042",
    stan: str | None = None,
    orig_rrn: str | None = None,
    orig_stan: str | None = None,
    issuer: str = "0308",
) -> TxnEvent:
    return TxnEvent(
        event_id=uuid.uuid4(),
        agent_id="agent-1",
        tid=tid,
        mid=mid,
        kind=kind,
        amount=amount,
        currency="CNY",
        pan_masked="622202*********0123",
        rc=rc,
        approved=rc in APPROVED_CODES,
        rrn=rrn,
        stan=stan or rrn[-6:],
        batch=batch,
        terminal_time=at,
        observed_at=at,
        issuer=issuer,
        orig_rrn=orig_rrn,
        orig_stan=orig_stan,
    )


def status(at: datetime, *, link_up: bool = True, saf: int = 0, tid: str = TID) -> StatusEvent:
    return StatusEvent(
        event_id=uuid.uuid4(),
        agent_id="agent-1",
        tid=tid,
        link_up=link_up,
        network=Network.G4,
        saf_pending=saf,
        serial_ok=True,
        observed_at=at,
    )


def batch_close(
    at: datetime,
    *,
    tid: str = TID,
    mid: str = MID,
    batch: str = "000042",
    result: BatchResult = BatchResult.OK,
) -> BatchEvent:
    return BatchEvent(
        event_id=uuid.uuid4(),
        agent_id="agent-1",
        tid=tid,
        mid=mid,
        batch=batch,
        count=1,
        total=12800,
        currency="CNY",
        result=result,
        terminal_time=at,
        observed_at=at,
    )


def rrn(n: int) -> str:
    return f"{632410000000 + n:012d}"


class Run:
    """Drives a core: events at their times, then the clock moved on; collects the output."""

    def __init__(self, config: AcquirerConfig | None = None, seed: int = 1) -> None:
        self.core = AcquirerCore(config or AcquirerConfig(rates=FaultRates.none()), seed=seed)
        self.settlements: list[SettlementEvent] = []
        self.truth: list[TruthRecord] = []

    def feed(self, *events: TxnEvent | StatusEvent | BatchEvent) -> Run:
        for event in events:
            when = event.terminal_time if hasattr(event, "terminal_time") else event.observed_at
            self.until(when)
            self.core.receive(event, when)
        return self

    def until(self, moment: datetime) -> Run:
        step = self.core.advance(moment)
        self.settlements += step.settlements
        self.truth += step.truth
        return self

    def faults(self, *kinds: FaultKind) -> list[TruthRecord]:
        return [record for record in self.truth if record.kind in kinds]


def terms(**changes: object) -> SettlementTerms:
    return replace(SettlementTerms(), **changes)  # type: ignore[arg-type]


def config(**changes: object) -> AcquirerConfig:
    base = AcquirerConfig(rates=FaultRates.none())
    return replace(base, **changes)  # type: ignore[arg-type]


def merchant(mid: str, mode: SettlementMode, bank: str | None = None) -> MerchantProfile:
    return MerchantProfile.derive(mid, terms(mode=mode), bank)


# --- the clock ------------------------------------------------------------------------------


class FakeRealTime:
    """A real-time source that only moves when waited on: `wait()` is the stop event."""

    def __init__(self, start: datetime) -> None:
        self.current = start
        self.waits: list[float] = []
        self.stop_after: int | None = None

    def now(self) -> datetime:
        return self.current

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        if self.stop_after is not None and len(self.waits) > self.stop_after:
            return True
        self.current += timedelta(seconds=timeout)
        return False


def test_simclock_runs_virtual_time_scale_times_faster() -> None:
    real = FakeRealTime(datetime(2026, 11, 25, 0, 0, tzinfo=UTC))
    clock = SimClock(FRIDAY, 3600, real_now=real.now)
    assert clock.now() == FRIDAY
    real.current += timedelta(seconds=24)
    assert clock.now() == FRIDAY + timedelta(days=1)
    assert clock.real_seconds(timedelta(days=1)) == 24
    assert clock.to_real(FRIDAY + timedelta(hours=2)) == clock.anchor + timedelta(seconds=2)
    assert clock.now().tzinfo is SH


def test_simclock_sleeps_until_a_virtual_moment_or_a_stop() -> None:
    real = FakeRealTime(datetime(2026, 11, 25, 0, 0, tzinfo=UTC))
    clock = SimClock(FRIDAY, 3600, real_now=real.now)
    assert clock.sleep_until(FRIDAY + timedelta(hours=5), real)
    assert clock.now() >= FRIDAY + timedelta(hours=5)
    assert max(real.waits) <= 1.0  # long waits are cut up so a stop is seen promptly
    assert sum(real.waits) == pytest.approx(5.0)
    real.stop_after = 0
    assert not clock.sleep_until(clock.now() + timedelta(hours=1), real)


def test_simclock_with_scale_one_at_its_anchor_is_real_time() -> None:
    start = datetime.now(UTC)
    clock = SimClock(start, 1.0, start)
    assert abs((clock.now() - datetime.now(UTC)).total_seconds()) < 0.5
    assert abs((SystemClock(SH).now() - datetime.now(UTC)).total_seconds()) < 0.5
    assert SystemClock().real_seconds(timedelta(minutes=1)) == 60


def test_simclock_refuses_naive_times_and_bad_scales() -> None:
    with pytest.raises(ValueError, match="aware"):
        SimClock(datetime(2026, 11, 20, 10, 0), 60)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="scale"):
        SimClock(FRIDAY, 0)


# --- reason codes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        ("AC01", Cause.ACCOUNT_INFO),
        ("AC04", Cause.ACCOUNT_INFO),
        ("AC06", Cause.ACCOUNT_INFO),
        ("BE01", Cause.ACCOUNT_INFO),
        ("RR04", Cause.MERCHANT_QUALIFICATION),
        ("M102", Cause.MERCHANT_QUALIFICATION),
        ("TM01", Cause.BANK_SYSTEM),
        ("B201", Cause.BANK_SYSTEM),
        ("O301", Cause.OPERATOR),
        ("N401", Cause.NETWORK),
        ("MS03", Cause.UNKNOWN),
        (" ac04 ", Cause.ACCOUNT_INFO),
        ("ZZ99", Cause.UNKNOWN),
        (None, Cause.UNKNOWN),
    ],
)
def test_reason_codes_map_to_causes(code: str | None, cause: Cause) -> None:
    assert cause_for(code) is cause


def test_reason_table_is_complete_and_fits_the_wire() -> None:
    for cause in Cause:
        assert codes_for(cause), f"no code for {cause}"
    for code, reason in DEFAULT_REASON_CODES.items():
        assert code == reason.code
        assert 1 <= len(reason.text) <= 256
        reason.text.encode("gbk")  # settlement files may be GBK
    every_fault_code = (
        fault_codes.ACCOUNT_FAIL_CODES
        + fault_codes.ACCOUNT_RETURN_CODES
        + fault_codes.BANK_FAIL_CODES
        + fault_codes.OUTAGE_FAIL_CODES
        + fault_codes.UNSPECIFIED_CODES
    )
    assert all(code in DEFAULT_REASON_CODES for code in every_fault_code)
    b202, ac04 = lookup("B202"), lookup("ac04")
    assert b202 is not None and b202.retryable
    assert ac04 is not None and ac04.remedy is Remedy.FIX_ACCOUNT and not ac04.retryable
    custom = {"X1": replace(DEFAULT_REASON_CODES["AC04"], code="X1")}
    assert cause_for("X1", custom) is Cause.ACCOUNT_INFO
    assert cause_for("AC04", custom) is Cause.UNKNOWN


# --- settlement terms -----------------------------------------------------------------------


def test_t1_over_a_weekend_is_credited_on_monday_before_the_cut_off() -> None:
    run = Run().feed(sale(rrn(1), FRIDAY), batch_close(FRIDAY + timedelta(hours=9)))
    run.until(datetime(2026, 11, 23, 5, 59, tzinfo=SH))
    assert run.settlements == []
    run.until(datetime(2026, 11, 24, 0, 0, tzinfo=SH))
    [credit] = run.settlements
    assert credit.status is SettlementStatus.CREDITED
    assert credit.txn_date == date(2026, 11, 20)
    settled = credit.settled_at.astimezone(SH)
    assert settled.date() == MONDAY and clock_time(6, 0) <= settled.time() < clock_time(18, 0)
    assert (credit.amount, credit.fee, credit.net_amount) == (12800, 77, 12723)
    assert credit.settlement_id == f"STL-{TID}-{rrn(1)}-1"
    assert credit.account_masked is not None and "*" in credit.account_masked
    assert run.truth == []


@pytest.mark.parametrize(
    ("sold", "due"),
    [
        # Friday before the adjusted working Saturday 10 October 2026 (National Day 调休).
        (date(2026, 10, 9), date(2026, 10, 10)),
        # The day before the National Day holidays: paid when they are over.
        (date(2026, 9, 30), date(2026, 10, 8)),
        # Spring Festival 2026: Saturday 14 February is a working day.
        (date(2026, 2, 13), date(2026, 2, 14)),
        (date(2026, 2, 14), date(2026, 2, 24)),
    ],
)
def test_t1_follows_chinese_holidays_and_adjusted_working_days(sold: date, due: date) -> None:
    at = datetime.combine(sold, clock_time(11, 0), tzinfo=SH)
    run = Run().feed(sale(rrn(1), at), batch_close(at + timedelta(hours=1)))
    run.until(at + timedelta(days=12))
    [credit] = run.settlements
    assert credit.settled_at.astimezone(SH).date() == due


def test_d0_is_credited_the_same_day_or_the_next_after_the_cut_off() -> None:
    run = Run(config(terms=terms(mode=SettlementMode.D0)))
    evening = FRIDAY.replace(hour=19)
    run.feed(sale(rrn(1), FRIDAY), sale(rrn(2), evening))  # no BAT: D0 does not wait for one
    run.until(FRIDAY + timedelta(days=3))
    by_rrn = {s.rrn: s.settled_at.astimezone(SH) for s in run.settlements}
    assert FRIDAY < by_rrn[rrn(1)] < FRIDAY.replace(hour=18)
    assert evening < by_rrn[rrn(2)] < datetime(2026, 11, 21, 18, 0, tzinfo=SH)


def test_t0_is_credited_within_its_window() -> None:
    run = Run(config(merchants=(MerchantProfile.derive(MID, terms(mode="T0", t0_hours=1.5)),)))
    for n in range(10):
        run.feed(sale(rrn(n), FRIDAY + timedelta(minutes=7 * n)))
    run.until(FRIDAY + timedelta(days=1))
    assert len(run.settlements) == 10
    for settlement in run.settlements:
        sold = FRIDAY + timedelta(minutes=7 * int(settlement.rrn[-2:]))
        assert sold < settlement.settled_at < sold + timedelta(hours=1.5)


@pytest.mark.parametrize(
    ("amount", "fee_bp", "fee_fixed", "fee"),
    [
        (12800, 60, 0, 77),  # 76.8 -> 77
        (250, 60, 0, 2),  # 1.5 -> 2: half up
        (83, 60, 0, 0),  # 0.498 -> 0
        (125, 38, 0, 0),  # 0.475 -> 0
        (10000, 55, 100, 155),
        (0, 60, 0, 0),
    ],
)
def test_fee_is_basis_points_rounded_half_up_to_whole_fen(
    amount: int, fee_bp: int, fee_fixed: int, fee: int
) -> None:
    the_terms = terms(fee_bp=fee_bp, fee_fixed=fee_fixed, mode=SettlementMode.T0)
    assert the_terms.fee(amount) == fee
    run = Run(config(terms=the_terms)).feed(sale(rrn(1), FRIDAY, amount=amount))
    [credit] = run.until(FRIDAY + timedelta(days=1)).settlements
    assert (credit.fee, credit.net_amount) == (fee, amount - fee)


# --- voids, offline sales, batches ----------------------------------------------------------


def test_void_or_reversal_before_settlement_cancels_it() -> None:
    run = Run(config(record_normal=True))
    later = FRIDAY + timedelta(minutes=5)
    run.feed(
        sale(rrn(1), FRIDAY),
        sale(rrn(2), FRIDAY),
        sale(rrn(3), FRIDAY),
        sale(rrn(11), later, kind=TxnKind.VOID, orig_rrn=rrn(1)),
        # Only ORIG_STAN, as some terminals send a reversal.
        sale(rrn(12), later, kind=TxnKind.REVERSAL, orig_stan=rrn(2)[-6:]),
        # A void that failed at the host does not cancel anything.
        sale(rrn(13), later, kind=TxnKind.VOID, orig_rrn=rrn(3), rc="96"),
        batch_close(FRIDAY + timedelta(hours=8)),
    )
    run.until(FRIDAY + timedelta(days=4))
    assert [s.rrn for s in run.settlements] == [rrn(3)]
    assert {r.rrn for r in run.faults(FaultKind.CANCELLED)} == {rrn(1), rrn(2)}


def test_a_void_before_a_decided_late_credit_withdraws_it_and_its_truth() -> None:
    # Void first (docs/acquirer-simulator.md): the late credit was decided on Monday
    # morning, the void came before it went out, so nothing is paid and nothing was wrong.
    run = Run(config(rates=FaultRates(late=1.0, offline_lost=0.0), record_normal=True))
    run.feed(sale(rrn(1), FRIDAY), batch_close(FRIDAY + timedelta(hours=8)))
    run.until(datetime(2026, 11, 23, 17, 59, tzinfo=SH))  # decided, not paid: it is late
    assert run.settlements == [] and run.truth == []
    run.feed(sale(rrn(2), datetime(2026, 11, 23, 17, 59, tzinfo=SH), kind=TxnKind.VOID,
                  orig_rrn=rrn(1)))  # fmt: skip
    run.until(FRIDAY + timedelta(days=10))
    assert run.settlements == []
    assert [(r.kind, r.rrn) for r in run.truth] == [(FaultKind.CANCELLED, rrn(1))]
    assert run.core.queued_settlements == 0


def test_a_void_after_the_credit_is_in_the_ground_truth_and_stops_what_follows() -> None:
    # The credit has gone out, the return is queued: a void now is what a host refuses (a
    # refund was due). The truth says so; the return is not sent.
    run = Run(config(rates=FaultRates(account_returned=1.0, offline_lost=0.0),
                     terms=terms(mode=SettlementMode.T0)))  # fmt: skip
    run.feed(sale(rrn(1), FRIDAY))
    run.until(FRIDAY + timedelta(hours=2))
    assert [s.status for s in run.settlements] == [SettlementStatus.CREDITED]
    void_at = FRIDAY + timedelta(hours=3)
    run.feed(sale(rrn(2), void_at, kind=TxnKind.VOID, orig_rrn=rrn(1)))
    run.until(FRIDAY + timedelta(days=3))
    assert [s.status for s in run.settlements] == [SettlementStatus.CREDITED]
    [record] = run.truth
    assert (record.kind, record.cause, record.scenario, record.reason_code) == (
        FaultKind.VOID_AFTER_CREDIT,
        Cause.OPERATOR,
        Scenario.LATE_VOID,
        "O303",
    )
    assert record.rrn == rrn(1) and record.settled_at == void_at


def test_a_lost_void_is_in_the_ground_truth_as_soon_as_the_credit_goes_out() -> None:
    # The acquirer loses the void of a T1 sale that is also to be returned. The collector
    # sees a voided sale credited (REVERSED_BUT_SETTLED) the moment the credit comes, so
    # the truth must say so then, not with the return up to 30 h later: a run ending in
    # between scored that alert as false (every-cause.toml in CI).
    run = Run(config(rates=FaultRates(account_returned=1.0, void_ignored=1.0, offline_lost=0.0)))
    run.feed(
        sale(rrn(1), FRIDAY),
        sale(rrn(11), FRIDAY + timedelta(minutes=5), kind=TxnKind.VOID, orig_rrn=rrn(1)),
        batch_close(FRIDAY + timedelta(hours=8)),
    )
    moment = FRIDAY + timedelta(hours=8)
    while not run.settlements:
        moment += timedelta(minutes=1)
        run.until(moment)
    [credit] = run.settlements
    assert credit.status is SettlementStatus.CREDITED
    [record] = run.truth
    assert (record.kind, record.cause, record.rrn) == (
        FaultKind.VOID_IGNORED,
        Cause.OPERATOR,
        rrn(1),
    )
    assert record.settled_at == credit.settled_at and record.credited_net == credit.net_amount
    assert record.reason_code is None
    run.until(FRIDAY + timedelta(days=6))
    assert [s.status for s in run.settlements] == [
        SettlementStatus.CREDITED,
        SettlementStatus.RETURNED,
    ]
    assert run.truth == [record]  # the return adds no line of its own


def test_a_void_after_the_credits_time_finds_the_sale_paid_however_late_advance_runs() -> None:
    # A loaded runner calls advance() seldom: the void, which arrived a day after the T0
    # credit was due, reaches the core before the core was asked for that credit. It is
    # still a void after the credit: the credit goes out and the truth says VOID_AFTER_CREDIT
    # (it used to withdraw a credit dated before the void, and tell nothing).
    run = Run(config(terms=terms(mode=SettlementMode.T0)))
    run.feed(sale(rrn(1), FRIDAY))
    void_at = FRIDAY + timedelta(days=1)
    run.core.receive(sale(rrn(2), void_at, kind=TxnKind.VOID, orig_rrn=rrn(1)), void_at)
    run.until(FRIDAY + timedelta(days=3))
    [credit] = run.settlements
    assert credit.status is SettlementStatus.CREDITED and credit.settled_at < void_at
    [record] = run.truth
    assert (record.kind, record.rrn, record.settled_at) == (
        FaultKind.VOID_AFTER_CREDIT,
        rrn(1),
        void_at,
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_what_the_acquirer_does_does_not_depend_on_how_often_advance_runs(seed: int) -> None:
    # The runner advances the core after each network turn: every 20 ms on a quiet
    # machine, every few seconds (hours of virtual time at 3600x) on a loaded one. The same
    # events at the same virtual times must give the same settlements and the same truth.
    merchants = (
        merchant(MID, SettlementMode.T1),
        merchant(MID2, SettlementMode.D0),
        merchant("898100012340003", SettlementMode.T0),
    )
    mids = [profile.mid for profile in merchants]
    the_config = config(rates=FaultRates.demo(), merchants=merchants)
    events: list[TxnEvent | BatchEvent] = []
    for n in range(240):
        at = FRIDAY + timedelta(minutes=7 * n)
        events.append(sale(rrn(n), at, mid=mids[n % 3], batch="000042"))
        if n % 4 == 3:  # voids at every age: before the credit, around it, long after
            age = timedelta(minutes=(n * 37) % 900)
            events.append(
                sale(rrn(1000 + n), at + age, kind=TxnKind.VOID, orig_rrn=rrn(n - 3 * (n % 2)))
            )
    events.append(batch_close(FRIDAY + timedelta(hours=30)))
    events.sort(key=lambda event: event.terminal_time)

    def played(every: timedelta) -> tuple[list[str], list[str]]:
        core = AcquirerCore(the_config, seed=seed)
        settlements: list[SettlementEvent] = []
        truth: list[TruthRecord] = []
        moment, pending = FRIDAY, list(events)
        while moment < FRIDAY + timedelta(days=8):
            while pending and pending[0].terminal_time <= moment:
                event = pending.pop(0)
                core.receive(event, event.terminal_time)
            step = core.advance(moment)
            settlements += step.settlements
            truth += step.truth
            moment += every
        return sorted(s.to_json().decode() for s in settlements), sorted(
            r.to_json_line() for r in truth
        )

    quiet, loaded = played(timedelta(minutes=1)), played(timedelta(hours=3))
    assert quiet == loaded
    assert any('"VOID_AFTER_CREDIT"' in line for line in quiet[1])


@pytest.mark.parametrize("mode", [SettlementMode.D0, SettlementMode.T0])
def test_instant_settlement_waits_the_void_window_before_paying(mode: SettlementMode) -> None:
    run = Run(config(terms=terms(mode=mode)), seed=3)
    for n in range(200):
        run.feed(sale(rrn(n), FRIDAY + timedelta(minutes=n)))
    run.until(FRIDAY + timedelta(days=2))
    sold = {rrn(n): FRIDAY + timedelta(minutes=n) for n in range(200)}
    waits = [s.settled_at - sold[s.rrn] for s in run.settlements]
    assert len(waits) == 200
    assert min(waits) >= INSTANT_HOLD - timedelta(seconds=1) > VOID_WINDOW


def test_a_void_that_arrives_before_its_sale_still_cancels_it() -> None:
    run = Run(config(terms=terms(mode=SettlementMode.T0)))
    run.feed(sale(rrn(11), FRIDAY, kind=TxnKind.VOID, orig_rrn=rrn(1)), sale(rrn(1), FRIDAY))
    assert run.until(FRIDAY + timedelta(days=1)).settlements == []


@pytest.mark.parametrize(
    "offline",
    [
        [status(FRIDAY - timedelta(minutes=1), link_up=False)],
        [],  # no status at all, but approved offline (Y3)
    ],
    ids=["link-down", "offline-approval"],
)
def test_a_sale_taken_offline_gets_no_settlement(offline: list[StatusEvent]) -> None:
    rc = "00" if offline else "Y3"
    run = Run(config(rates=FaultRates(offline_lost=1.0)))
    run.feed(*offline, sale(rrn(1), FRIDAY, rc=rc), batch_close(FRIDAY + timedelta(hours=1)))
    run.feed(status(FRIDAY + timedelta(hours=2)), sale(rrn(2), FRIDAY + timedelta(hours=2)))
    run.feed(batch_close(FRIDAY + timedelta(hours=3)))
    run.until(FRIDAY + timedelta(days=4))
    assert [s.rrn for s in run.settlements] == [rrn(2)]  # once back online, sales settle
    [missing] = run.truth
    assert (missing.kind, missing.cause, missing.scenario) == (
        FaultKind.MISSING,
        Cause.NETWORK,
        Scenario.OFFLINE,
    )
    assert (missing.rrn, missing.reason_code, missing.settlement_ids) == (rrn(1), "N401", ())


def test_a_sale_taken_offline_and_voided_before_its_deadline_was_owed_nothing() -> None:
    run = Run(config(rates=FaultRates(offline_lost=1.0), record_normal=True))
    later = FRIDAY + timedelta(minutes=5)
    run.feed(
        sale(rrn(1), FRIDAY, rc="Y3"),
        sale(rrn(11), later, kind=TxnKind.VOID, orig_rrn=rrn(1)),
        batch_close(FRIDAY + timedelta(hours=1)),
    )
    run.until(FRIDAY + timedelta(days=4))
    assert run.settlements == []
    assert [(r.kind, r.rrn) for r in run.truth] == [(FaultKind.CANCELLED, rrn(1))]


def test_a_sale_approved_online_while_older_sales_upload_is_settled() -> None:
    # LINK=UP with a SAF backlog: the backlog is older sales being uploaded, and a sale
    # the host approved online (RC 00) reached it, so offline_lost does not touch it.
    run = Run(config(rates=FaultRates(offline_lost=1.0)))
    run.feed(status(FRIDAY - timedelta(minutes=1), link_up=True, saf=3))
    run.feed(sale(rrn(1), FRIDAY, rc="00"), batch_close(FRIDAY + timedelta(hours=1)))
    run.until(FRIDAY + timedelta(days=4))
    assert [s.rrn for s in run.settlements] == [rrn(1)]
    assert run.truth == []


def test_offline_sales_settle_when_offline_lost_is_zero() -> None:
    run = Run(config(rates=FaultRates(offline_lost=0.0)))
    run.feed(status(FRIDAY, link_up=False), sale(rrn(1), FRIDAY, rc="Y3"), batch_close(FRIDAY))
    assert len(run.until(FRIDAY + timedelta(days=4)).settlements) == 1


def test_a_sale_in_a_batch_never_closed_gets_no_settlement() -> None:
    run = Run().feed(
        sale(rrn(1), FRIDAY, batch="000042"),
        sale(rrn(2), FRIDAY, batch="000043"),
        batch_close(FRIDAY + timedelta(hours=1), batch="000043"),
        # A failed settlement run on the terminal leaves the batch open.
        batch_close(FRIDAY + timedelta(hours=2), batch="000042", result=BatchResult.FAIL),
    )
    deadline = datetime(2026, 11, 23, 18, 0, tzinfo=SH)
    run.until(deadline - timedelta(seconds=1))
    assert [s.rrn for s in run.settlements] == [rrn(2)]
    assert run.truth == []
    run.until(deadline + timedelta(days=3))
    assert [s.rrn for s in run.settlements] == [rrn(2)]
    [missing] = run.truth
    assert (missing.kind, missing.cause, missing.scenario, missing.reason_code) == (
        FaultKind.MISSING,
        Cause.OPERATOR,
        Scenario.UNCLOSED_BATCH,
        "O301",
    )
    assert missing.injected_at == deadline


def test_a_t1_credit_waits_for_a_batch_closed_late_but_before_the_deadline() -> None:
    run = Run().feed(sale(rrn(1), FRIDAY))
    closed = datetime(2026, 11, 23, 17, 0, tzinfo=SH)  # Monday, an hour before the deadline
    run.until(closed - timedelta(minutes=1))
    assert run.settlements == []
    run.feed(batch_close(closed))
    [credit] = run.until(closed + timedelta(days=1)).settlements
    assert credit.settled_at >= closed and credit.status is SettlementStatus.CREDITED
    assert run.truth == []


def test_a_sale_heard_of_after_its_deadline_is_credited_at_once_and_recorded_late(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = Run(config(terms=terms(mode=SettlementMode.T0)))
    arrival = FRIDAY + timedelta(hours=5)  # the terminal's clock is five hours behind
    run.until(arrival)
    run.core.receive(sale(rrn(1), FRIDAY), arrival)
    [credit] = run.until(arrival).settlements
    assert credit.settled_at == arrival
    [late] = run.truth
    assert (late.kind, late.cause, late.scenario) == (
        FaultKind.LATE,
        Cause.UNKNOWN,
        Scenario.LATE_ARRIVAL,
    )
    assert "same clock" in caplog.text


def test_with_the_received_time_basis_deadlines_count_from_arrival() -> None:
    run = Run(config(terms=terms(mode=SettlementMode.T0), time_basis="received"))
    arrival = FRIDAY + timedelta(hours=5)
    run.until(arrival)
    run.core.receive(sale(rrn(1), FRIDAY), arrival)
    [credit] = run.until(arrival + timedelta(days=1)).settlements
    assert arrival < credit.settled_at < arrival + timedelta(hours=2)
    assert credit.txn_date == FRIDAY.date() and run.truth == []


# --- injected faults ------------------------------------------------------------------------


def _rates(name: str) -> FaultRates:
    return replace(FaultRates.none(), **{name: 1.0})


def _faulty_run(name: str, sales: int = 6) -> Run:
    run = Run(config(rates=_rates(name)), seed=3)
    for n in range(sales):
        run.feed(sale(rrn(n), FRIDAY + timedelta(minutes=n), amount=10000 + 37 * n))
    run.feed(batch_close(FRIDAY + timedelta(hours=8)))
    return run.until(FRIDAY + timedelta(days=10))


@pytest.mark.parametrize(
    ("name", "kind", "cause", "codes"),
    [
        ("account_failed", FaultKind.FAILED, Cause.ACCOUNT_INFO, fault_codes.ACCOUNT_FAIL_CODES),
        ("risk_hold", FaultKind.FAILED, Cause.MERCHANT_QUALIFICATION, ("M103",)),
        ("bank_failed", FaultKind.FAILED, Cause.BANK_SYSTEM, fault_codes.BANK_FAIL_CODES),
        ("unspecified_failed", FaultKind.FAILED, Cause.UNKNOWN, ("MS03", "NARR")),
    ],
)
def test_failed_settlements_carry_a_reason_code_of_their_cause(
    name: str, kind: FaultKind, cause: Cause, codes: tuple[str, ...]
) -> None:
    run = _faulty_run(name)
    assert len(run.settlements) == 6
    for settlement in run.settlements:
        assert settlement.status is SettlementStatus.FAILED
        assert settlement.reason_code in codes
        assert settlement.reason_text == DEFAULT_REASON_CODES[settlement.reason_code].text
        assert cause_for(settlement.reason_code) is cause
    assert len(run.truth) == 6
    for record in run.truth:
        assert (record.kind, record.cause, record.scenario) == (kind, cause, Scenario.RANDOM)
        assert record.reason_code in codes and len(record.settlement_ids) == 1


def test_returned_credits_come_back_later_with_an_account_code() -> None:
    run = _faulty_run("account_returned")
    for record in run.truth:
        assert (record.kind, record.cause) == (FaultKind.RETURNED, Cause.ACCOUNT_INFO)
        first, second = (s for s in run.settlements if s.settlement_id in record.settlement_ids)
        assert first.status is SettlementStatus.CREDITED and first.reason_code is None
        assert second.status is SettlementStatus.RETURNED
        assert second.reason_code == record.reason_code
        assert second.reason_code in fault_codes.ACCOUNT_RETURN_CODES
        assert second.settled_at > first.settled_at
    assert len(run.truth) == 6 and len(run.settlements) == 12


def test_late_credits_arrive_after_the_deadline() -> None:
    run = _faulty_run("late")
    deadline = datetime(2026, 11, 23, 18, 0, tzinfo=SH)
    assert all(s.settled_at > deadline for s in run.settlements)
    assert all(s.status is SettlementStatus.CREDITED for s in run.settlements)
    assert {(r.kind, r.cause, r.deadline) for r in run.truth} == {
        (FaultKind.LATE, Cause.BANK_SYSTEM, deadline)
    }


def test_duplicate_credits_have_two_settlement_ids() -> None:
    run = _faulty_run("duplicate")
    assert len(run.settlements) == 12
    assert len({s.settlement_id for s in run.settlements}) == 12
    for record in run.truth:
        assert record.kind is FaultKind.DUPLICATE and len(record.settlement_ids) == 2
        pair = [s for s in run.settlements if s.rrn == record.rrn]
        assert [s.status for s in pair] == [SettlementStatus.CREDITED] * 2


def test_mismatched_amounts_credit_another_net() -> None:
    run = _faulty_run("mismatch")
    for record in run.truth:
        assert (record.kind, record.cause, record.reason_code) == (
            FaultKind.MISMATCH,
            Cause.OPERATOR,
            "O302",
        )
        [credit] = [s for s in run.settlements if s.rrn == record.rrn]
        assert credit.net_amount == record.credited_net != record.expected_net
        assert credit.amount != record.amount
        assert credit.net_amount == credit.amount - credit.fee


def test_orphans_are_settlements_for_transactions_that_never_existed() -> None:
    run = _faulty_run("orphan", sales=4)
    sold = {rrn(n) for n in range(4)}
    orphans = [s for s in run.settlements if s.rrn not in sold]
    assert len(orphans) == 4 and len(run.settlements) == 8
    assert {r.kind for r in run.truth} == {FaultKind.ORPHAN}
    assert {r.cause for r in run.truth} == {Cause.UNKNOWN}
    assert {s.settlement_id for s in orphans} == {r.settlement_ids[0] for r in run.truth}


def test_a_frozen_merchant_fails_every_settlement_with_a_merchant_code() -> None:
    scenarios = Scenarios(frozen=(FrozenMerchant(MID2, "M101"),))
    run = Run(config(scenarios=scenarios, terms=terms(mode=SettlementMode.T0)))
    for n in range(4):
        run.feed(sale(rrn(n), FRIDAY, mid=MID2 if n % 2 else MID))
    run.until(FRIDAY + timedelta(days=1))
    by_mid = {mid: [s for s in run.settlements if s.mid == mid] for mid in (MID, MID2)}
    assert {s.status for s in by_mid[MID]} == {SettlementStatus.CREDITED}
    assert {(s.status, s.reason_code) for s in by_mid[MID2]} == {(SettlementStatus.FAILED, "M101")}
    kinds = [(r.kind, r.cause, r.mid) for r in run.truth]
    assert kinds.count((FaultKind.MERCHANT_FROZEN, Cause.MERCHANT_QUALIFICATION, MID2)) == 1
    assert kinds.count((FaultKind.FAILED, Cause.MERCHANT_QUALIFICATION, MID2)) == 2
    with pytest.raises(ValueError, match="merchant qualification"):
        FrozenMerchant(MID, "AC04")


@pytest.mark.parametrize("delay_share", [0.0, 0.5, 1.0])
def test_a_bank_outage_fails_or_delays_that_banks_settlements_in_its_window(
    delay_share: float,
) -> None:
    start = datetime(2026, 11, 23, 6, 0, tzinfo=SH)
    outage = BankOutage("0105", start, start + timedelta(hours=12), delay_share)
    merchants = (
        merchant(MID, SettlementMode.T1, "0105"),
        merchant(MID2, SettlementMode.T1, "0102"),
    )
    run = Run(config(merchants=merchants, scenarios=Scenarios(outages=(outage,))), seed=5)
    for n in range(24):
        run.feed(sale(rrn(n), FRIDAY + timedelta(minutes=n), mid=MID2 if n % 4 == 0 else MID))
    run.feed(batch_close(FRIDAY + timedelta(hours=8)))
    run.until(FRIDAY + timedelta(days=6))
    deadline = datetime(2026, 11, 23, 18, 0, tzinfo=SH)
    other_bank = [s for s in run.settlements if s.bank_code == "0102"]
    assert len(other_bank) == 6
    assert all(
        s.status is SettlementStatus.CREDITED and s.settled_at < deadline for s in other_bank
    )
    hit = [s for s in run.settlements if s.bank_code == "0105"]
    failed = [s for s in hit if s.status is SettlementStatus.FAILED]
    delayed = [s for s in hit if s.status is SettlementStatus.CREDITED]
    assert len(failed) + len(delayed) == 18
    assert all(s.reason_code in fault_codes.OUTAGE_FAIL_CODES for s in failed)
    assert all(s.settled_at > deadline for s in delayed)
    if delay_share == 0.0:
        assert not delayed
    elif delay_share == 1.0:
        assert not failed
    else:
        assert failed and delayed
    [window] = run.faults(FaultKind.BANK_OUTAGE)
    assert (window.bank_code, window.window_start, window.cause) == (
        "0105",
        start,
        Cause.BANK_SYSTEM,
    )
    spoiled = run.faults(FaultKind.FAILED, FaultKind.LATE)
    assert len(spoiled) == 18
    assert {(r.cause, r.scenario) for r in spoiled} == {(Cause.BANK_SYSTEM, Scenario.BANK_OUTAGE)}


def test_every_cause_shows_up_in_the_ground_truth() -> None:
    scenarios = Scenarios(frozen=(FrozenMerchant(MID2),))
    run = Run(config(rates=FaultRates.demo(), scenarios=scenarios), seed=11)
    run.feed(status(FRIDAY, link_up=False), sale(rrn(999), FRIDAY, rc="Y3"), status(FRIDAY))
    for n in range(400):
        run.feed(sale(rrn(n), FRIDAY + timedelta(seconds=n), mid=MID2 if n == 7 else MID))
    for n in range(400, 420):  # voids, of which the acquirer ignores some
        void_at = FRIDAY + timedelta(minutes=10)
        run.feed(sale(rrn(n), void_at, kind=TxnKind.VOID, orig_rrn=rrn(n - 400)))
    run.feed(sale(rrn(998), FRIDAY + timedelta(hours=1), batch="000099"))  # never closed
    run.feed(batch_close(FRIDAY + timedelta(hours=8)))
    run.until(FRIDAY + timedelta(days=5))  # credited on Monday; then voided all the same
    run.feed(sale(rrn(997), FRIDAY + timedelta(days=5), kind=TxnKind.VOID, orig_rrn=rrn(300)))
    run.until(FRIDAY + timedelta(days=10))
    assert {r.cause for r in run.truth} == set(Cause)
    assert {r.kind for r in run.truth} >= set(FaultKind) - {
        FaultKind.NORMAL,
        FaultKind.CANCELLED,
        FaultKind.BANK_OUTAGE,
    }


def test_the_same_seed_gives_the_same_settlements_and_faults() -> None:
    def once(seed: int) -> tuple[list[bytes], list[str]]:
        outage = BankOutage("0102", FRIDAY, FRIDAY + timedelta(days=4))
        the_config = config(
            rates=FaultRates.demo(),
            scenarios=Scenarios(outages=(outage,)),
            bank_basis="issuer",
            terms=terms(mode=SettlementMode.D0),
        )
        run = Run(the_config, seed=seed)
        for n in range(150):
            run.feed(sale(rrn(n), FRIDAY + timedelta(minutes=n), issuer=("0102", "0105")[n % 2]))
        run.until(FRIDAY + timedelta(days=6))
        return [s.to_json() for s in run.settlements], [r.to_json_line() for r in run.truth]

    first = once(42)
    assert first == once(42)
    assert first != once(43)
    assert any('"BANK_OUTAGE"' in line for line in first[1])


def test_fault_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="add up"):
        FaultRates(account_failed=0.6, late=0.6)
    with pytest.raises(ValueError, match="probability"):
        FaultRates(orphan=1.5)
    outage = parse_outage("0102@+26h/+30h", FRIDAY, 0.25)
    assert (outage.start, outage.end) == (
        FRIDAY + timedelta(hours=26),
        FRIDAY + timedelta(hours=30),
    )
    assert parse_moment("2026-11-21T09:00+08:00", FRIDAY) == FRIDAY + timedelta(hours=23)
    with pytest.raises(ValueError, match="offset"):
        parse_moment("2026-11-21T09:00", FRIDAY)
    with pytest.raises(ValueError, match="end after"):
        parse_outage("0102@+2h/+1h", FRIDAY)
    assert parse_frozen(f"{MID}:m101") == FrozenMerchant(MID, "M101")


# --- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "gbk"])
def test_settlement_files_per_day_read_back_as_settlement_messages(
    tmp_path: Path, encoding: str
) -> None:
    run = _faulty_run("account_failed", sales=3)
    run.settlements += _faulty_run("late", sales=2).settlements
    files = SettlementFiles(tmp_path, SH, encoding)
    files.write(run.settlements)
    assert [p.name for p in files.paths] == ["settlements-20261123.csv", "settlements-20261124.csv"]
    header = files.paths[0].read_bytes().decode(encoding).splitlines()[0]
    assert header.split(",") == csv_columns()
    assert "schema" not in csv_columns() and "net_amount" in csv_columns()
    back = [s for path in files.paths for s in read_settlement_csv(path, encoding)]
    assert sorted(back, key=lambda s: s.settlement_id) == sorted(
        run.settlements, key=lambda s: s.settlement_id
    )
    if encoding == "gbk":
        assert "账" in files.paths[0].read_bytes().decode("gbk")


def test_ground_truth_is_json_lines(tmp_path: Path) -> None:
    run = _faulty_run("mismatch", sales=2)
    path = tmp_path / "truth.jsonl"
    with TruthLog(path) as log:
        log.write(run.truth)
    lines = read_truth(path)
    assert [line["kind"] for line in lines] == ["MISMATCH", "MISMATCH"]
    assert lines[0]["cause"] == "OPERATOR" and lines[0]["rrn"] == rrn(0)
    assert datetime.fromisoformat(lines[0]["injected_at"]).utcoffset() is not None
    assert isinstance(lines[0]["expected_net"], int)


# --- over MQTT ------------------------------------------------------------------------------


def test_the_simulator_settles_sales_published_on_the_broker(
    broker: Broker, prefix: str, listener_factory: Callable[[Broker, str], Listener], tmp_path: Path
) -> None:
    listener = listener_factory(broker, prefix)
    # Two virtual days per real second: the T1 deadline (Monday 18:00) is ~1.7 s away.
    clock = SimClock(FRIDAY, 2 * 86400)
    scenarios = Scenarios(frozen=(FrozenMerchant(MID2),))
    core = AcquirerCore(config(scenarios=scenarios), seed=1)
    csv_dir, truth_path = tmp_path / "csv", tmp_path / "truth.jsonl"
    truth = TruthLog(truth_path)
    runner = AcquirerRunner(
        core,
        MqttClient(broker.settings(prefix), f"acquirer-{uuid.uuid4().hex[:8]}"),
        clock,
        csv_files=SettlementFiles(csv_dir, SH),
        truth=truth,
    )
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    wait_until(lambda: runner.client.connected, 10, "the simulator to connect")
    time.sleep(0.2)  # let the SUBACK arrive

    now = clock.now()
    events = [
        status(now),
        sale(rrn(1), now),
        sale(rrn(2), now, mid=MID2),
        sale(rrn(3), now),
        sale(rrn(4), now, kind=TxnKind.VOID, orig_rrn=rrn(3)),
        batch_close(now),
    ]
    for event in events:
        kind = {"posmon.txn/1": "txn", "posmon.status/1": "status", "posmon.batch/1": "batch"}
        topic = f"{prefix}/terminals/{TID}/{kind[event.SCHEMA]}"
        listener.client.publish(topic, event.to_json())
    wait_until(lambda: len(listener.on("/settlements")) >= 2, 10, "two settlements")
    time.sleep(0.3)  # nothing more should come: the voided sale is never settled
    stop.set()
    thread.join(timeout=10)
    truth.close()

    received = [SettlementEvent.from_json(m.payload) for m in listener.on("/settlements")]
    assert {(s.rrn, s.status) for s in received} == {
        (rrn(1), SettlementStatus.CREDITED),
        (rrn(2), SettlementStatus.FAILED),
    }
    assert all(s.settled_at.astimezone(SH).date() == MONDAY for s in received)
    [path] = sorted(csv_dir.glob("*.csv"))
    assert sorted(read_settlement_csv(path), key=lambda s: s.rrn) == sorted(
        received, key=lambda s: s.rrn
    )
    kinds = [(line["kind"], line.get("rrn")) for line in read_truth(truth_path)]
    assert ("FAILED", rrn(2)) in kinds and ("MERCHANT_FROZEN", None) in kinds


def test_the_cli_runs_for_a_while_and_prints_a_summary(
    broker: Broker, prefix: str, tmp_path: Path
) -> None:
    truth = tmp_path / "truth.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "acquirer",
            "--broker-port",
            str(broker.port),
            "--prefix",
            prefix,
            "--client-id",
            f"acq-{uuid.uuid4().hex[:8]}",
            "--duration",
            "0.5",
            "--seed",
            "3",
            "--origin",
            FRIDAY.isoformat(),
            "--ground-truth",
            str(truth),
            "--csv-dir",
            str(tmp_path / "csv"),
            "--encoding",
            "gbk",
            "--faults",
            "demo",
            "--frozen",
            f"{MID2}:M104",
            "--bank-outage",
            "0102@+0h/+3h",
            "--merchant",
            f"{MID}:D0:38:0105",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "seed 3" in result.output
    assert "virtual time from 2026-11-20T10:00:00+08:00 x3600" in result.output
    assert "virtual_end=2026-11-20T10:" in result.output  # half a second: half an hour
    assert "unacknowledged=0" in result.output
    lines = read_truth(truth)
    assert {line["kind"] for line in lines} == {"BANK_OUTAGE", "MERCHANT_FROZEN"}
    bad = CliRunner().invoke(app, ["acquirer", "--merchant", "nonsense"])
    assert bad.exit_code != 0


def test_every_rate_its_option_and_every_truth_kind_are_documented() -> None:
    # docs/acquirer-simulator.md is where a user looks for them (void_ignored and
    # VOID_IGNORED were missing from it).
    docs = (Path(__file__).resolve().parent.parent / "docs" / "acquirer-simulator.md").read_text()
    help_text = CliRunner().invoke(app, ["acquirer", "--help"], terminal_width=200).output
    for name in FaultRates.__dataclass_fields__:
        option = "--" + name.replace("_", "-")
        assert f"| `{name}` |" in docs, name
        assert option in docs and option in help_text, option
    for kind in FaultKind:
        assert f"`{kind.value}`" in docs, kind
    for scenario in Scenario:
        assert f"`{scenario.value}`" in docs, scenario
