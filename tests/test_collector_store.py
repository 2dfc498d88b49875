"""The collector's store, on SQLite and on PostgreSQL: every outcome of the correlation table,
arrival in any order, repeats, voids, migrations and the overdue claim under concurrency.

Everything enters through `Store.ingest()`, as it does from MQTT, HTTP and CSV. The store's
clock is fixed (Wednesday 2026-11-25 10:30 in Shanghai), so deadlines are exact.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event, func, select, text

from collector.config import CollectorConfig, MerchantRule, SettlementMode, SettlementSection
from collector.correlate import Outcome
from collector.schema import collectors, outcome_log, settlements, transactions
from collector.store import (
    CollectorRecord,
    OutcomeChange,
    Store,
    StoredSettlement,
    StoredTransaction,
)
from collector.terms import SettlementTerms
from posmon.wire.models import (
    BatchEvent,
    BatchResult,
    Network,
    PresenceEvent,
    PresenceState,
    SettlementEvent,
    SettlementKind,
    SettlementStatus,
    StatusEvent,
    TxnEvent,
    TxnKind,
    WireMessage,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 25, 10, 30, tzinfo=SHANGHAI)  # a Wednesday
TODAY = NOW.date()
TID = "10000001"
MID = "898100012340001"  # the defaults: T1, cut-off 18:00, 0.6 %
MID_D0 = "898100012340002"  # its own rule: D0, 0.38 % + 1.00 fixed
AMOUNT = 12_800
NET = AMOUNT - 77  # 0.6 % of 128.00 is 0.768, rounded half up to 0.77
NET_D0 = AMOUNT - 49 - 100  # 0.38 % is 0.4864 -> 0.49, plus 1.00

CONFIG = CollectorConfig(
    settlement=SettlementSection(fee_bp=60),
    merchants=[MerchantRule(mid=MID_D0, mode=SettlementMode.D0, fee_bp=38, fee_fixed=100)],
)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    instance = open_store(database_url)
    yield instance
    instance.close()


def open_store(url: str, clock: Callable[[], datetime] = lambda: NOW) -> Store:
    instance = Store(url, SettlementTerms(CONFIG), collector_id="test", clock=clock)
    instance.migrate()
    return instance


# --- messages -----------------------------------------------------------------------------


def sale(
    rrn: str,
    *,
    at: datetime = NOW - timedelta(hours=1),
    kind: TxnKind = TxnKind.SALE,
    approved: bool = True,
    amount: int = AMOUNT,
    stan: str | None = None,
    batch: str = "000042",
    mid: str = MID,
    tid: str = TID,
    orig_rrn: str | None = None,
    orig_stan: str | None = None,
    event_id: uuid.UUID | None = None,
) -> TxnEvent:
    """A transaction as the agent publishes it (approved SALE unless told otherwise)."""
    return TxnEvent(
        event_id=event_id or uuid.uuid4(),
        agent_id="box-1",
        tid=tid,
        mid=mid,
        kind=kind,
        amount=amount,
        currency="CNY",
        pan_masked="622202*********0123",
        rc="00" if approved else "51",
        approved=approved,
        rrn=rrn,
        stan=stan or rrn[-6:],
        batch=batch,
        terminal_time=at,
        observed_at=at + timedelta(seconds=1),
        orig_rrn=orig_rrn,
        orig_stan=orig_stan,
    )


def void(
    original: TxnEvent, rrn: str, *, kind: TxnKind = TxnKind.VOID, by_stan: bool = False
) -> TxnEvent:
    """An approved VOID (or REVERSAL) naming its original by RRN, or by batch and STAN."""
    return sale(
        rrn,
        at=original.terminal_time + timedelta(minutes=5),
        kind=kind,
        amount=original.amount,
        batch=original.batch,
        mid=original.mid,
        orig_rrn=None if by_stan else original.rrn,
        orig_stan=original.stan if by_stan else None,
    )


def result(
    rrn: str,
    settlement_id: str,
    *,
    status: SettlementStatus = SettlementStatus.CREDITED,
    net: int = NET,
    amount: int = AMOUNT,
    txn_date: date = TODAY,
    settled_at: datetime = NOW,
    mid: str = MID,
    stan: str | None = None,
    batch: str | None = None,
    kind: SettlementKind = SettlementKind.ORIGINAL,
    original_settlement_id: str | None = None,
    reason_code: str | None = None,
) -> SettlementEvent:
    """A settlement result from the acquirer (a correct credit unless told otherwise)."""
    return SettlementEvent(
        settlement_id=settlement_id,
        mid=mid,
        tid=TID,
        rrn=rrn,
        txn_date=txn_date,
        amount=amount,
        fee=amount - net,
        net_amount=net,
        currency="CNY",
        status=status,
        settled_at=settled_at,
        kind=kind,
        stan=stan,
        batch=batch,
        original_settlement_id=original_settlement_id,
        reason_code=reason_code,
    )


def status(*, link_up: bool = True, network: Network = Network.ETH, saf: int = 0) -> StatusEvent:
    return StatusEvent(
        event_id=uuid.uuid4(),
        agent_id="box-1",
        tid=TID,
        link_up=link_up,
        network=network,
        saf_pending=saf,
        serial_ok=True,
        observed_at=NOW,
    )


# --- reading back -------------------------------------------------------------------------


def outcome(store: Store, rrn: str, kind: TxnKind = TxnKind.SALE) -> str:
    row = store.transaction(TID, rrn, kind)
    assert row is not None, f"transaction {rrn} not stored"
    return str(row.outcome)


def settlement_outcome(store: Store, settlement_id: str) -> str:
    row = store.settlement(settlement_id)
    assert row is not None, f"settlement {settlement_id} not stored"
    return str(row.outcome)


def log_rows(store: Store) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [
            dict(row)
            for row in conn.execute(select(outcome_log).order_by(outcome_log.c.id)).mappings()
        ]


def count(store: Store, table: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def summary(changes: list[OutcomeChange]) -> list[tuple[str, str, str | None]]:
    return [(c.rrn, c.outcome.value, c.previous.value if c.previous else None) for c in changes]


# --- the outcomes -------------------------------------------------------------------------


def test_credit_as_expected_settles_the_transaction(store: Store) -> None:
    txn = sale("402511000001")
    first = store.ingest([txn])
    assert first.stored == {"txn": 1}
    assert first.changes == []
    row = store.transaction(TID, txn.rrn)
    assert row is not None
    assert row.outcome == "PENDING"
    assert row.expected_net == NET
    assert row.deadline == datetime(2026, 11, 26, 18, 0, tzinfo=SHANGHAI)
    assert row.txn_date == TODAY

    report = store.ingest([result(txn.rrn, "S1")])
    assert report.stored == {"settlement": 1}
    assert summary(report.changes) == [(txn.rrn, "SETTLED", "PENDING")]
    row = store.transaction(TID, txn.rrn)
    assert row is not None
    assert (row.outcome, row.settlement_id, row.outcome_at) == ("SETTLED", "S1", NOW)
    settled = store.settlement("S1")
    assert settled is not None
    assert (settled.outcome, settled.transaction_id) == ("SETTLED", row.id)
    assert settled.source == "mqtt"
    assert store.outcome_history(TID, txn.rrn) == ["SETTLED"]


def test_failed_settlement_fails_the_transaction(store: Store) -> None:
    txn = sale("402511000002")
    store.ingest([txn])
    report = store.ingest(
        [result(txn.rrn, "S1", status=SettlementStatus.FAILED, reason_code="AC04")]
    )
    assert summary(report.changes) == [(txn.rrn, "FAILED", "PENDING")]
    assert settlement_outcome(store, "S1") == "FAILED"
    # A failed transaction is no longer waiting: it is not reported overdue as well.
    assert store.mark_overdue(NOW + timedelta(days=30)) == []
    # The re-remittance (补划款) credits it.
    store.ingest(
        [
            result(
                txn.rrn,
                "S1-R",
                kind=SettlementKind.REREMITTANCE,
                original_settlement_id="S1",
                settled_at=NOW + timedelta(days=2),
            )
        ]
    )
    assert store.outcome_history(TID, txn.rrn) == ["FAILED", "SETTLED"]


def test_credit_that_comes_back_is_returned(store: Store) -> None:
    txn = sale("402511000003")
    store.ingest([txn, result(txn.rrn, "S1")])
    report = store.ingest(
        [
            result(
                txn.rrn,
                "S1-RET",
                status=SettlementStatus.RETURNED,
                original_settlement_id="S1",
                reason_code="AC06",
                settled_at=NOW + timedelta(days=1),
            )
        ]
    )
    assert summary(report.changes) == [(txn.rrn, "RETURNED", "SETTLED")]
    assert outcome(store, txn.rrn) == "RETURNED"
    assert settlement_outcome(store, "S1") == "SETTLED"
    assert settlement_outcome(store, "S1-RET") == "RETURNED"
    store.ingest(
        [result(txn.rrn, "S1-R", kind=SettlementKind.REREMITTANCE, settled_at=NOW + timedelta(2))]
    )
    assert store.outcome_history(TID, txn.rrn) == ["SETTLED", "RETURNED", "SETTLED"]


def test_deadline_passing_makes_it_overdue_once_and_a_late_credit_settles_it(
    store: Store,
) -> None:
    txn = sale("402511000004", at=datetime(2026, 11, 24, 15, 0, tzinfo=SHANGHAI))
    store.ingest([txn])
    deadline = datetime(2026, 11, 25, 18, 0, tzinfo=SHANGHAI)  # T1 from Tuesday
    assert store.next_deadline() == deadline
    assert store.mark_overdue(deadline - timedelta(seconds=1)) == []

    changes = store.mark_overdue(deadline)
    assert summary(changes) == [(txn.rrn, "OVERDUE", "PENDING")]
    assert changes[0].at == deadline
    assert store.mark_overdue(deadline + timedelta(hours=1)) == []  # reported once
    assert store.next_deadline() is None
    row = store.transaction(TID, txn.rrn)
    assert row is not None
    assert (row.outcome, row.outcome_at) == ("OVERDUE", deadline)

    report = store.ingest([result(txn.rrn, "S1", txn_date=date(2026, 11, 24))])
    assert summary(report.changes) == [(txn.rrn, "SETTLED", "OVERDUE")]
    assert store.outcome_history(TID, txn.rrn) == ["OVERDUE", "SETTLED"]
    assert [(r["outcome"], r["previous"], r["note"]) for r in log_rows(store)] == [
        ("OVERDUE", "PENDING", "deadline passed"),
        ("SETTLED", "OVERDUE", None),
    ]


def test_credit_of_another_net_is_a_mismatch_per_merchant_rule(store: Store) -> None:
    default_merchant = sale("402511000005")
    own_rule = sale("402511000006", mid=MID_D0)
    store.ingest([default_merchant, own_rule])
    row = store.transaction(TID, own_rule.rrn)
    assert row is not None
    assert row.expected_net == NET_D0
    assert row.deadline == datetime(2026, 11, 25, 18, 0, tzinfo=SHANGHAI)  # D0
    report = store.ingest(
        [
            # The fee of the D0 merchant's rule, on the default merchant: 1.72 short.
            result(default_merchant.rrn, "S1", net=NET_D0),
            result(own_rule.rrn, "S2", net=NET_D0, mid=MID_D0),
        ]
    )
    assert summary(report.changes) == [
        (default_merchant.rrn, "MISMATCH", "PENDING"),
        (own_rule.rrn, "SETTLED", "PENDING"),
    ]
    assert settlement_outcome(store, "S1") == "MISMATCH"
    assert log_rows(store)[0]["note"] == f"credited {NET_D0}, expected {NET}"


def test_second_credit_under_another_settlement_id_is_a_duplicate(store: Store) -> None:
    txn = sale("402511000007")
    store.ingest([txn, result(txn.rrn, "S1")])
    report = store.ingest([result(txn.rrn, "S2", settled_at=NOW + timedelta(hours=1))])
    assert summary(report.changes) == [(txn.rrn, "DUPLICATE", "SETTLED")]
    row = store.transaction(TID, txn.rrn)
    assert row is not None
    assert (row.outcome, row.settlement_id) == ("DUPLICATE", "S1")
    assert settlement_outcome(store, "S1") == "SETTLED"
    assert settlement_outcome(store, "S2") == "DUPLICATE"
    # The same settlement id again is a repeat, not another duplicate.
    again = store.ingest([result(txn.rrn, "S2", settled_at=NOW + timedelta(hours=1))])
    assert again.repeats == {"settlement": 1}
    assert again.changes == []
    assert store.outcome_history(TID, txn.rrn) == ["SETTLED", "DUPLICATE"]


def test_settlement_without_transaction_is_an_orphan_until_the_transaction_arrives(
    store: Store,
) -> None:
    txn = sale("402511000008")
    report = store.ingest([result(txn.rrn, "S1")])
    assert [(c.outcome, c.settlement_id) for c in report.changes] == [(Outcome.ORPHAN, "S1")]
    assert settlement_outcome(store, "S1") == "ORPHAN"
    orphan_log = log_rows(store)
    assert [(r["transaction_id"], r["settlement_id"], r["outcome"]) for r in orphan_log] == [
        (None, "S1", "ORPHAN")
    ]
    assert store.transaction(TID, txn.rrn) is None

    report = store.ingest([txn])
    assert summary(report.changes) == [(txn.rrn, "SETTLED", "PENDING")]
    row = store.transaction(TID, txn.rrn)
    assert row is not None
    settled = store.settlement("S1")
    assert settled is not None
    assert (settled.outcome, settled.transaction_id) == ("SETTLED", row.id)


def test_orphans_are_applied_in_settlement_order_when_the_transaction_arrives(
    store: Store,
) -> None:
    txn = sale("402511000009")
    # Arrival order: the return first; settlement order: the credit first.
    store.ingest(
        [
            result(
                txn.rrn, "S1-RET", status=SettlementStatus.RETURNED, settled_at=NOW + timedelta(1)
            ),
            result(txn.rrn, "S1"),
        ]
    )
    store.ingest([txn])
    assert store.outcome_history(TID, txn.rrn) == ["SETTLED", "RETURNED"]


def test_transaction_and_its_settlement_in_one_batch_in_either_order(store: Store) -> None:
    for order in ("txn-first", "settlement-first"):
        clear(store)
        txn = sale("402511000010")
        credit = result(txn.rrn, "S1")
        batch: list[WireMessage] = [txn, credit] if order == "txn-first" else [credit, txn]
        report = store.ingest(batch)
        assert report.stored == {"txn": 1, "settlement": 1}, order
        assert outcome(store, txn.rrn) == "SETTLED", order
        assert settlement_outcome(store, "S1") == "SETTLED", order


# --- matching without the RRN, and terminal clock skew ------------------------------------


SKEW_CASES = [
    # terminal's date, acquirer's date, matched
    (date(2026, 11, 24), date(2026, 11, 24), True),
    (date(2026, 11, 23), date(2026, 11, 24), True),  # the terminal's clock a day behind
    (date(2026, 11, 25), date(2026, 11, 24), True),  # a day ahead
    (date(2026, 11, 22), date(2026, 11, 24), False),  # two days off: beyond skew_days = 1
]


@pytest.mark.parametrize("order", ["txn-first", "settlement-first"])
def test_settlement_with_another_rrn_matches_by_batch_stan_and_date_within_the_skew(
    store: Store, order: str
) -> None:
    for terminal_day, acquirer_day, matches in SKEW_CASES:
        clear(store)
        txn = sale(
            "402511000011",
            stan="000011",
            at=datetime.combine(terminal_day, datetime.min.time(), SHANGHAI) + timedelta(hours=14),
        )
        # The acquirer's own RRN, and the date by its clock.
        credit = result("999999999999", "S1", stan="000011", batch="000042", txn_date=acquirer_day)
        for message in [txn, credit] if order == "txn-first" else [credit, txn]:
            store.ingest([message])
        expected = ("SETTLED", "SETTLED") if matches else ("PENDING", "ORPHAN")
        case = f"terminal {terminal_day}, acquirer {acquirer_day}"
        assert (outcome(store, txn.rrn), settlement_outcome(store, "S1")) == expected, case


def test_fallback_needs_the_same_batch_and_stan(store: Store) -> None:
    txn = sale("402511000012", stan="000012")
    store.ingest([txn])
    store.ingest(
        [
            result("999999999998", "S1", stan="000012", batch="000043"),
            result("999999999997", "S2", stan="000013", batch="000042"),
            result("999999999996", "S3"),  # no batch and STAN: nothing to fall back on
        ]
    )
    assert outcome(store, txn.rrn) == "PENDING"
    assert {settlement_outcome(store, s) for s in ("S1", "S2", "S3")} == {"ORPHAN"}


# --- voids and reversals ------------------------------------------------------------------


def test_void_or_reversal_cancels_the_expectation(store: Store) -> None:
    for kind, by_stan in itertools.product((TxnKind.VOID, TxnKind.REVERSAL), (False, True)):
        clear(store)
        case = f"{kind} naming its original by {'batch and STAN' if by_stan else 'RRN'}"
        txn = sale("402511000013")
        cancel = void(txn, "402511000014", kind=kind, by_stan=by_stan)
        store.ingest([txn])
        report = store.ingest([cancel])
        assert summary(report.changes) == [(txn.rrn, "CANCELLED", "PENDING")], case
        assert outcome(store, cancel.rrn, kind) == "NOT_EXPECTED", case
        assert store.mark_overdue(NOW + timedelta(days=30)) == [], case
        assert store.outcome_history(TID, txn.rrn) == ["CANCELLED"], case


def test_void_arriving_before_its_original_cancels_it_on_arrival(store: Store) -> None:
    txn = sale("402511000015")
    store.ingest([void(txn, "402511000016")])
    report = store.ingest([txn])
    assert summary(report.changes) == [(txn.rrn, "CANCELLED", "PENDING")]
    assert store.mark_overdue(NOW + timedelta(days=30)) == []


def test_void_of_an_overdue_transaction_cancels_it(store: Store) -> None:
    txn = sale("402511000017", at=NOW - timedelta(days=3))
    store.ingest([txn])
    assert len(store.mark_overdue(NOW)) == 1
    store.ingest([void(txn, "402511000018")])
    assert store.outcome_history(TID, txn.rrn) == ["OVERDUE", "CANCELLED"]


def test_credit_for_a_voided_transaction_is_reversed_but_settled(store: Store) -> None:
    txn = sale("402511000019")
    store.ingest([txn, void(txn, "402511000020")])
    report = store.ingest([result(txn.rrn, "S1")])
    assert summary(report.changes) == [(txn.rrn, "REVERSED_BUT_SETTLED", "CANCELLED")]
    assert settlement_outcome(store, "S1") == "REVERSED_BUT_SETTLED"


def test_failure_or_return_for_a_cancelled_transaction_leaves_it_cancelled(
    store: Store,
) -> None:
    # A voided sale is owed nothing: a failed credit for it is no settlement failure.
    for status in (SettlementStatus.FAILED, SettlementStatus.RETURNED):
        clear(store)
        txn = sale("402511000050")
        store.ingest([txn, void(txn, "402511000051")])
        report = store.ingest([result(txn.rrn, "S1", status=status)])
        assert report.changes == [], status
        assert outcome(store, txn.rrn) == "CANCELLED", status
        settled = store.settlement("S1")
        assert settled is not None
        assert (settled.outcome, settled.transaction_id is not None) == (status.value, True)


def test_void_after_the_credit_is_reversed_but_settled(store: Store) -> None:
    txn = sale("402511000021")
    store.ingest([txn, result(txn.rrn, "S1")])
    store.ingest([void(txn, "402511000022")])
    assert store.outcome_history(TID, txn.rrn) == ["SETTLED", "REVERSED_BUT_SETTLED"]


def test_declined_void_cancels_nothing(store: Store) -> None:
    txn = sale("402511000023")
    declined = void(txn, "402511000024").model_copy(update={"approved": False, "rc": "05"})
    store.ingest([txn, declined])
    assert outcome(store, txn.rrn) == "PENDING"


def clear(store: Store) -> None:
    """A clean slate in the same database (the next ordering of a scenario)."""
    with store.engine.begin() as conn:
        for table in (outcome_log, settlements, transactions):
            conn.execute(table.delete())


def final_state(store: Store) -> dict[str, Any]:
    """Every transaction's outcome and history, every settlement's outcome and link."""
    with store.engine.connect() as conn:
        txns = conn.execute(
            select(
                transactions.c.id, transactions.c.rrn, transactions.c.kind, transactions.c.outcome
            )
        ).all()
        results = conn.execute(
            select(
                settlements.c.settlement_id,
                settlements.c.outcome,
                settlements.c.transaction_id,
            )
        ).all()
        log = conn.execute(
            select(outcome_log.c.transaction_id, outcome_log.c.outcome).order_by(outcome_log.c.id)
        ).all()
    key = {txn_id: f"{kind} {rrn}" for txn_id, rrn, kind, _ in txns}
    return {
        "transactions": {f"{kind} {rrn}": outcome for _, rrn, kind, outcome in txns},
        "settlements": {sid: (outcome, key.get(txn_id)) for sid, outcome, txn_id in results},
        "history": sorted(
            (key[txn_id], [o for t, o in log if t == txn_id]) for txn_id in {t for t, _ in log if t}
        ),
    }


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        pytest.param("sale credit", "SETTLED", id="credit"),
        pytest.param("sale credit return", "RETURNED", id="return"),
        pytest.param("sale void credit", "REVERSED_BUT_SETTLED", id="void"),
        pytest.param("declined credit", "NOT_EXPECTED", id="declined"),
    ],
)
def test_the_verdict_does_not_depend_on_the_arrival_order(
    database_url: str, scenario: str, expected: str
) -> None:
    """Whatever order the transaction, its void and its settlements arrive in, one at a time
    or together in one batch, the transaction ends in the same outcome and every settlement
    is linked to it."""
    original = sale("402511000025")
    messages: dict[str, WireMessage] = {
        "sale": original,
        "declined": original.model_copy(update={"approved": False, "rc": "51"}),
        "void": void(original, "402511000026"),
        "credit": result(original.rrn, "S1"),
        "return": result(
            original.rrn, "S1-RET", status=SettlementStatus.RETURNED, settled_at=NOW + timedelta(1)
        ),
    }
    store = open_store(database_url)
    try:
        orders = itertools.permutations(scenario.split())
        for order, batched in itertools.product(orders, (False, True)):
            if "return" in order and order.index("return") < order.index("credit"):
                # The acquirer returns a credit after making it, on the same feed; results
                # about a known transaction are judged in the order they come.
                continue
            clear(store)
            if batched:
                store.ingest([messages[name] for name in order])
            else:
                for name in order:
                    store.ingest([messages[name]])
            row = store.transaction(TID, original.rrn)
            assert row is not None
            case = f"arrival order {order}{', in one batch' if batched else ''}"
            assert row.outcome == expected, case
            linked = final_state(store)["settlements"].values()
            assert all(txn is not None for _, txn in linked), f"{case}: {linked}"
    finally:
        store.close()


def test_a_batch_has_the_effect_of_its_messages_one_at_a_time(database_url: str) -> None:
    """Runs of transactions and of settlements are stored with a few set-based statements;
    whatever their order, the outcome is that of storing the messages one by one."""
    first, second, third = sale("402511000040"), sale("402511000041"), sale("402511000042")
    messages: list[WireMessage] = [
        first,
        second,
        third,
        void(first, "402511000043"),
        void(second, "402511000044", kind=TxnKind.REVERSAL, by_stan=True),
        sale("402511000040", event_id=first.event_id),  # a repeat
        result(first.rrn, "S1"),
        result(second.rrn, "S2", status=SettlementStatus.FAILED),
        result(third.rrn, "S3", net=NET - 1),
        result(third.rrn, "S3-again", settled_at=NOW + timedelta(hours=1)),
        result("999999999999", "S4", stan=third.stan, batch=third.batch),  # fallback key
        result("402511000049", "S5"),  # an orphan for good
    ]
    rng = random.Random(5)
    store = open_store(database_url)
    try:
        for _ in range(12):
            order = rng.sample(messages, len(messages))
            clear(store)
            for message in order:
                store.ingest([message])
            one_at_a_time = final_state(store)
            clear(store)
            store.ingest(order)
            assert final_state(store) == one_at_a_time, [
                getattr(m, "rrn", "") + getattr(m, "settlement_id", "") for m in order
            ]
    finally:
        store.close()


# --- repeats and what is owed nothing -----------------------------------------------------


def test_repeats_by_event_id_and_by_business_key_are_stored_once(store: Store) -> None:
    txn = sale("402511000027")
    same_key = sale("402511000027")  # the same transaction under a new event id
    assert same_key.event_id != txn.event_id
    report = store.ingest([txn, txn, same_key])
    assert (report.stored, report.repeats) == ({"txn": 1}, {"txn": 2})
    again = store.ingest([txn, same_key, result(txn.rrn, "S1"), result(txn.rrn, "S1")])
    assert (again.stored, again.repeats) == ({"settlement": 1}, {"txn": 2, "settlement": 1})
    assert count(store, transactions) == 1
    assert count(store, settlements) == 1
    assert store.outcome_history(TID, txn.rrn) == ["SETTLED"]
    # The same RRN under another kind is another transaction.
    refund = sale("402511000027", kind=TxnKind.REFUND)
    assert store.ingest([refund]).stored == {"txn": 1}


def test_status_batch_and_presence_repeats_are_stored_once(store: Store) -> None:
    status_event = status(link_up=False, network=Network.G4, saf=3)
    close = BatchEvent(
        event_id=uuid.uuid4(),
        agent_id="box-1",
        tid=TID,
        mid=MID,
        batch="000042",
        count=3,
        total=38_400,
        currency="CNY",
        result=BatchResult.OK,
        terminal_time=NOW,
        observed_at=NOW,
    )
    online = PresenceEvent(
        agent_id="box-1", state=PresenceState.ONLINE, tids=[TID], version="0.1.0", observed_at=NOW
    )
    offline = online.model_copy(update={"state": PresenceState.OFFLINE})
    report = store.ingest([status_event, status_event, close, close, online, offline])
    assert report.stored == {"status": 1, "batch": 1, "presence": 2}
    assert report.repeats == {"status": 1, "batch": 1}
    # Presence keeps the latest view; an older message does not overwrite a newer one.
    store.ingest([online.model_copy(update={"observed_at": NOW - timedelta(minutes=1)})])
    counts = store.counts()
    assert (counts["status_events"], counts["batches"], counts["presence"]) == (1, 1, 1)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT state FROM presence")).scalar_one() == "offline"


def test_declined_transaction_is_owed_nothing_and_never_overdue(store: Store) -> None:
    declined = sale("402511000028", approved=False)
    refund = sale("402511000029", kind=TxnKind.REFUND)
    store.ingest([declined, refund])
    for txn in (declined, refund):
        row = store.transaction(TID, txn.rrn, txn.kind)
        assert row is not None
        assert (row.outcome, row.deadline, row.expected_net) == (
            "NOT_EXPECTED",
            None,
            None,
        )
    assert store.next_deadline() is None
    assert store.mark_overdue(NOW + timedelta(days=365)) == []
    # Money for it anyway is unexpected; the transaction stays owed nothing.
    store.ingest([result(declined.rrn, "S1")])
    assert settlement_outcome(store, "S1") == "UNEXPECTED"
    assert outcome(store, declined.rrn) == "NOT_EXPECTED"


def test_pending_settlement_status_changes_nothing(store: Store) -> None:
    txn = sale("402511000030")
    store.ingest([txn])
    report = store.ingest([result(txn.rrn, "S1", status=SettlementStatus.PENDING)])
    assert report.changes == []
    assert outcome(store, txn.rrn) == "PENDING"
    assert settlement_outcome(store, "S1") == "PENDING"


# --- schema -------------------------------------------------------------------------------


def test_migrate_again_and_on_a_database_with_data_keeps_the_data(database_url: str) -> None:
    first = open_store(database_url)
    try:
        first.migrate()  # twice in a row: harmless
        txn = sale("402511000031")
        first.ingest([txn, result(txn.rrn, "S1"), result("402511000032", "S2")])
        before = first.counts()
    finally:
        first.close()

    # The next start (or an upgrade) migrates the database that holds the data.
    second = open_store(database_url)
    try:
        second.migrate()
        assert second.counts() == before
        with second.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        assert outcome(second, txn.rrn) == "SETTLED"
        assert settlement_outcome(second, "S2") == "ORPHAN"
        # and it goes on working where the first left off
        second.ingest([sale("402511000032")])
        assert settlement_outcome(second, "S2") == "SETTLED"
    finally:
        second.close()


# --- the overdue claim under concurrency --------------------------------------------------


def test_each_overdue_is_reported_once_when_two_stores_claim_at_once(database_url: str) -> None:
    total = 300
    loader = open_store(database_url)
    try:
        loader.ingest(
            [
                sale(f"4025110{index:05d}", at=NOW - timedelta(days=3, seconds=index))
                for index in range(total)
            ]
        )
    finally:
        loader.close()

    stores = [open_store(database_url) for _ in range(2)]
    start = threading.Barrier(len(stores))
    claimed: list[list[OutcomeChange]] = [[] for _ in stores]
    errors: list[BaseException] = []

    def claim(index: int) -> None:
        try:
            start.wait()
            while batch := stores[index].mark_overdue(NOW, limit=25):
                claimed[index].extend(batch)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert not errors, errors
        rrns = [change.rrn for changes in claimed for change in changes]
        assert len(rrns) == total
        assert len(set(rrns)) == total
        assert stores[0].mark_overdue(NOW + timedelta(days=1)) == []
        with stores[0].engine.connect() as conn:
            logged = conn.execute(
                select(func.count())
                .select_from(outcome_log)
                .where(outcome_log.c.outcome == "OVERDUE")
            ).scalar_one()
        assert logged == total
        assert stores[0].counts()["outcome.OVERDUE"] == total
    finally:
        for instance in stores:
            instance.close()


@pytest.mark.parametrize("dialect_name", ["sqlite", "postgresql"])
def test_fast_converters_write_what_sqlalchemy_would(dialect_name: str) -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    from collector.store.writes import _fast_converter

    dialect = sqlite.dialect() if dialect_name == "sqlite" else postgresql.psycopg.dialect()
    times = [
        datetime(2026, 11, 25, 10, 30, tzinfo=ZoneInfo("Asia/Shanghai")),
        datetime(2026, 11, 25, 2, 30, 0, 1, tzinfo=ZoneInfo("UTC")),
        datetime(999, 1, 2, 3, 4, 5, tzinfo=ZoneInfo("UTC")),
        None,
    ]
    for column, values in (
        (transactions.c.terminal_time, times),
        (transactions.c.txn_date, [date(2026, 11, 25), date(12, 1, 1), None]),
    ):
        fast = _fast_converter(column.type, dialect_name)
        slow = column.type.dialect_impl(dialect).bind_processor(dialect)
        if fast is None:
            continue
        for value in values:
            expected = slow(value) if slow is not None else value
            assert fast(value) == expected
    fast = _fast_converter(transactions.c.terminal_time.type, dialect_name)
    assert fast is not None
    with pytest.raises(ValueError, match="naive"):
        fast(datetime(2026, 11, 25, 10, 30))  # noqa: DTZ001 - the case refused


def test_status_events_between_transactions_do_not_split_their_batch(store: Store) -> None:
    """A terminal's status every few sales (as agents publish) is stored beside them: the
    sales of a batch are stored with the statements of one run, not one run per gap,
    and a void later in the batch still cancels its sale."""
    messages: list[WireMessage] = []
    sales = [sale(f"4025110031{i:02d}") for i in range(40)]
    for index, txn in enumerate(sales):
        messages.append(txn)
        if index % 4 == 3:
            messages.append(status())
    messages.append(void(sales[0], "402511003199"))
    statements: list[str] = []

    def counted(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", counted)
    try:
        report = store.ingest(messages)
    finally:
        event.remove(store.engine, "before_cursor_execute", counted)
    assert report.stored == {"txn": 41, "status": 10}
    assert store.outcome_history(TID, sales[0].rrn) == ["CANCELLED"]
    assert store.transaction(TID, sales[1].rrn).outcome == "PENDING"
    # One run of 41 transactions and one of 10 status events. Ten runs of four sales
    # each with its own insert and look-ups would take well over 40.
    assert len(statements) <= 15, statements


def test_after_sync_an_asynchronous_commit_is_on_disk(postgres_url: str) -> None:
    """`ingest(durable=False)` returns before PostgreSQL has flushed its WAL; `sync()`
    returns only once the WAL is flushed past that commit, also where the database has
    `synchronous_commit` off. (The flush position is read from the server:
    `pg_current_wal_flush_lsn()`.)"""
    store = open_store(postgres_url)
    try:
        for index in range(10):
            if index == 5:
                with store.engine.begin() as conn:
                    database = conn.exec_driver_sql("SELECT current_database()").scalar()
                    conn.exec_driver_sql(
                        f'ALTER DATABASE "{database}" SET synchronous_commit = off'
                    )
                for engine in (store.engine, store.reads, store.derived):
                    engine.dispose()  # new connections: the database's setting applies
            store.ingest([sale(f"40251100{index:04d}")], durable=False)
            with store.reads.connect() as conn:
                committed = conn.execute(text("SELECT pg_current_wal_insert_lsn()")).scalar()
            store.sync()
            with store.reads.connect() as conn:
                flushed = conn.execute(
                    text("SELECT pg_current_wal_flush_lsn() >= CAST(:lsn AS pg_lsn)"),
                    {"lsn": committed},
                ).scalar()
            assert flushed, f"sync() returned before the WAL reached {committed}"
    finally:
        store.close()


def test_the_typed_rows_hold_every_column_of_their_table(store: Store) -> None:
    # A column added to a table and not to its row would be dropped without a word.
    for row_type, table in (
        (StoredTransaction, transactions),
        (StoredSettlement, settlements),
        (CollectorRecord, collectors),
    ):
        fields = [field.name for field in dataclasses.fields(row_type)]
        assert fields == [column.name for column in table.columns], row_type.__name__
    txn = sale("402511000099")
    store.ingest([txn, result(txn.rrn, "S-typed")])
    row = store.transaction(TID, txn.rrn)
    assert row is not None
    assert (row.kind, row.outcome) == (TxnKind.SALE, Outcome.SETTLED)
    assert type(row.kind) is TxnKind and type(row.outcome) is Outcome
    credit = store.settlement("S-typed")
    assert credit is not None and type(credit.status) is SettlementStatus
    assert (credit.transaction_id, credit.outcome) == (row.id, Outcome.SETTLED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.outcome = Outcome.PENDING  # type: ignore[misc]


def test_insert_rows_name_their_tables_columns() -> None:
    """Each insert TypedDict's keys are columns of its table; the two built from a wire
    model's fields (`vars()`, cast) have exactly those fields' names plus what the store adds."""
    from collector import schema
    from collector.store import inserts
    from posmon.wire.models import SettlementEvent, TxnEvent

    tables = {
        inserts.TxnInsert: schema.transactions,
        inserts.ConflictInsert: schema.conflicts,
        inserts.SettlementInsert: schema.settlements,
        inserts.OutcomeLogInsert: schema.outcome_log,
        inserts.StatusInsert: schema.status_events,
        inserts.BatchInsert: schema.batches,
        inserts.DeadletterInsert: schema.deadletters,
        inserts.PresenceUpsert: schema.presence,
        inserts.CaseInsert: schema.cases,
    }
    for row, table in tables.items():
        assert set(row.__annotations__) <= set(table.c.keys()), row.__name__
        assert row.__required_keys__ == frozenset(row.__annotations__), row.__name__
    txn_fields = set(TxnEvent.model_fields) - {"schema_"}
    added = {"txn_date", "stored_at", "expected_net", "deadline", "outcome"}
    assert set(inserts.TxnInsert.__annotations__) == txn_fields | added
    settlement_fields = set(SettlementEvent.model_fields) - {"schema_"}
    added = {"source", "received_at", "transaction_id", "outcome"}
    assert set(inserts.SettlementInsert.__annotations__) == settlement_fields | added
