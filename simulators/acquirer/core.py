"""The acquirer simulator's decisions, without IO: what to settle, when, and what goes wrong.

`AcquirerCore` is fed the terminals' events (`receive(event, now)`) and the time
(`advance(now)`), and hands back the settlement results that have come due and the
ground-truth lines of the faults it injected. It never reads a clock, a socket or a file,
so tests drive it with made-up times and the runner (`simulators.acquirer.runner`) only
moves bytes. An event is taken at its time: whatever was due before it has happened by
then, however seldom the caller gets round to `advance()` (a loaded machine), so what the
acquirer does depends on the virtual times alone.

What it settles: every approved SALE and PREAUTH_COMPLETION, once, per its merchant's
terms (`SettlementTerms`): T1, D0 or T0, fee in basis points rounded half up, net =
amount - fee. An approved VOID or REVERSAL of a sale not yet settled cancels its
settlement; refunds are debited separately and are not settled here. A T1 transaction
also needs its batch closed (a BAT with RESULT OK or UNBALANCED) before its deadline;
the credit waits for the close.

Randomness comes from one `random.Random(seed)`, and every transaction takes the same
number of draws when it arrives, whatever happens to it later: the same seed and the same
events in the same order give the same settlements and the same faults.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from zoneinfo import ZoneInfo

from posmon.reasons import DEFAULT_REASON_CODES, cause_for
from posmon.wire.models import (
    BatchEvent,
    BatchResult,
    Cause,
    SettlementEvent,
    SettlementKind,
    SettlementStatus,
    StatusEvent,
    TxnEvent,
    TxnKind,
    WireMessage,
)
from simulators.acquirer import faults
from simulators.acquirer.faults import FaultRates, Scenarios
from simulators.acquirer.terms import (
    INSTANT_HOLD,
    BusinessCalendar,
    MerchantProfile,
    SettlementMode,
    SettlementTerms,
)
from simulators.acquirer.truth import FaultKind, Scenario, TruthRecord

logger = logging.getLogger(__name__)

EXPECTS_MONEY = frozenset({TxnKind.SALE, TxnKind.PREAUTH_COMPLETION})
CANCELS = frozenset({TxnKind.VOID, TxnKind.REVERSAL})
# ISO 8583 field 39 codes of an offline approval: the host has not seen the transaction.
OFFLINE_CODES = frozenset({"Y1", "Y3"})
# Reason codes the ground truth gives faults whose settlement itself carries none.
LATE_CODE = "B202"
DUPLICATE_CODE = "B203"
MISMATCH_CODE = "O302"
UNCLOSED_BATCH_CODE = "O301"
OFFLINE_CODE = "N401"
VOID_CODE = "O303"

_T1_DAY_START = time(6, 0)  # T1 credits go out between this and the cut-off


class TimeBasis(StrEnum):
    """Which time a transaction or batch close counts from."""

    TERMINAL = "terminal"  # the terminal's own time: terminals on the same (virtual) clock
    RECEIVED = "received"  # when the simulator received it: terminals on another clock


class BankBasis(StrEnum):
    """Which bank a settlement is sent to (and which outage it is exposed to)."""

    MERCHANT = "merchant"  # the merchant's settlement bank, as in real life
    ISSUER = "issuer"  # the card issuer from the TXN (ISS), when it has one


@dataclass(frozen=True, slots=True)
class AcquirerConfig:
    """Everything the simulated acquirer decides by, apart from the seed."""

    terms: SettlementTerms = field(default_factory=SettlementTerms)
    merchants: tuple[MerchantProfile, ...] = ()
    rates: FaultRates = field(default_factory=FaultRates)
    scenarios: Scenarios = field(default_factory=Scenarios)
    tz: tzinfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    calendar: str = "CN"
    batch_gate: bool = True
    time_basis: TimeBasis = TimeBasis.TERMINAL
    bank_basis: BankBasis = BankBasis.MERCHANT
    record_normal: bool = False
    id_prefix: str = "STL"

    def __post_init__(self) -> None:
        object.__setattr__(self, "time_basis", TimeBasis(self.time_basis))
        object.__setattr__(self, "bank_basis", BankBasis(self.bank_basis))
        mids = [profile.mid for profile in self.merchants]
        if len(set(mids)) != len(mids):
            raise ValueError("a merchant is listed twice")
        if not self.id_prefix.isascii() or not self.id_prefix.isalnum():
            raise ValueError("id_prefix must be letters and digits")


@dataclass(frozen=True, slots=True)
class Step:
    """What `advance()` hands back: settlements now due, in time order, and truth lines."""

    settlements: tuple[SettlementEvent, ...] = ()
    truth: tuple[TruthRecord, ...] = ()


class _State(StrEnum):
    SCHEDULED = "scheduled"
    WAITING_BATCH = "waiting_batch"
    LOST = "lost"  # taken offline and never uploaded: no settlement will come
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything random about one transaction, drawn when it arrives."""

    offline_lost: bool
    fault: str | None
    code: str | None
    follow: float  # 0..1: where in its window a follow-up (return, late credit) falls
    outage_roll: float  # below an outage's delay_share: delayed, else failed
    outage_code: str
    mismatch_pick: float
    mismatch_size: float


@dataclass(slots=True)
class _Txn:
    """A transaction the acquirer owes a settlement for."""

    event: TxnEvent
    profile: MerchantProfile
    bank_code: str
    txn_date: date
    deadline: datetime
    credit_at: datetime
    plan: _Plan
    state: _State = _State.SCHEDULED
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    void_ignored: bool = False  # voided at the terminal, the void lost by the acquirer
    # Once decided: when each settlement line goes out, whether a credit has gone out, the
    # ground-truth line of the decision and whether it has been written (see `_cancel`).
    line_times: list[datetime] = field(default_factory=list)
    credited_out: bool = False
    decided_truth: TruthRecord | None = None
    revealed: bool = False
    void_told: bool = False  # the VOID_IGNORED line is written (see `_tell_void_ignored`)
    withdrawn: bool = False  # voided before it was paid: lines not yet out never go

    @property
    def key(self) -> tuple[str, str]:
        return (self.event.tid, self.event.rrn)


@dataclass(frozen=True, slots=True)
class _Attempt:
    txn: _Txn


@dataclass(frozen=True, slots=True)
class _BatchDeadline:
    txn: _Txn


@dataclass(frozen=True, slots=True)
class _LostDeadline:
    txn: _Txn


@dataclass(frozen=True, slots=True)
class _Emit:
    settlement: SettlementEvent
    txn: _Txn | None = None  # None: a line of no transaction (an orphan)


@dataclass(frozen=True, slots=True)
class _Record:
    record: TruthRecord


@dataclass(frozen=True, slots=True)
class _Reveal:
    """A transaction's ground-truth line, written when its fault becomes visible."""

    txn: _Txn
    record: TruthRecord
    credited: bool  # the fault's lines include a credit


_Action = _Attempt | _BatchDeadline | _LostDeadline | _Emit | _Record | _Reveal


class AcquirerCore:
    """The simulated acquirer's logic (see the module docstring); sans-IO and seeded."""

    def __init__(self, config: AcquirerConfig | None = None, *, seed: int | None = None) -> None:
        self.config = config or AcquirerConfig()
        self.seed = seed
        self.counters: Counter[str] = Counter()
        self._rng = random.Random(seed)  # noqa: S311 - simulated faults, not secrets
        # Drawn when a void arrives, so a sale's own draws stay the same whatever follows.
        self._void_rng = random.Random(None if seed is None else seed + 1)  # noqa: S311
        self._calendar = BusinessCalendar(self.config.calendar)
        self._profiles = {profile.mid: profile for profile in self.config.merchants}
        self._queue: list[tuple[datetime, int, _Action]] = []
        self._order = itertools.count()
        self._out: list[SettlementEvent] = []  # due, not yet handed back by advance()
        self._truth: list[TruthRecord] = []
        self._txns: dict[tuple[str, str], _Txn] = {}
        self._finished: set[tuple[str, str]] = set()
        # Decided transactions, until nothing of theirs is left to publish.
        self._decided: dict[tuple[str, str], _Txn] = {}
        self._cancelled_early: set[tuple[str, str]] = set()  # void seen before its sale
        self._by_stan: dict[tuple[str, str], str] = {}  # (tid, stan) -> rrn
        self._seen_events: set[str] = set()
        self._links: dict[str, tuple[bool, int]] = {}  # tid -> (link_up, saf_pending)
        self._closed: dict[tuple[str, str], datetime] = {}  # (tid, batch) -> closed at
        self._waiting: dict[tuple[str, str], list[_Txn]] = {}
        self._started = False
        self._last_now: datetime | None = None
        self._warned_clock = False
        for outage in self.config.scenarios.outages:
            self._push(
                outage.start,
                _Record(
                    TruthRecord(
                        kind=FaultKind.BANK_OUTAGE,
                        cause=Cause.BANK_SYSTEM,
                        scenario=Scenario.BANK_OUTAGE,
                        injected_at=outage.start,
                        bank_code=outage.bank_code,
                        window_start=outage.start,
                        window_end=outage.end,
                        note=f"delay_share={outage.delay_share:g}",
                    )
                ),
            )

    # --- public surface -----------------------------------------------------------------

    def profile(self, mid: str) -> MerchantProfile:
        """The merchant's profile: as configured, or derived from the default terms."""
        profile = self._profiles.get(mid)
        if profile is None:
            profile = MerchantProfile.derive(mid, self.config.terms)
            self._profiles[mid] = profile
        return profile

    def receive(self, event: WireMessage, now: datetime) -> None:
        """Take in one terminal event (TXN, status or batch) that arrived at `now` (virtual).

        What came due before `now` happens first (the next `advance()` hands it back): a
        void that arrives after a credit's time finds the sale paid, whether or not the
        caller has asked for that credit yet.
        """
        _aware(now)
        self._run_due(now)
        if isinstance(event, TxnEvent):
            self._receive_txn(event, now)
        elif isinstance(event, StatusEvent):
            self.counters["status_received"] += 1
            self._links[event.tid] = (event.link_up, event.saf_pending)
        elif isinstance(event, BatchEvent):
            self._receive_batch(event, now)
        else:
            self.counters["ignored"] += 1

    def advance(self, now: datetime) -> Step:
        """Everything that has come due by `now` (virtual): settlements and truth lines."""
        _aware(now)
        self._run_due(now)
        settlements, self._out = self._out, []
        truth, self._truth = self._truth, []
        return Step(tuple(settlements), tuple(truth))

    def _run_due(self, now: datetime) -> None:
        """Do what is due by `now`, in time order; its output waits for `advance()`."""
        if self._last_now is not None and now < self._last_now:
            now = self._last_now  # time does not run backwards, even if a caller's does
        self._last_now = now
        if not self._started:
            self._started = True
            self._announce_frozen(now)
        while self._queue and self._queue[0][0] <= now:
            when, _, action = heapq.heappop(self._queue)
            if isinstance(action, _Emit):
                if self._emit(action):
                    self._out.append(action.settlement)
            elif isinstance(action, _Record):
                self._record(action.record)
            elif isinstance(action, _Reveal):
                self._reveal(action)
            elif isinstance(action, _Attempt):
                self._attempt(action.txn, when)
            elif isinstance(action, _LostDeadline):
                self._lost_deadline(action.txn, when)
            else:
                self._batch_deadline(action.txn, when)

    def next_due(self) -> datetime | None:
        """When `advance()` next has something to do, or None when nothing is scheduled."""
        if (self._out or self._truth) and self._last_now is not None:
            return self._last_now  # done while taking an event in, not handed back yet
        return self._queue[0][0] if self._queue else None

    @property
    def open_settlements(self) -> int:
        """Transactions still owed a settlement (scheduled or waiting for their batch)."""
        return len(self._txns)

    @property
    def queued_settlements(self) -> int:
        """Settlement lines decided but not yet due (late credits, returns, duplicates)."""
        return sum(
            isinstance(action, _Emit) and not (action.txn and action.txn.withdrawn)
            for _, _, action in self._queue
        )

    # --- intake -------------------------------------------------------------------------

    def _receive_txn(self, event: TxnEvent, now: datetime) -> None:
        if not self._first_time(str(event.event_id)):
            return
        self.counters["txn_received"] += 1
        if not event.approved:
            return
        self._by_stan[(event.tid, event.stan)] = event.rrn
        if event.kind in CANCELS:
            self._cancel(event, now)
            return
        key = (event.tid, event.rrn)
        if event.kind not in EXPECTS_MONEY or key in self._txns or key in self._finished:
            return
        config = self.config
        self.counters["txn_owed"] += 1
        txn_time = event.terminal_time if config.time_basis is TimeBasis.TERMINAL else now
        profile = self.profile(event.mid)
        bank = profile.bank_code
        if config.bank_basis is BankBasis.ISSUER and event.issuer:
            bank = event.issuer
        deadline = profile.terms.deadline(txn_time, config.tz, self._calendar)
        credit_roll = self._rng.random()
        plan = self._draw_plan()
        orphan = self._draw_orphan(event, profile, bank, txn_time, deadline)
        txn = _Txn(
            event=event,
            profile=profile,
            bank_code=bank,
            txn_date=event.terminal_time.astimezone(config.tz).date(),
            deadline=deadline,
            credit_at=max(self._credit_time(profile.terms, txn_time, deadline, credit_roll), now),
            plan=plan,
        )
        if orphan is not None:
            self._schedule_orphan(orphan, now)
        if key in self._cancelled_early or (event.tid, f"stan:{event.stan}") in (
            self._cancelled_early
        ):
            self._cancelled_early.discard(key)
            self._finished.add(key)
            self._note_cancelled(txn, now)
            return
        if self._offline(event) and plan.offline_lost:
            # Never uploaded: missing once its deadline has passed, unless voided before.
            txn.state = _State.LOST
            self._txns[key] = txn
            self._push(max(deadline, now), _LostDeadline(txn))
            return
        if now >= deadline and not self._warned_clock:
            self._warned_clock = True
            logger.warning(
                "transaction %s of %s reached the simulator after its deadline %s: are the "
                "terminals on the same clock? (--time-basis received counts from arrival)",
                event.rrn,
                event.tid,
                deadline.isoformat(),
            )
        self._txns[key] = txn
        self._push(txn.credit_at, _Attempt(txn))

    def _receive_batch(self, event: BatchEvent, now: datetime) -> None:
        if not self._first_time(str(event.event_id)):
            return
        self.counters["batch_received"] += 1
        if event.result is BatchResult.FAIL:
            return  # the settlement run failed on the terminal: the batch is still open
        key = (event.tid, event.batch)
        closed_at = event.terminal_time if self.config.time_basis is TimeBasis.TERMINAL else now
        self._closed[key] = min(closed_at, self._closed.get(key, closed_at))
        for txn in self._waiting.pop(key, []):
            if txn.state is _State.WAITING_BATCH and closed_at < txn.deadline:
                txn.state = _State.SCHEDULED
                self._push(max(closed_at, txn.credit_at, now), _Attempt(txn))

    def _cancel(self, event: TxnEvent, now: datetime) -> None:
        rrn = event.orig_rrn or self._by_stan.get((event.tid, event.orig_stan or ""))
        if rrn is None:
            if event.orig_stan is not None:
                self._cancelled_early.add((event.tid, f"stan:{event.orig_stan}"))
            return
        key = (event.tid, rrn)
        txn = self._txns.get(key)
        if txn is not None:
            live = txn.state in (_State.SCHEDULED, _State.WAITING_BATCH)
            if live and self._void_rng.random() < self.config.rates.void_ignored:
                txn.void_ignored = True  # see _reveal: what happens to the sale is told then
                return
            txn.state = _State.CANCELLED
            del self._txns[key]
            self._finished.add(key)
            self._note_cancelled(txn, now)
            return
        decided = self._decided.get(key)
        if decided is not None:
            self._cancel_decided(decided, now)
        elif key not in self._finished:
            self._cancelled_early.add(key)

    def _cancel_decided(self, txn: _Txn, now: datetime) -> None:
        """A void of a sale already decided: its lines and truth may still be on their way."""
        if txn.withdrawn or txn.void_ignored:
            return  # a second void of the same sale
        if txn.credited_out:
            self._void_after_credit(txn, now)
            return
        # Decided but not paid yet: the void comes first (the documented precedence),
        # unless this acquirer loses it.
        if self._void_rng.random() < self.config.rates.void_ignored:
            txn.void_ignored = True
            return
        txn.withdrawn = True
        if not txn.revealed:
            self._note_cancelled(txn, now)

    def _void_after_credit(self, txn: _Txn, now: datetime) -> None:
        """An approved void of a sale already credited: what a host should have refused.

        The acquirer stops what is still to come for the sale (a return, a second credit)
        and the ground truth says what happened; the collector sees a voided sale that was
        paid (REVERSED_BUT_SETTLED), which someone has to take back.
        """
        txn.withdrawn = True
        event = txn.event
        self._record(
            TruthRecord(
                kind=FaultKind.VOID_AFTER_CREDIT,
                cause=Cause.OPERATOR,
                scenario=Scenario.LATE_VOID,
                injected_at=now,
                tid=event.tid,
                mid=event.mid,
                rrn=event.rrn,
                stan=event.stan,
                batch=event.batch,
                bank_code=txn.bank_code,
                reason_code=VOID_CODE,
                amount=event.amount,
                currency=event.currency,
                expected_net=txn.profile.terms.net(event.amount),
                deadline=txn.deadline,
                settled_at=_whole_second(now, self.config.tz),
                note="voided at the terminal after the sale was credited: a refund was due",
            )
        )

    def _first_time(self, event_id: str) -> bool:
        if event_id in self._seen_events:
            self.counters["repeats"] += 1
            return False
        self._seen_events.add(event_id)
        return True

    def _offline(self, event: TxnEvent) -> bool:
        """Taken offline: approved offline, or while the terminal's last status said
        LINK=DOWN. A SAF backlog with the link up is other sales being uploaded; a sale
        approved online then reached the host (the collector's classifier, rule 1)."""
        link_up, _saf = self._links.get(event.tid, (True, 0))
        return event.rc in OFFLINE_CODES or not link_up

    # --- random draws -------------------------------------------------------------------

    def _draw_plan(self) -> _Plan:
        rates = self.config.rates
        draw = self._rng.random
        offline_roll, fault_roll, code_roll, follow = draw(), draw(), draw(), draw()
        outage_roll, outage_code_roll, mismatch_pick, mismatch_size = (
            draw(),
            draw(),
            draw(),
            draw(),
        )
        fault: str | None = None
        threshold = 0.0
        for name, rate in rates.exclusive():
            threshold += rate
            if fault_roll < threshold:
                fault = name
                break
        code = None
        if fault is not None:
            codes = _CODES.get(fault, ())
            code = codes[int(code_roll * len(codes))] if codes else None
        return _Plan(
            offline_lost=offline_roll < rates.offline_lost,
            fault=fault,
            code=code,
            follow=follow,
            outage_roll=outage_roll,
            outage_code=faults.OUTAGE_FAIL_CODES[
                int(outage_code_roll * len(faults.OUTAGE_FAIL_CODES))
            ],
            mismatch_pick=mismatch_pick,
            mismatch_size=mismatch_size,
        )

    def _draw_orphan(
        self,
        event: TxnEvent,
        profile: MerchantProfile,
        bank: str,
        txn_time: datetime,
        deadline: datetime,
    ) -> SettlementEvent | None:
        draw = self._rng.random
        roll, amount_roll, rrn_roll, delay_roll = draw(), draw(), draw(), draw()
        if roll >= self.config.rates.orphan:
            return None
        # An RRN of the same shape that this terminal never used: 9 plus 11 digits.
        rrn = f"9{int(rrn_roll * 10**11):011d}"
        while (event.tid, rrn) in self._txns or (event.tid, rrn) in self._finished:
            rrn = f"9{(int(rrn) + 1) % 10**11:011d}"
        amount = 100 + int(amount_roll * 49_900)
        fee = profile.terms.fee(amount)
        settled_at = self._credit_time(profile.terms, txn_time, deadline, delay_roll)
        return SettlementEvent(
            settlement_id=f"{self.config.id_prefix}-{event.tid}-{rrn}-1",
            mid=event.mid,
            tid=event.tid,
            rrn=rrn,
            txn_date=txn_time.astimezone(self.config.tz).date(),
            amount=amount,
            fee=fee,
            net_amount=amount - fee,
            currency=event.currency,
            status=SettlementStatus.CREDITED,
            settled_at=_whole_second(settled_at, self.config.tz),
            kind=SettlementKind.ORIGINAL,
            bank_code=bank,
            account_masked=profile.account_masked,
        )

    def _credit_time(
        self, terms: SettlementTerms, txn_time: datetime, deadline: datetime, roll: float
    ) -> datetime:
        """When an on-time credit goes out: somewhere inside the merchant's window.

        D0 and T0 credits wait at least `INSTANT_HOLD` (at most half the window), the time
        a terminal may still void the sale.
        """
        if terms.mode is not SettlementMode.T1:
            window = deadline - txn_time
            share = 0.1 if terms.mode is SettlementMode.T0 else 0.05
            hold = min(max(window * share, INSTANT_HOLD), window / 2)
            return txn_time + hold + (window * 0.9 - hold) * roll
        local_deadline = deadline.astimezone(self.config.tz)
        day_start = datetime.combine(
            local_deadline.date(),
            _T1_DAY_START if terms.cutoff > _T1_DAY_START else time(0, 0),
            tzinfo=self.config.tz,
        )
        start = max(day_start, txn_time)
        return start + (deadline - start) * (0.05 + 0.9 * roll)

    # --- the settlement run -------------------------------------------------------------

    def _attempt(self, txn: _Txn, at: datetime) -> None:
        if txn.state is not _State.SCHEDULED:
            return
        if self._batch_open(txn, at):
            return
        self._done(txn)
        self._decide(txn, at)

    def _batch_open(self, txn: _Txn, at: datetime) -> bool:
        """True (and the transaction parked) when its T1 batch is not closed yet."""
        if not self.config.batch_gate or txn.profile.terms.mode is not SettlementMode.T1:
            return False
        key = (txn.event.tid, txn.event.batch)
        closed_at = self._closed.get(key)
        if closed_at is not None and closed_at < txn.deadline:
            if closed_at <= at:
                return False
            self._push(closed_at, _Attempt(txn))  # known to close later: try again then
            return True
        if txn.state is not _State.WAITING_BATCH:
            txn.state = _State.WAITING_BATCH
            self._waiting.setdefault(key, []).append(txn)
            self._push(txn.deadline, _BatchDeadline(txn))
        return True

    def _lost_deadline(self, txn: _Txn, at: datetime) -> None:
        if txn.state is not _State.LOST:
            return  # voided or reversed in the meantime: nothing was owed
        self._done(txn)
        self._fault(
            txn,
            FaultKind.MISSING,
            Cause.NETWORK,
            Scenario.OFFLINE,
            at,
            code=OFFLINE_CODE,
            note="taken while the terminal was offline and never uploaded",
        )

    def _batch_deadline(self, txn: _Txn, at: datetime) -> None:
        if txn.state is not _State.WAITING_BATCH:
            return
        self._done(txn)
        self._fault(
            txn,
            FaultKind.MISSING,
            Cause.OPERATOR,
            Scenario.UNCLOSED_BATCH,
            at,
            code=UNCLOSED_BATCH_CODE,
            note=f"batch {txn.event.batch} not closed by the deadline",
        )

    def _done(self, txn: _Txn) -> None:
        """The transaction is decided: no longer owed, its lines and truth on their way."""
        txn.state = _State.DONE
        del self._txns[txn.key]
        self._finished.add(txn.key)
        self._decided[txn.key] = txn

    def _decide(self, txn: _Txn, at: datetime) -> None:
        """Settle `txn` at `at`: scenarios first, then its own random fault, else on time."""
        plan, scenarios = txn.plan, self.config.scenarios
        frozen = scenarios.frozen_code(txn.event.mid)
        if frozen is not None:
            failed = self._settle(txn, at, SettlementStatus.FAILED, code=frozen)
            self._fault(
                txn,
                FaultKind.FAILED,
                Cause.MERCHANT_QUALIFICATION,
                Scenario.FROZEN_MERCHANT,
                at,
                code=frozen,
                settlements=(failed,),
            )
            return
        outage = scenarios.outage(txn.bank_code, at)
        if outage is not None:
            if plan.outage_roll < outage.delay_share:
                later = max(outage.end, txn.deadline) + timedelta(hours=0.5 + 3.5 * plan.follow)
                credited = self._settle(txn, later, SettlementStatus.CREDITED)
                self._fault(
                    txn,
                    FaultKind.LATE,
                    Cause.BANK_SYSTEM,
                    Scenario.BANK_OUTAGE,
                    at,
                    code=plan.outage_code,
                    settlements=(credited,),
                    note="held during the bank outage, credited after the deadline",
                )
            else:
                failed = self._settle(txn, at, SettlementStatus.FAILED, code=plan.outage_code)
                self._fault(
                    txn,
                    FaultKind.FAILED,
                    Cause.BANK_SYSTEM,
                    Scenario.BANK_OUTAGE,
                    at,
                    code=plan.outage_code,
                    settlements=(failed,),
                )
            return
        if plan.fault is None:
            credited = self._settle(txn, at, SettlementStatus.CREDITED)
            if at >= txn.deadline:
                self._fault(
                    txn,
                    FaultKind.LATE,
                    Cause.UNKNOWN,
                    Scenario.LATE_ARRIVAL,
                    at,
                    settlements=(credited,),
                    note="the simulator heard of the transaction after its deadline",
                )
            else:  # written only with record_normal, or as VOID_IGNORED (see _reveal)
                self._fault(txn, FaultKind.NORMAL, None, None, at, settlements=(credited,))
            return
        self._random_fault(txn, at)

    def _random_fault(self, txn: _Txn, at: datetime) -> None:
        plan = txn.plan
        random_ = Scenario.RANDOM
        if plan.fault == "account_returned":
            assert plan.code is not None
            credited = self._settle(txn, at, SettlementStatus.CREDITED)
            back_at = at + timedelta(hours=4 + 26 * plan.follow)
            returned = self._settle(txn, back_at, SettlementStatus.RETURNED, code=plan.code)
            self._fault(
                txn,
                FaultKind.RETURNED,
                cause_for(plan.code),
                random_,
                at,
                code=plan.code,
                settlements=(credited, returned),
            )
        elif plan.fault == "late":
            later = txn.deadline + timedelta(hours=1 + 11 * plan.follow)
            credited = self._settle(txn, later, SettlementStatus.CREDITED)
            self._fault(
                txn,
                FaultKind.LATE,
                Cause.BANK_SYSTEM,
                random_,
                at,
                code=LATE_CODE,
                settlements=(credited,),
            )
        elif plan.fault == "duplicate":
            first = self._settle(txn, at, SettlementStatus.CREDITED)
            again = at + timedelta(minutes=10 + 350 * plan.follow)
            second = self._settle(txn, again, SettlementStatus.CREDITED)
            self._fault(
                txn,
                FaultKind.DUPLICATE,
                Cause.BANK_SYSTEM,
                random_,
                at,
                code=DUPLICATE_CODE,
                settlements=(first, second),
                note="the credit was sent twice",
            )
        elif plan.fault == "mismatch":
            amount = _keyed_wrong(txn.event.amount, plan.mismatch_pick, plan.mismatch_size)
            credited = self._settle(txn, at, SettlementStatus.CREDITED, amount=amount)
            self._fault(
                txn,
                FaultKind.MISMATCH,
                Cause.OPERATOR,
                random_,
                at,
                code=MISMATCH_CODE,
                settlements=(credited,),
                note=f"amount keyed as {amount} instead of {txn.event.amount}",
            )
        else:  # account_failed, risk_hold, bank_failed, unspecified_failed
            assert plan.code is not None
            failed = self._settle(txn, at, SettlementStatus.FAILED, code=plan.code)
            self._fault(
                txn,
                FaultKind.FAILED,
                cause_for(plan.code),
                random_,
                at,
                code=plan.code,
                settlements=(failed,),
            )

    # --- output -------------------------------------------------------------------------

    def _settle(
        self,
        txn: _Txn,
        at: datetime,
        status: SettlementStatus,
        *,
        code: str | None = None,
        amount: int | None = None,
    ) -> SettlementEvent:
        """Build one settlement line for `txn` and queue it for `at`."""
        event, terms = txn.event, txn.profile.terms
        gross = event.amount if amount is None else amount
        fee = terms.fee(gross)
        reason = DEFAULT_REASON_CODES[code] if code is not None else None
        settlement = SettlementEvent(
            settlement_id=f"{self.config.id_prefix}-{event.tid}-{event.rrn}-{next(txn.ids)}",
            mid=event.mid,
            tid=event.tid,
            rrn=event.rrn,
            txn_date=txn.txn_date,
            amount=gross,
            fee=fee,
            net_amount=gross - fee,
            currency=event.currency,
            status=status,
            settled_at=_whole_second(at, self.config.tz),
            kind=SettlementKind.ORIGINAL,
            stan=event.stan,
            batch=event.batch,
            reason_code=reason.code if reason else None,
            reason_text=reason.text if reason else None,
            bank_code=txn.bank_code,
            account_masked=txn.profile.account_masked,
        )
        txn.line_times.append(at)
        self._push(at, _Emit(settlement, txn))
        return settlement

    def _schedule_orphan(self, orphan: SettlementEvent, now: datetime) -> None:
        at = max(orphan.settled_at, now)
        if at != orphan.settled_at:
            orphan = orphan.model_copy(update={"settled_at": _whole_second(at, self.config.tz)})
        self._push(at, _Emit(orphan))
        self._record(
            TruthRecord(
                kind=FaultKind.ORPHAN,
                cause=Cause.UNKNOWN,
                scenario=Scenario.RANDOM,
                injected_at=now,
                tid=orphan.tid,
                mid=orphan.mid,
                rrn=orphan.rrn,
                bank_code=orphan.bank_code,
                settlement_ids=(orphan.settlement_id,),
                amount=orphan.amount,
                currency=orphan.currency,
                credited_net=orphan.net_amount,
                settled_at=orphan.settled_at,
                note="a settlement for a transaction that never existed",
            )
        )

    def _fault(
        self,
        txn: _Txn,
        kind: FaultKind,
        cause: Cause | None,
        scenario: Scenario | None,
        at: datetime,
        *,
        code: str | None = None,
        settlements: tuple[SettlementEvent, ...] = (),
        note: str | None = None,
    ) -> None:
        """The transaction's ground-truth line, written when the fault becomes visible.

        Visible: at the deadline for money that does not come in time (MISSING, LATE), else
        when the fault's last line goes out. A void that arrives before then withdraws the
        whole fault (`_cancel`): the truth never names what was not done. A void the
        acquirer lost shows with the sale's first credit instead (`_tell_void_ignored`).
        """
        record = self._truth_record(
            txn, kind, cause, scenario, at, code=code, settlements=settlements, note=note
        )
        if kind in (FaultKind.MISSING, FaultKind.LATE):
            visible = max(txn.deadline, at)
        else:
            visible = max(txn.line_times, default=at)
        txn.decided_truth = record
        self._push(visible, _Reveal(txn, record, record.credited_net is not None))

    def _truth_record(
        self,
        txn: _Txn,
        kind: FaultKind,
        cause: Cause | None,
        scenario: Scenario | None,
        at: datetime,
        *,
        code: str | None = None,
        settlements: tuple[SettlementEvent, ...] = (),
        note: str | None = None,
    ) -> TruthRecord:
        event = txn.event
        credited = [s for s in settlements if s.status is SettlementStatus.CREDITED]
        return TruthRecord(
            kind=kind,
            cause=cause,
            scenario=scenario,
            injected_at=at,
            tid=event.tid,
            mid=event.mid,
            rrn=event.rrn,
            stan=event.stan,
            batch=event.batch,
            bank_code=txn.bank_code,
            reason_code=code,
            settlement_ids=tuple(s.settlement_id for s in settlements),
            amount=event.amount,
            currency=event.currency,
            expected_net=txn.profile.terms.net(event.amount),
            credited_net=credited[0].net_amount if credited else None,
            deadline=txn.deadline,
            settled_at=settlements[-1].settled_at if settlements else None,
            note=note,
        )

    def _reveal(self, action: _Reveal) -> None:
        txn, record = action.txn, action.record
        if txn.withdrawn or txn.void_told:
            return  # voided before anything of it showed, or told with its credit
        if txn.void_ignored:
            if action.credited:
                return  # told when the credit goes out (`_emit`), not before
            # Voided at the terminal: a failure concerns nothing owed.
            record = replace(
                record,
                kind=FaultKind.CANCELLED,
                cause=None,
                scenario=None,
                note="voided or reversed; what the acquirer did with it concerns nothing owed",
            )
        txn.revealed = True
        if record.kind is FaultKind.NORMAL and not self.config.record_normal:
            return
        self._record(record)

    def _emit(self, action: _Emit) -> bool:
        """Whether a due line goes out (a void may have withdrawn it meanwhile)."""
        txn, settlement = action.txn, action.settlement
        if txn is not None:
            if txn.withdrawn:
                self.counters["withdrawn_by_void"] += 1
                return False
            if settlement.status is SettlementStatus.CREDITED:
                txn.credited_out = True
                if txn.void_ignored:
                    self._tell_void_ignored(txn, settlement)
        self.counters[f"settlement_{settlement.status.value.lower()}"] += 1
        return True

    def _tell_void_ignored(self, txn: _Txn, credit: SettlementEvent) -> None:
        """The VOID_IGNORED line, written with the first credit of a sale whose void was lost.

        That credit is when the fault shows: the collector then holds a voided sale that
        was paid (REVERSED_BUT_SETTLED). The sale's own fault (a return, a second credit
        to come) is folded into this line; a fault already told (a LATE line at the
        deadline, before the void came) keeps its line, and this one is added.
        """
        if txn.void_told:
            return
        txn.void_told = True
        txn.revealed = True
        base = txn.decided_truth
        assert base is not None  # a credit goes out only once the sale is decided
        self._record(
            replace(
                base,
                kind=FaultKind.VOID_IGNORED,
                cause=Cause.OPERATOR,
                scenario=Scenario.RANDOM,
                reason_code=None,
                credited_net=credit.net_amount,
                settled_at=credit.settled_at,
                note="the void or reversal was not processed: the sale was credited anyway",
            )
        )

    def _note_cancelled(self, txn: _Txn, at: datetime) -> None:
        self.counters["cancelled"] += 1
        if self.config.record_normal:
            self._record(
                self._truth_record(
                    txn, FaultKind.CANCELLED, None, None, at, note="voided or reversed"
                )
            )

    def _announce_frozen(self, now: datetime) -> None:
        for frozen in self.config.scenarios.frozen:
            self._record(
                TruthRecord(
                    kind=FaultKind.MERCHANT_FROZEN,
                    cause=Cause.MERCHANT_QUALIFICATION,
                    scenario=Scenario.FROZEN_MERCHANT,
                    injected_at=now,
                    mid=frozen.mid,
                    reason_code=frozen.code,
                )
            )

    def _record(self, record: TruthRecord) -> None:
        if record.kind not in (FaultKind.NORMAL, FaultKind.CANCELLED):
            self.counters[f"fault_{record.kind.value.lower()}"] += 1
        self._truth.append(record)

    def _push(self, when: datetime, action: _Action) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))


_CODES: dict[str, tuple[str, ...]] = {
    "account_failed": faults.ACCOUNT_FAIL_CODES,
    "account_returned": faults.ACCOUNT_RETURN_CODES,
    "risk_hold": faults.RISK_HOLD_CODES,
    "bank_failed": faults.BANK_FAIL_CODES,
    "unspecified_failed": faults.UNSPECIFIED_CODES,
}


def _keyed_wrong(amount: int, pick: float, size: float) -> int:
    """The amount as a careless operator keys it: an extra zero, one too few, or a slip."""
    if amount <= 0:
        return amount + 100
    if pick < 0.3:
        return amount * 10
    if pick < 0.5 and amount >= 10:
        return amount // 10
    delta = max(1, round(amount * (0.01 + 0.09 * size)))
    return amount + delta if pick < 0.75 or delta >= amount else amount - delta


def _whole_second(moment: datetime, tz: tzinfo) -> datetime:
    """`moment` in the local zone, to the second, as acquirers stamp their lines."""
    return moment.astimezone(tz).replace(microsecond=0)


def _aware(moment: datetime) -> None:
    if moment.utcoffset() is None:
        raise ValueError(f"{moment.isoformat()} is not timezone-aware")
