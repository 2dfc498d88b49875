"""Alerts end to end: messages published on the contract topics against a real mosquitto,
a collector running in-process on SQLite (and PostgreSQL where it matters), alerts read
back from `{prefix}/alerts/{type}` as a consumer sees them, and from the store.

Each alert type, each cause, the lifecycle (fire, acknowledge, resolve, re-notify),
grouping under a bank outage, silences, and delivery to a webhook that is down for a
while and then receives everything once, signed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, Listener, wait_until
from sqlalchemy.exc import OperationalError
from test_collector_ingest import MID, MID_T0, SHANGHAI, Rig, rig_on, settlement, txn

from collector.alerts import AlertStore
from collector.classify import TerminalContext
from collector.config import CollectorConfig, MerchantRule
from collector.rules import AlertType, Candidate
from collector.store import Store
from collector.terms import SettlementTerms
from posmon.wire.models import (
    AlertEvent,
    BatchEvent,
    BatchResult,
    Cause,
    Network,
    PresenceEvent,
    PresenceState,
    SettlementStatus,
    StatusEvent,
    TxnKind,
)
from simulators.broker import free_port

MID_FROZEN = "898100012340007"
TID = "10000001"
BANK = "0102"


# --- messages ---------------------------------------------------------------------------


def status(
    tid: str = TID, *, link_up: bool = True, saf: int = 0, at: datetime | None = None
) -> StatusEvent:
    return StatusEvent(
        event_id=uuid.uuid4(),
        agent_id="box-1",
        tid=tid,
        link_up=link_up,
        network=Network.ETH if link_up else Network.NONE,
        saf_pending=saf,
        serial_ok=True,
        observed_at=at or datetime.now(UTC),
    )


def batch_close(
    batch: str = "000042", *, result: BatchResult = BatchResult.OK, tid: str = TID
) -> BatchEvent:
    now = datetime.now(UTC)
    return BatchEvent(
        event_id=uuid.uuid4(),
        agent_id="box-1",
        tid=tid,
        mid=MID,
        batch=batch,
        count=1,
        total=12_800,
        currency="CNY",
        result=result,
        terminal_time=now,
        observed_at=now,
    )


def failed(
    rrn: str,
    settlement_id: str,
    code: str | None,
    *,
    bank: str = BANK,
    mid: str = MID,
    status_: SettlementStatus = SettlementStatus.FAILED,
) -> Any:
    return settlement(rrn, settlement_id, status=status_).model_copy(
        update={"reason_code": code, "bank_code": bank, "mid": mid}
    )


# --- peers --------------------------------------------------------------------------------


@dataclass
class AlertRig:
    """A broker, a collector, a publisher, and a listener on the alert topics."""

    rig: Rig
    listener: Listener
    store: AlertStore
    started: list[Any] = field(default_factory=list)

    def start(self, **overrides: Any) -> Any:
        overrides.setdefault("alerts", {})
        overrides["alerts"].setdefault("sweep_s", 0.1)
        config = self.rig.config("c1", **overrides)
        config = config.model_copy(
            update={
                "merchants": [
                    *config.merchants,
                    MerchantRule(mid=MID_FROZEN, status="frozen"),
                ]
            }
        )
        running = self.rig.start(config)
        self.rig.wait_subscribed()
        self.started.append(running)
        return running

    def publish(self, *messages: Any) -> None:
        for message in messages:
            if isinstance(message, BatchEvent):
                topic = self.rig.publisher.topics.terminal(message.tid, "batch")
                self.rig.publisher.publish(topic, message.to_json())
            elif isinstance(message, PresenceEvent):
                topic = self.rig.publisher.topics.presence(message.agent_id)
                self.rig.publisher.publish(topic, message.to_json())
            else:
                self.rig.publisher.message(message)
        self.rig.publisher.flush()

    def alerts(self, alert_type: str | None = None) -> list[AlertEvent]:
        suffix = f"/alerts/{alert_type}" if alert_type else ""
        return [
            AlertEvent.from_json(m.payload)
            for m in self.listener.on(suffix)
            if "/alerts/" in m.topic
        ]

    def wait_alert(
        self,
        alert_type: str,
        state: str = "firing",
        timeout: float = 10,
        where: Callable[[AlertEvent], bool] = lambda alert: True,
    ) -> AlertEvent:
        found: list[AlertEvent] = []

        def seen() -> bool:
            found[:] = [a for a in self.alerts(alert_type) if a.state.value == state and where(a)]
            return bool(found)

        wait_until(seen, timeout, f"{alert_type} {state} on the alert topic")
        return found[0]


@pytest.fixture
def alert_rig(
    tmp_path: Path, broker: Broker, prefix: str, listener_factory: Any
) -> Iterator[AlertRig]:
    with rig_on(f"sqlite:///{tmp_path}/posmon.db", broker, prefix) as rig:
        listener = listener_factory(broker, prefix)
        yield AlertRig(rig, listener, AlertStore(rig.reader.engine, "test", []))


@pytest.fixture
def alert_rig_db(
    database_url: str, broker: Broker, prefix: str, listener_factory: Any
) -> Iterator[AlertRig]:
    with rig_on(database_url, broker, prefix) as rig:
        listener = listener_factory(broker, prefix)
        yield AlertRig(rig, listener, AlertStore(rig.reader.engine, "test", []))


# --- settlement failures, each with its cause ---------------------------------------------


def test_failed_settlement_alert_names_the_cause_from_the_reason_code(
    alert_rig_db: AlertRig,
) -> None:
    rig = alert_rig_db
    rig.start()
    rig.publish(txn("402511000001"), failed("402511000001", "S-1", "AC04"))
    alert = rig.wait_alert("SETTLEMENT_FAILED")
    assert alert.cause.value == "ACCOUNT_INFO"
    assert alert.severity.value == "critical"
    assert (alert.tid, alert.rrn, alert.mid, alert.bank_code) == (TID, "402511000001", MID, BANK)
    assert alert.amount_at_risk == 12_800 and alert.currency == "CNY"
    assert alert.fingerprint == f"SETTLEMENT_FAILED:{TID}:402511000001"
    assert any("AC04" in line for line in (alert.details or {})["evidence"])
    stored = rig.store.find(status="open")
    assert [row.alert_id for row in stored] == [alert.alert_id]


def test_every_settlement_outcome_alert_type_fires_once(alert_rig: AlertRig) -> None:
    rig = alert_rig
    rig.start()
    rig.publish(
        txn("402511000010"),
        settlement("402511000010", "S-10"),
        failed("402511000010", "S-10R", "AC06", status_=SettlementStatus.RETURNED),
        txn("402511000011"),
        settlement("402511000011", "S-11", net=12_000),
        txn("402511000012"),
        settlement("402511000012", "S-12"),
        settlement("402511000012", "S-12B"),
        settlement("402511000099", "S-99"),
        txn("402511000013"),
        settlement("402511000013", "S-13"),
        txn("402511000014", kind=TxnKind.VOID, orig_rrn="402511000013"),
    )
    returned = rig.wait_alert("SETTLEMENT_RETURNED")
    assert returned.cause.value == "ACCOUNT_INFO"
    mismatch = rig.wait_alert("AMOUNT_MISMATCH")
    assert (mismatch.cause.value, mismatch.amount_at_risk) == ("OPERATOR", 800)
    duplicate = rig.wait_alert("DUPLICATE_SETTLEMENT")
    assert (duplicate.cause.value, duplicate.rrn) == ("BANK_SYSTEM", "402511000012")
    orphan = rig.wait_alert("ORPHAN_SETTLEMENT")
    assert orphan.fingerprint == "ORPHAN_SETTLEMENT:S-99"
    reversed_ = rig.wait_alert("REVERSED_BUT_SETTLED")
    assert (reversed_.cause.value, reversed_.rrn) == ("OPERATOR", "402511000013")
    # The orphan's transaction arrives late: the orphan alert resolves.
    rig.publish(txn("402511000099"))
    resolved = rig.wait_alert("ORPHAN_SETTLEMENT", "resolved")
    assert resolved.alert_id == orphan.alert_id and resolved.resolved_at is not None
    time.sleep(0.5)
    firing = [a.type for a in rig.alerts() if a.state.value == "firing"]
    assert sorted(firing) == sorted(
        [
            "SETTLEMENT_RETURNED",
            "AMOUNT_MISMATCH",
            "DUPLICATE_SETTLEMENT",
            "ORPHAN_SETTLEMENT",
            "REVERSED_BUT_SETTLED",
        ]
    ), "each condition fires exactly once"


def t0_sale(rrn: str, **kwargs: Any) -> Any:
    return txn(rrn, mid=MID_T0, **kwargs)


def test_overdue_with_the_link_down_is_a_network_cause_and_resolves_on_the_late_credit(
    alert_rig_db: AlertRig,
) -> None:
    rig = alert_rig_db
    rig.start()
    rig.publish(status(link_up=False, saf=3), t0_sale("402511000020"))
    alert = rig.wait_alert("SETTLEMENT_OVERDUE")
    assert alert.cause.value == "NETWORK"
    assert any("LINK=DOWN" in line for line in (alert.details or {})["evidence"])
    late = settlement("402511000020", "S-20").model_copy(update={"mid": MID_T0})
    rig.publish(late)
    resolved = rig.wait_alert("SETTLEMENT_OVERDUE", "resolved")
    assert resolved.alert_id == alert.alert_id


def test_a_credit_settled_after_the_deadline_is_overdue_however_late_the_sale_came(
    alert_rig: AlertRig,
) -> None:
    # Random seed 182: a sale reached the collector after its deadline, with its credit
    # (settled after the deadline) already there: SETTLED at once, and the overdue watch
    # never saw it PENDING past its deadline.
    rig = alert_rig
    rig.start()
    sold = datetime.now(SHANGHAI) - timedelta(minutes=1)  # T0 within 1.8 s: due long ago
    rig.publish(
        settlement("402511000050", "S-50").model_copy(
            update={"mid": MID_T0, "txn_date": sold.date()}
        )
    )
    rig.wait_alert("ORPHAN_SETTLEMENT")
    rig.publish(status(), t0_sale("402511000050", at=sold))
    late = rig.wait_alert("SETTLEMENT_OVERDUE", "resolved")
    assert late.rrn == "402511000050"


def test_overdue_with_its_batch_never_closed_is_an_operator_cause(alert_rig: AlertRig) -> None:
    # A T1 merchant is paid out of closed batches: a sale of ten days ago in a batch never
    # closed was never submitted.
    rig = alert_rig
    rig.start()
    rig.publish(status(), txn("402511000030", at=datetime.now(SHANGHAI) - timedelta(days=10)))
    alert = rig.wait_alert("SETTLEMENT_OVERDUE")
    assert alert.cause.value == "OPERATOR"
    assert any("never closed" in line for line in (alert.details or {})["evidence"])


def test_overdue_of_a_t0_merchant_is_not_blamed_on_its_open_batch(alert_rig: AlertRig) -> None:
    # T0 is paid sale by sale, whatever the batch: with the terminal fine, the bank is late.
    rig = alert_rig
    rig.start()
    rig.publish(status(), t0_sale("402511000031"))
    alert = rig.wait_alert("SETTLEMENT_OVERDUE")
    assert alert.cause.value == "BANK_SYSTEM"
    assert any("sale by sale" in line for line in (alert.details or {})["evidence"])


def test_overdue_with_the_terminal_fine_and_its_batch_closed_is_the_banks(
    alert_rig: AlertRig,
) -> None:
    rig = alert_rig
    rig.start()
    rig.publish(status(), batch_close(), t0_sale("402511000040"))
    alert = rig.wait_alert("SETTLEMENT_OVERDUE")
    assert alert.cause.value == "BANK_SYSTEM"


def test_offline_approval_is_a_network_cause_even_without_status(alert_rig: AlertRig) -> None:
    rig = alert_rig
    rig.start()
    offline = t0_sale("402511000041").model_copy(update={"rc": "Y1"})
    rig.publish(offline)
    alert = rig.wait_alert("SETTLEMENT_OVERDUE")
    assert alert.cause.value == "NETWORK"
    assert any("offline (RC Y1)" in line for line in (alert.details or {})["evidence"])


def test_failure_without_a_code_at_a_frozen_merchant_is_merchant_qualification(
    alert_rig: AlertRig,
) -> None:
    rig = alert_rig
    rig.start()
    rig.publish(
        txn("402511000050", mid=MID_FROZEN),
        failed("402511000050", "S-50", None, mid=MID_FROZEN),
        txn("402511000051"),
        failed("402511000051", "S-51", "MS03"),
    )
    frozen = rig.wait_alert("SETTLEMENT_FAILED", where=lambda a: a.rrn == "402511000050")
    assert frozen.cause.value == "MERCHANT_QUALIFICATION"
    unspecified = rig.wait_alert("SETTLEMENT_FAILED", where=lambda a: a.rrn == "402511000051")
    assert unspecified.cause.value == "UNKNOWN"


def test_configured_reason_codes_override_the_default_table(alert_rig: AlertRig) -> None:
    rig = alert_rig
    rig.start(alerts={"reason_codes": {"X77": "BANK_SYSTEM", "AC04": "MERCHANT_QUALIFICATION"}})
    rig.publish(
        txn("402511000060"),
        failed("402511000060", "S-60", "X77"),
        txn("402511000061"),
        failed("402511000061", "S-61", "ac04"),
    )
    first = rig.wait_alert("SETTLEMENT_FAILED", where=lambda a: a.rrn == "402511000060")
    second = rig.wait_alert("SETTLEMENT_FAILED", where=lambda a: a.rrn == "402511000061")
    assert (first.cause.value, second.cause.value) == ("BANK_SYSTEM", "MERCHANT_QUALIFICATION")


def test_maintenance_window_mutes_the_alert_but_records_it_with_a_bank_cause(
    alert_rig: AlertRig,
) -> None:
    rig = alert_rig
    now = datetime.now(UTC)
    window = {
        "bank_code": BANK,
        "start": now - timedelta(hours=1),
        "end": now + timedelta(hours=1),
        "reason": "core banking upgrade",
    }
    rig.start(alerts={"maintenance": [window]})
    rig.publish(txn("402511000070"), failed("402511000070", "S-70", "NARR"))
    wait_until(lambda: rig.store.find(status="open"), 10, "the alert stored")
    (row,) = rig.store.find(status="open")
    assert row.cause == "BANK_SYSTEM" and row.silence_id
    assert any("core banking upgrade" in line for line in (row.details or {})["evidence"])
    time.sleep(0.5)
    assert rig.alerts() == [], "a muted alert is not published"


# --- bank outage: grouping ------------------------------------------------------------------


def test_failures_at_one_bank_are_grouped_into_a_bank_outage(alert_rig_db: AlertRig) -> None:
    rig = alert_rig_db
    rig.start(alerts={"bank_outage_failures": 3})
    for n in range(3):
        rrn = f"40251100008{n}"
        rig.publish(txn(rrn), failed(rrn, f"S-8{n}", "B201"))
    outage = rig.wait_alert("BANK_OUTAGE")
    assert (outage.bank_code, outage.cause.value, outage.severity.value) == (
        BANK,
        "BANK_SYSTEM",
        "critical",
    )
    assert outage.amount_at_risk == 3 * 12_800
    wait_until(lambda: len(rig.store.find(group_id=outage.alert_id)) == 3, 5, "three grouped")
    # A fourth failure joins the group: stored and queryable, not notified on its own.
    rig.publish(txn("402511000089"), failed("402511000089", "S-89", "B201"))
    wait_until(lambda: len(rig.store.find(group_id=outage.alert_id)) == 4, 10, "fourth grouped")
    time.sleep(0.5)
    singles = rig.alerts("SETTLEMENT_FAILED")
    assert len(singles) == 3 and "402511000089" not in {a.rrn for a in singles}
    assert len(rig.alerts("BANK_OUTAGE")) == 1


def test_a_bank_outage_is_measured_on_when_the_failures_happened(
    alert_rig_db: AlertRig,
) -> None:
    """Failures heard together whose settlements failed hours apart are not an outage. An
    unspecific failure (no reason code naming a cause) near two coded ones (one before
    it, one after) is not the bank's and does not make an outage of three; a third coded
    failure within one window does, and then an unspecific one joins it (rule 4)."""
    rig = alert_rig_db
    rig.start(alerts={"bank_outage_failures": 3, "bank_outage_window_min": 90})
    now = datetime.now(UTC)

    def at(n: int, code: str, hours_ago: float) -> list[Any]:
        rrn = f"4025110009{n:02d}"
        when = now - timedelta(hours=hours_ago)
        return [txn(rrn), failed(rrn, f"S-9{n:02d}", code).model_copy(update={"settled_at": when})]

    def cause_of(n: int) -> str:
        rrn = f"4025110009{n:02d}"
        wait_until(lambda: [r for r in rig.store.find(bank_code=BANK) if r.rrn == rrn], 10, rrn)
        (row,) = [r for r in rig.store.find(bank_code=BANK) if r.rrn == rrn]
        return row.cause.value

    rig.publish(*at(1, "B201", 6), *at(2, "B201", 4), *at(3, "B201", 1.4))
    rig.publish(*at(4, "B201", 1.0))
    assert [cause_of(n) for n in (1, 2, 3, 4)] == ["BANK_SYSTEM"] * 4
    rig.publish(*at(5, "MS03", 1.2))  # one coded failure in the 90 min before it
    assert cause_of(5) == "UNKNOWN"
    time.sleep(0.5)
    assert rig.alerts("BANK_OUTAGE") == []
    rig.publish(*at(6, "B202", 0.8))  # the third within one window: an outage
    outage = rig.wait_alert("BANK_OUTAGE")
    assert outage.details["failures"] == 3

    def grouped() -> set[str]:
        return {(row.rrn or "")[-2:] for row in rig.store.find(group_id=outage.alert_id)}

    wait_until(lambda: grouped() == {"03", "04", "06"}, 10, "the outage's three members")
    rig.publish(*at(7, "NARR", 0.6))  # the bank is down without it: the bank's
    assert cause_of(7) == "BANK_SYSTEM"
    (joined,) = [r for r in rig.store.find(bank_code=BANK) if r.rrn == "402511000907"]
    assert joined.group_id == outage.alert_id
    assert any("other failures at bank" in line for line in (joined.details or {})["evidence"])


# --- terminals and batches ------------------------------------------------------------------


def test_link_down_for_n_seconds_fires_and_link_up_resolves(alert_rig: AlertRig) -> None:
    rig = alert_rig
    rig.start(alerts={"link_down_s": 0.5})
    rig.publish(status(link_up=False))
    alert = rig.wait_alert("HOST_LINK_DOWN")
    assert (alert.tid, alert.cause.value) == (TID, "NETWORK")
    rig.publish(status(link_up=True))
    assert rig.wait_alert("HOST_LINK_DOWN", "resolved").alert_id == alert.alert_id


def test_saf_backlog_above_the_threshold_counts_as_link_trouble(alert_rig: AlertRig) -> None:
    rig = alert_rig
    rig.start(alerts={"link_down_s": 0.3, "saf_threshold": 5})
    rig.publish(status(saf=4, tid="10000002"), status(saf=9))
    alert = rig.wait_alert("HOST_LINK_DOWN")
    assert alert.tid == TID and "SAF backlog 9" in alert.summary
    time.sleep(0.5)
    assert {a.tid for a in rig.alerts("HOST_LINK_DOWN")} == {TID}


def test_terminal_silent_past_the_heartbeat_timeout_is_offline_until_it_reports(
    alert_rig: AlertRig,
) -> None:
    rig = alert_rig
    rig.start(alerts={"heartbeat_timeout_s": 1.0})
    rig.publish(status(tid="10000005"))
    alert = rig.wait_alert("TERMINAL_OFFLINE", where=lambda a: a.tid == "10000005")
    assert "no status or heartbeat" in (alert.details or {})["evidence"][0]
    rig.publish(status(tid="10000005"))
    rig.wait_alert("TERMINAL_OFFLINE", "resolved", where=lambda a: a.tid == "10000005")


def test_agent_will_makes_its_terminals_offline(alert_rig: AlertRig) -> None:
    rig = alert_rig
    rig.start()
    gone = PresenceEvent(
        agent_id="box-9",
        state=PresenceState.OFFLINE,
        tids=["10000009"],
        version="1",
        observed_at=datetime.now(UTC),
    )
    rig.publish(gone)
    alert = rig.wait_alert("TERMINAL_OFFLINE", where=lambda a: a.tid == "10000009")
    assert "box-9" in (alert.details or {})["evidence"][0]


def test_unbalanced_batch_fires_and_a_balanced_close_resolves(alert_rig: AlertRig) -> None:
    rig = alert_rig
    rig.start()
    rig.publish(batch_close(result=BatchResult.UNBALANCED))
    alert = rig.wait_alert("BATCH_UNBALANCED")
    assert alert.cause.value == "OPERATOR"
    rig.publish(batch_close(result=BatchResult.OK))
    rig.wait_alert("BATCH_UNBALANCED", "resolved")


def test_batch_not_closed_by_the_cutoff_fires_and_its_close_resolves(
    alert_rig: AlertRig,
) -> None:
    rig = alert_rig
    rig.start()
    yesterday = datetime.now(SHANGHAI) - timedelta(days=1)
    rig.publish(txn("402511000090", at=yesterday.replace(hour=9)))
    alert = rig.wait_alert("BATCH_NOT_CLOSED", timeout=15)
    assert (alert.tid, alert.cause.value, alert.amount_at_risk) == (TID, "OPERATOR", 12_800)
    rig.publish(batch_close())
    rig.wait_alert("BATCH_NOT_CLOSED", "resolved")


def test_decline_spike_against_the_terminals_own_baseline(alert_rig: AlertRig) -> None:
    rig = alert_rig
    rig.start(alerts={"decline_window": 10, "decline_baseline_min": 20})
    normal = [txn(f"4025110010{n:02d}", approved=n % 10 != 0) for n in range(40)]
    rig.publish(*normal)
    time.sleep(0.5)
    assert rig.alerts("DECLINE_SPIKE") == [], "a 10% decline rate is this terminal's normal"
    # Nine of ten declined: by chance at the baseline's 10%, one window in ten million
    # (seven of ten would be one in thirty thousand: no spike on that little evidence).
    spike = [txn(f"4025110011{n:02d}", approved=n == 0) for n in range(10)]
    rig.publish(*spike)
    alert = rig.wait_alert("DECLINE_SPIKE", where=lambda a: a.tid == TID)
    assert alert.details and alert.details["baseline"] <= 0.15 and alert.details["rate"] >= 0.5


# --- lifecycle ------------------------------------------------------------------------------


def test_unacknowledged_critical_alert_is_notified_again_until_acknowledged(
    alert_rig: AlertRig,
) -> None:
    rig = alert_rig
    rig.start(alerts={"renotify_min": 0.01})  # 0.6 s
    rig.publish(txn("402511000100"), failed("402511000100", "S-100", "AC01"))
    first = rig.wait_alert("SETTLEMENT_FAILED")
    wait_until(lambda: len(rig.alerts("SETTLEMENT_FAILED")) >= 3, 10, "two re-notifications")
    assert {a.alert_id for a in rig.alerts("SETTLEMENT_FAILED")} == {first.alert_id}
    rig.store.acknowledge(first.alert_id, "ops-li", datetime.now(UTC), "calling the bank")
    time.sleep(0.3)
    settled_count = len(rig.alerts("SETTLEMENT_FAILED"))
    time.sleep(1.5)
    assert len(rig.alerts("SETTLEMENT_FAILED")) == settled_count, "acknowledged: quiet"
    events = [item.event for item in rig.store.history(first.alert_id)]
    assert events[0] == "fired" and "renotified" in events and events[-1] == "acknowledged"


def test_silence_by_terminal_mutes_only_that_terminal(alert_rig: AlertRig) -> None:
    rig = alert_rig
    now = datetime.now(UTC)
    rig.store.add_silence(
        starts_at=now - timedelta(minutes=1),
        ends_at=now + timedelta(hours=1),
        reason="terminal being replaced",
        created_by="ops-li",
        now=now,
        tid="10000002",
    )
    rig.start()
    rig.publish(
        txn("402511000110", tid="10000002"),
        failed("402511000110", "S-110", "AC01").model_copy(update={"tid": "10000002"}),
        txn("402511000111"),
        failed("402511000111", "S-111", "AC01"),
    )
    rig.wait_alert("SETTLEMENT_FAILED", where=lambda a: a.rrn == "402511000111")
    wait_until(lambda: len(rig.store.find(status="open")) == 2, 10, "both stored")
    time.sleep(0.5)
    assert [a.rrn for a in rig.alerts("SETTLEMENT_FAILED")] == ["402511000111"]


# --- delivery -------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook receiver on a fixed port that can be started and stopped."""

    port: int
    secret: bytes
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@contextmanager
def receiver_on(port: int, secret: bytes) -> Iterator[Receiver]:
    receiver = Receiver(port, secret)
    try:
        yield receiver
    finally:
        receiver.stop()


def test_webhook_down_for_a_while_then_receives_every_alert_once_signed(
    alert_rig: AlertRig,
) -> None:
    rig = alert_rig
    port = free_port()
    secret = b"s3cret"
    with receiver_on(port, secret) as receiver:
        rig.start(
            notify={
                "webhooks": [
                    {"name": "ops", "url": f"http://127.0.0.1:{port}/hook", "secret": "s3cret"}
                ],
                "retry_min_s": 0.2,
                "retry_max_s": 0.5,
            }
        )
        rrns = [f"40251100012{n}" for n in range(5)]
        for n, rrn in enumerate(rrns):
            rig.publish(txn(rrn), failed(rrn, f"S-12{n}", "AC01", bank=f"01{n:02d}"))
        # The MQTT channel is not held up by the webhook being down.
        wait_until(lambda: len(rig.alerts("SETTLEMENT_FAILED")) == 5, 10, "five on MQTT")
        assert receiver.received == []
        receiver.start()
        wait_until(lambda: len(receiver.received) >= 5, 15, "five webhook deliveries")
        time.sleep(1.0)
        assert len(receiver.received) == 5, "each alert delivered once"
        for headers, body in receiver.received:
            expected = hmac.new(
                secret, headers["X-Posmon-Timestamp"].encode() + b"." + body, hashlib.sha256
            ).hexdigest()
            assert headers["X-Posmon-Signature"] == f"sha256={expected}"
        delivered = [AlertEvent.from_json(body).rrn for _, body in receiver.received]
        assert delivered == rrns, "delivered in the order they fired"


def test_apprise_channel_delivers_a_readable_message(alert_rig: AlertRig) -> None:
    rig = alert_rig
    port = free_port()
    with receiver_on(port, b"") as receiver:
        receiver.start()
        rig.start(notify={"apprise": [{"name": "chat", "url": f"json://127.0.0.1:{port}/"}]})
        rig.publish(txn("402511000130"), failed("402511000130", "S-130", "AC04"))
        wait_until(lambda: receiver.received, 15, "apprise delivery")
        message = json.loads(receiver.received[0][1])
        assert "SETTLEMENT_FAILED" in message["title"]
        assert "cause: ACCOUNT_INFO" in message["message"]
        assert "AC04" in message["message"]


# --- restart and several collectors ----------------------------------------------------------


def test_failure_stored_while_the_alert_engine_was_down_is_alerted_after_restart(
    alert_rig: AlertRig,
) -> None:
    rig = alert_rig
    first = rig.start()
    rig.publish(txn("402511000140"), failed("402511000140", "S-140", "AC01"))
    rig.wait_alert("SETTLEMENT_FAILED", where=lambda a: a.rrn == "402511000140")
    first.stop()
    # As if collector c1 had been killed right after its ingest committed these, before
    # its alert engine saw them: stored under its id, never alerted.
    terms = first.collector.store.terms
    stored_by_c1 = Store(rig.rig.database_url, terms, collector_id="c1")
    stored_by_c1.ingest([txn("402511000141"), failed("402511000141", "S-141", "AC04")])
    stored_by_c1.close()
    rig.start()
    again = rig.wait_alert("SETTLEMENT_FAILED", where=lambda a: a.rrn == "402511000141")
    assert again.cause.value == "ACCOUNT_INFO"
    time.sleep(0.5)
    assert len([a for a in rig.alerts("SETTLEMENT_FAILED") if a.rrn == "402511000140"]) == 1, (
        "the alert fired before the restart is not fired again"
    )


def test_two_collectors_on_one_postgresql_alert_each_failure_once(
    postgres_url: str, broker: Broker, prefix: str, listener_factory: Any
) -> None:
    with rig_on(postgres_url, broker, prefix) as rig:
        listener = listener_factory(broker, prefix)
        alerts = AlertRig(rig, listener, AlertStore(rig.reader.engine, "test", []))
        for collector_id in ("c1", "c2"):
            config = rig.config(
                collector_id, ingest={"shared_group": "posmon"}, mqtt={"protocol": "5"}
            )
            rig.start(config)
        rig.wait_subscribed()
        sales = [f"40251100015{n}" for n in range(10)]
        for n, rrn in enumerate(sales):
            alerts.publish(txn(rrn), failed(rrn, f"S-15{n}", "AC01", bank=f"02{n:02d}"))
        wait_until(lambda: len(alerts.alerts("SETTLEMENT_FAILED")) >= 10, 15, "ten alerts")
        time.sleep(1.0)
        published = sorted(a.rrn or "" for a in alerts.alerts("SETTLEMENT_FAILED"))
        assert published == sorted(sales), "each failure alerted once, by one collector"
        stored = alerts.store.find(alert_type="SETTLEMENT_FAILED")
        assert len(stored) == 10 and {row.collector_id for row in stored} <= {"c1", "c2"}


# --- the command line ------------------------------------------------------------------------


def posmon(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "posmon"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_alerts_commands_list_show_acknowledge_and_silence(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/posmon.db"
    config = tmp_path / "collector.toml"
    config.write_text(f'[database]\nurl = "{url}"\n')
    store = Store(url, SettlementTerms(CollectorConfig()))
    store.migrate()
    alerts = AlertStore(store.engine, "c1", ["mqtt"])
    fired = alerts.fire(
        Candidate(
            type=AlertType.SETTLEMENT_FAILED,
            fingerprint=f"SETTLEMENT_FAILED:{TID}:402511000160",
            cause=Cause.ACCOUNT_INFO,
            summary=f"TID {TID} RRN 402511000160: settlement failed, 128.00 CNY not credited",
            tid=TID,
            rrn="402511000160",
            bank_code=BANK,
            amount_at_risk=12_800,
            currency="CNY",
            details={"evidence": ["reason code AC01: 收款账号错误 (incorrect account number)"]},
        ),
        datetime.now(UTC),
    )
    store.close()
    assert fired is not None
    alert_id = fired.alert_id

    listed = posmon("alerts", "list", "-c", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    assert AlertEvent.from_json(line).alert_id == alert_id

    shown = posmon("alerts", "show", alert_id, "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    assert "AC01" in shown.stdout and "fired by c1" in shown.stdout

    acked = posmon(
        "alerts", "ack", alert_id, "--by", "ops-li", "--note", "calling", "-c", str(config)
    )
    assert acked.returncode == 0 and "acknowledged by ops-li" in acked.stdout
    again = posmon("alerts", "ack", alert_id, "--by", "ops-li", "-c", str(config))
    assert again.returncode == 1 and "is acknowledged, not firing" in again.stderr
    missing = posmon("alerts", "ack", "no-such-alert", "--by", "ops-li", "-c", str(config))
    assert missing.returncode == 1 and "no alert no-such-alert" in missing.stderr

    table = posmon("alerts", "list", "-c", str(config), "--status", "acknowledged")
    assert "SETTLEMENT_FAILED" in table.stdout and "ACCOUNT_INFO" in table.stdout

    silenced = posmon(
        "alerts", "silence", "--bank", BANK, "--for", "2h", "--by", "ops-li",
        "--reason", "bank maintenance", "--maintenance", "-c", str(config),
    )  # fmt: skip
    assert silenced.returncode == 0, silenced.stderr
    assert silenced.stdout.startswith("silence S-")
    listed_silences = posmon("alerts", "silences", "-c", str(config))
    assert (
        "bank_code=0102" in listed_silences.stdout and "bank maintenance" in listed_silences.stdout
    )

    unbounded = posmon(
        "alerts", "silence", "--bank", BANK, "--by", "x", "--reason", "y", "-c", str(config)
    )
    assert unbounded.returncode == 2 and "--for" in unbounded.stderr
    matches_all = posmon(
        "alerts", "silence", "--for", "1h", "--by", "x", "--reason", "y", "-c", str(config)
    )
    assert matches_all.returncode == 2 and "needs a type, bank" in matches_all.stderr


def test_an_alert_write_that_fails_once_is_done_again_not_passed_over(
    alert_rig: AlertRig,
) -> None:
    """The database refuses one alert write (as when it restarts): the engine's turn
    fails, and the outcome it was handling, and those after it in the same read, are
    read again at the next turn. Every failure gets its alert, each once."""
    rig = alert_rig
    running = rig.start()
    engine = running.collector.alerts
    real_fire = engine.store.fire
    refused: list[str] = []

    def fire_failing_once(candidate: Any, *args: Any, **kwargs: Any) -> Any:
        if not refused and candidate.rrn == "402511000702":
            refused.append(candidate.rrn)
            raise OperationalError(
                "INSERT INTO alerts", {}, Exception("server closed the connection")
            )
        return real_fire(candidate, *args, **kwargs)

    engine.store.fire = fire_failing_once  # a fault no real database produces on demand
    rrns = [f"40251100070{i}" for i in range(1, 6)]
    rig.publish(*[txn(rrn) for rrn in rrns])
    rig.publish(*[failed(rrn, f"S-70{i}", "AC04") for i, rrn in enumerate(rrns)])
    wait_until(lambda: len(rig.alerts("SETTLEMENT_FAILED")) == 5, 15, "five alerts")
    time.sleep(0.5)
    assert refused == ["402511000702"]
    assert sorted(a.rrn or "" for a in rig.alerts("SETTLEMENT_FAILED")) == rrns


def test_the_evidence_of_an_outcome_is_read_as_the_tables_hold_it(database_url: str) -> None:
    """`FactReader.evidence()`, the one statement behind a settlement alert's cause: the
    transaction and settlement; the terminal's status events within the window before it
    and the latest one before that (not older ones, not later ones, not another terminal's),
    its state taken from the latest of them; the batch's latest close. An orphan (no
    transaction) has no terminal or batch facts."""
    config = CollectorConfig(merchants=[MerchantRule(mid=MID, fee_bp=0)])
    store = Store(database_url, SettlementTerms(config), collector_id="evidence")
    store.migrate()
    alerts = AlertStore(store.engine, "evidence", [], reads=store.reads)
    try:
        sale = txn("402511006601", at=datetime.now(SHANGHAI) - timedelta(hours=4))
        t0 = sale.observed_at

        def seen(minutes: float, **fields: Any) -> StatusEvent:
            return status(at=t0 + timedelta(minutes=minutes)).model_copy(update=fields)

        # Three other sales of its batch approved offline: one credited since, one failed
        # (both reached the acquirer), one with nothing yet.
        offline = [
            txn(rrn, at=t0 - timedelta(minutes=50)).model_copy(update={"rc": "Y3"})
            for rrn in ("402511006602", "402511006603", "402511006604")
        ]
        store.ingest(
            [
                sale,
                *offline,
                settlement("402511006602", "S-6602"),
                failed("402511006604", "S-6604", "B202"),
                seen(-180, saf_pending=99),  # before the window, but not the latest before
                seen(-120, link_up=False),  # the latest before the window
                seen(-1, saf_pending=7, serial_ok=False),  # within it
                # After the sale, even close to it: the sale was made before the link went.
                seen(5, link_up=False, saf_pending=300),
                seen(30, link_up=False, saf_pending=500),  # after it
                status("10000002", link_up=False, at=t0),  # another terminal
                batch_close(result=BatchResult.OK),
                batch_close(result=BatchResult.UNBALANCED),  # the latest close
                failed(sale.rrn, "S-6601", "AC01"),
                failed("402511006699", "S-6699", "AC01"),  # an orphan
            ]
        )
        rows = {row.settlement_id: row for row in alerts.facts.outcome_rows(0, 100)}
        found = alerts.facts.evidence(rows["S-6601"], window=timedelta(minutes=10))
        assert found.txn is not None and found.txn.rrn == sale.rrn
        assert found.txn.observed_at == t0
        assert found.settlement is not None and found.settlement.reason_code == "AC01"
        # Two statuses count; the state is the latest up to the sale: the link that was
        # down two hours before had come back, the SAF backlog and the serial fault had not.
        assert found.terminal == TerminalContext(
            statuses=2, link_down=False, saf_max=7, serial_down=True
        )
        assert found.batch_closed is True
        assert found.batch_result == BatchResult.UNBALANCED.value
        assert found.offline_settled == 2
        orphan = alerts.facts.evidence(rows["S-6699"], window=timedelta(minutes=10))
        assert orphan.txn is None and orphan.terminal is None and orphan.batch_closed is None
        assert orphan.offline_settled == 0
        assert orphan.settlement is not None and orphan.settlement.rrn == "402511006699"
    finally:
        store.close()
