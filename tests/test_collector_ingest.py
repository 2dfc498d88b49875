"""The collector against a real mosquitto, on SQLite and on PostgreSQL: messages published on
the contract topics end in the store once, whatever the order, restarts and kills; bad
payloads become dead letters; deadlines turn into OVERDUE outcomes within a second, once,
also across restarts and with two collectors sharing one subscription and one database.

The collector runs in-process (a `Collector` in a thread), except where it is SIGKILLed:
there it is `posmon collector run`, as an operator runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import Broker, Listener, wait_until
from sqlalchemy import func, select

from collector.config import CollectorConfig, MerchantRule, SettlementMode
from collector.correlate import Outcome
from collector.schema import deadletters, outcome_log, settlements, transactions
from collector.service import Collector
from collector.store import Store
from collector.terms import SettlementTerms
from posmon.mqtt import MqttClient, Protocol, Topics
from posmon.wire.models import (
    Network,
    SettlementEvent,
    SettlementKind,
    SettlementStatus,
    StatusEvent,
    TxnEvent,
    TxnKind,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
MID = "898100012340001"  # T1, no fee: deadlines far away
MID_T0 = "898100012340009"  # T0 within 1.8 s: deadlines pass during the test
T0_HOURS = 0.0005
AMOUNT = 12_800


# --- messages -----------------------------------------------------------------------------


def txn(
    rrn: str,
    *,
    tid: str = "10000001",
    mid: str = MID,
    at: datetime | None = None,
    kind: TxnKind = TxnKind.SALE,
    approved: bool = True,
    orig_rrn: str | None = None,
) -> TxnEvent:
    moment = at or datetime.now(SHANGHAI)
    return TxnEvent(
        event_id=uuid.uuid4(),
        agent_id="box-1",
        tid=tid,
        mid=mid,
        kind=kind,
        amount=AMOUNT,
        currency="CNY",
        pan_masked="622202*********0123",
        rc="00" if approved else "51",
        approved=approved,
        rrn=rrn,
        stan=rrn[-6:],
        batch="000042",
        terminal_time=moment,
        observed_at=moment,
        orig_rrn=orig_rrn,
    )


def settlement(
    rrn: str,
    settlement_id: str,
    *,
    tid: str = "10000001",
    status: SettlementStatus = SettlementStatus.CREDITED,
    net: int = AMOUNT,
) -> SettlementEvent:
    return SettlementEvent(
        settlement_id=settlement_id,
        mid=MID,
        tid=tid,
        rrn=rrn,
        txn_date=datetime.now(SHANGHAI).date(),
        amount=AMOUNT,
        fee=AMOUNT - net,
        net_amount=net,
        currency="CNY",
        status=status,
        settled_at=datetime.now(UTC),
        kind=SettlementKind.ORIGINAL,
    )


def probe(event_id: uuid.UUID) -> StatusEvent:
    """A status event used to learn that the collector is subscribed (stored once)."""
    return StatusEvent(
        event_id=event_id,
        agent_id="probe",
        tid="99999999",
        link_up=True,
        network=Network.ETH,
        saf_pending=0,
        serial_ok=True,
        observed_at=datetime.now(UTC),
    )


# --- peers --------------------------------------------------------------------------------


class Publisher:
    """An MQTT QoS 1 publisher on the contract topics (posmon.mqtt, as the agent uses)."""

    def __init__(self, broker: Broker, prefix: str) -> None:
        self.topics = Topics(prefix)
        self.client = MqttClient(broker.settings(prefix, inflight=100), f"pub-{uuid.uuid4().hex}")
        self.sent = 0
        self.acked = 0
        self.client.on_published = self._acked
        self.client.connect()
        deadline = time.monotonic() + 10
        while not self.client.connected and time.monotonic() < deadline:
            self.client.loop(0.05)
        assert self.client.connected, "publisher could not connect"

    def _acked(self, mid: int) -> None:
        self.acked += 1

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload)
        self.sent += 1
        self.client.loop(0)

    def message(self, message: TxnEvent | SettlementEvent | StatusEvent) -> None:
        if isinstance(message, SettlementEvent):
            topic = self.topics.settlements
        else:
            kind = "txn" if isinstance(message, TxnEvent) else "status"
            topic = self.topics.terminal(message.tid, kind)
        self.publish(topic, message.to_json())

    def all(
        self,
        messages: Sequence[TxnEvent | SettlementEvent | StatusEvent],
        *,
        pause_every: int = 0,
        pause_s: float = 0.0,
    ) -> None:
        """Publish and wait until the broker has every one (PUBACK)."""
        for index, message in enumerate(messages, 1):
            self.message(message)
            if pause_every and index % pause_every == 0:
                self.settle(pause_s)
        self.flush()

    def settle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.client.loop(0.01)

    def flush(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < self.sent and time.monotonic() < deadline:
            self.client.loop(0.02)
        assert self.acked == self.sent, f"broker acknowledged {self.acked} of {self.sent}"

    def close(self) -> None:
        self.client.disconnect()


class Running:
    """A `Collector` running in a thread until `stop()`."""

    def __init__(self, config: CollectorConfig) -> None:
        self.collector = Collector(config)
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self.collector.run,
            args=(self.stopping,),
            name=f"collector-{config.collector.id}",
        )
        self.thread.start()

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.collector.ingestor.counters)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.stopping.set()
            self.thread.join(timeout=30)
            assert not self.thread.is_alive(), "collector did not stop"


@dataclass
class Rig:
    """One test's peers: a broker and prefix, a database, a publisher, its collectors."""

    database_url: str
    broker: Broker
    prefix: str
    reader: Store  # the test's own view of the collector's database
    publisher: Publisher
    running: list[Running] = field(default_factory=list)

    def config(self, collector_id: str, **overrides: Any) -> CollectorConfig:
        mqtt = self.broker.settings(self.prefix, **overrides.pop("mqtt", {}))
        return CollectorConfig(
            collector={"id": collector_id},
            database={"url": self.database_url},
            mqtt=mqtt,
            http={"enabled": False},
            ingest=overrides.pop("ingest", {}),
            merchants=[
                MerchantRule(mid=MID, fee_bp=0),
                MerchantRule(mid=MID_T0, mode=SettlementMode.T0, t0_hours=T0_HOURS),
            ],
            **overrides,
        )

    def start(self, config: CollectorConfig) -> Running:
        self.running.append(Running(config))
        return self.running[-1]

    def wait_subscribed(self) -> None:
        """Publish a probe until a collector has stored it: subscribed from then on."""
        event = probe(uuid.uuid4())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            self.publisher.message(event)
            self.publisher.settle(0.1)
            if self.reader.counts()["status_events"] >= 1:
                return
        pytest.fail("the collector did not subscribe within 15 s")

    def close(self) -> None:
        for item in self.running:
            item.stop()
        self.publisher.close()
        self.reader.close()


@contextmanager
def rig_on(database_url: str, broker: Broker, prefix: str) -> Iterator[Rig]:
    reader = Store(database_url, SettlementTerms(CollectorConfig()))
    reader.migrate()
    rig = Rig(database_url, broker, prefix, reader, Publisher(broker, prefix))
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def rig(database_url: str, broker: Broker, prefix: str) -> Iterator[Rig]:
    """Peers on the session's broker."""
    with rig_on(database_url, broker, prefix) as made:
        yield made


@pytest.fixture
def own_rig(database_url: str, own_broker: Broker, prefix: str) -> Iterator[Rig]:
    """Peers on a broker of the test's own (persistence on, as deployed)."""
    with rig_on(database_url, own_broker, prefix) as made:
        yield made


def outcomes(reader: Store) -> dict[str, str]:
    """rrn -> outcome of every SALE."""
    with reader.engine.connect() as conn:
        rows = conn.execute(
            select(transactions.c.rrn, transactions.c.outcome).where(
                transactions.c.kind == TxnKind.SALE.value
            )
        ).all()
    return {rrn: outcome for rrn, outcome in rows}


def overdue_log(reader: Store) -> list[dict[str, Any]]:
    """Every OVERDUE entry of the outcome log, with its transaction's deadline."""
    with reader.engine.connect() as conn:
        rows = conn.execute(
            select(
                transactions.c.rrn,
                transactions.c.deadline,
                outcome_log.c.at,
                outcome_log.c.collector_id,
            )
            .join(transactions, transactions.c.id == outcome_log.c.transaction_id)
            .where(outcome_log.c.outcome == Outcome.OVERDUE.value)
        ).mappings()
        return [dict(row) for row in rows]


def stored_txns(reader: Store) -> int:
    return reader.counts()["transactions"]


# --- every outcome, in order and out of it --------------------------------------------


def test_every_outcome_through_the_broker(rig: Rig) -> None:
    running = rig.start(rig.config("outcomes"))
    rig.wait_subscribed()
    yesterday = datetime.now(SHANGHAI) - timedelta(days=1)
    sales = {
        name: txn(f"40251100{index:04d}")
        for index, name in enumerate(
            ["settled", "failed", "returned", "mismatch", "duplicate", "voided"], 1
        )
    }
    overdue = txn("402511009999", mid=MID_T0, at=yesterday)  # due long ago
    rig.publisher.all([*sales.values(), overdue])
    wait_until(lambda: stored_txns(rig.reader) == 7, 10, "7 transactions stored")

    rrn = {name: sale.rrn for name, sale in sales.items()}
    rig.publisher.all(
        [
            settlement(rrn["settled"], "S-settled"),
            settlement(rrn["failed"], "S-failed", status=SettlementStatus.FAILED),
            settlement(rrn["returned"], "S-returned"),
            settlement(rrn["returned"], "S-returned-back", status=SettlementStatus.RETURNED),
            settlement(rrn["mismatch"], "S-mismatch", net=AMOUNT - 100),
            settlement(rrn["duplicate"], "S-duplicate-1"),
            settlement(rrn["duplicate"], "S-duplicate-2"),
            txn("402511000100", kind=TxnKind.VOID, orig_rrn=rrn["voided"]),
            settlement("402511008888", "S-orphan"),
        ]
    )
    expected = {
        rrn["settled"]: "SETTLED",
        rrn["failed"]: "FAILED",
        rrn["returned"]: "RETURNED",
        rrn["mismatch"]: "MISMATCH",
        rrn["duplicate"]: "DUPLICATE",
        rrn["voided"]: "CANCELLED",
        overdue.rrn: "OVERDUE",
    }
    wait_until(lambda: outcomes(rig.reader) == expected, 10, "every outcome")
    orphan = rig.reader.settlement("S-orphan")
    assert orphan is not None
    assert orphan.outcome == "ORPHAN"
    assert [row["rrn"] for row in overdue_log(rig.reader)] == [overdue.rrn]
    counters = running.counters
    assert counters["stored.txn"] == 8
    assert counters["stored.settlement"] == 8
    assert counters.get("deadletters", 0) == 0


def test_settlements_before_their_transactions_are_matched_when_they_arrive(rig: Rig) -> None:
    rig.start(rig.config("order"))
    rig.wait_subscribed()
    sales = [txn(f"4025110{index:05d}", tid=f"1000{index % 7:04d}") for index in range(60)]
    rig.publisher.all([settlement(s.rrn, f"S{i}", tid=s.tid) for i, s in enumerate(sales)])
    wait_until(lambda: rig.reader.counts()["settlements"] == 60, 10, "60 settlements")
    assert rig.reader.counts()["transactions"] == 0
    with rig.reader.engine.connect() as conn:
        orphans = conn.execute(
            select(func.count()).select_from(settlements).where(settlements.c.outcome == "ORPHAN")
        ).scalar_one()
    assert orphans == 60
    rig.publisher.all(sales)
    wait_until(
        lambda: stored_txns(rig.reader) == 60 and set(outcomes(rig.reader).values()) == {"SETTLED"},
        10,
        "60 settled transactions",
    )


# --- dead letters -------------------------------------------------------------------------


def test_invalid_payloads_are_dead_lettered_with_the_reason_and_ingest_goes_on(
    rig: Rig, listener_factory: Callable[[Broker, str], Listener]
) -> None:
    listener = listener_factory(rig.broker, rig.prefix)
    running = rig.start(rig.config("letters"))
    rig.wait_subscribed()
    topics = Topics(rig.prefix)
    txn_topic = topics.terminal("10000001", "txn")
    float_amount = json.loads(txn("402511000002").to_json())
    float_amount["amount"] = 128.0
    wrong_schema = probe(uuid.uuid4()).to_json()  # a status event on the txn topic

    publisher = rig.publisher
    publisher.publish(txn_topic, b"\xff not json {")
    publisher.message(txn("402511000001"))
    publisher.publish(txn_topic, wrong_schema)
    publisher.publish(txn_topic, json.dumps(float_amount).encode())
    publisher.publish(topics.settlements, b'{"schema": "posmon.settlement/1"}')
    publisher.message(txn("402511000003"))
    publisher.flush()

    wait_until(lambda: stored_txns(rig.reader) == 2, 10, "the two valid transactions")
    wait_until(lambda: len(listener.on("/deadletter")) >= 4, 10, "4 dead letters published")
    letters = [json.loads(m.payload) for m in listener.on("/deadletter")]
    assert len(letters) == 4
    assert {(letter["schema"], letter["source"]) for letter in letters} == {
        ("posmon.deadletter/1", "collector:letters")
    }
    # In the order they were published, with the reason naming what was wrong.
    on_txn = [letter for letter in letters if letter["topic"] == txn_topic]
    assert [letter["topic"] for letter in letters if letter not in on_txn] == [topics.settlements]
    assert "invalid json" in on_txn[0]["reason"].lower()
    assert "\\xff not json" in on_txn[0]["payload"]
    assert "schema posmon.status/1 where posmon.txn/1 was expected" in on_txn[1]["reason"]
    assert "amount" in on_txn[2]["reason"]
    assert "integer" in on_txn[2]["reason"]
    assert '"amount": 128.0' in on_txn[2]["payload"]
    (bad_settlement,) = (letter for letter in letters if letter not in on_txn)
    assert "settlement_id" in bad_settlement["reason"]

    wait_until(lambda: running.counters.get("deadletters") == 4, 5, "4 counted")
    # Stored too, once each: the collector hears its own dead letters and drops the repeats.
    wait_until(lambda: running.counters.get("repeats.deadletter") == 4, 5, "own letters heard")
    assert rig.reader.counts()["deadletters"] == 4
    with rig.reader.engine.connect() as conn:
        stored = {row.reason for row in conn.execute(select(deadletters.c.reason))}
    assert stored == {letter["reason"] for letter in letters}


# --- restarts -----------------------------------------------------------------------------


def stream(publisher: Publisher, sales: list[TxnEvent]) -> threading.Thread:
    """Publish `sales` from a thread, in bursts of 50 with pauses (2,000 take about 2 s)."""
    thread = threading.Thread(
        target=publisher.all, args=(sales,), kwargs={"pause_every": 50, "pause_s": 0.04}
    )
    thread.start()
    return thread


def many_sales(total: int) -> list[TxnEvent]:
    return [txn(f"4025110{index:05d}", tid=f"1000{index % 13:04d}") for index in range(total)]


@pytest.mark.slow
def test_collector_stopped_and_started_mid_stream_stores_every_transaction_once(
    own_rig: Rig,
) -> None:
    rig, total = own_rig, 2000
    config = rig.config("restart", ingest={"batch_size": 50})
    first = rig.start(config)
    rig.wait_subscribed()
    sales = many_sales(total)
    publishing = stream(rig.publisher, sales)
    try:
        wait_until(lambda: stored_txns(rig.reader) >= 500, 30, "500 stored before the stop")
        first.stop()
        at_stop = stored_txns(rig.reader)
        assert at_stop < total, "the stream ended before the stop: publish more"
        time.sleep(0.5)  # messages keep coming while it is away
        second = rig.start(config)
    finally:
        publishing.join(timeout=60)
    assert rig.publisher.acked == rig.publisher.sent  # the broker has every one
    wait_until(lambda: stored_txns(rig.reader) == total, 30, f"{total} stored")
    time.sleep(0.3)  # a late repeat would be stored now
    assert stored_txns(rig.reader) == total
    assert set(outcomes(rig.reader)) == {s.rrn for s in sales}
    assert second.counters["stored.txn"] == total - at_stop


COLLECTOR_TOML = """\
[collector]
id = "{collector_id}"
[database]
url = "{database_url}"
[mqtt]
host = "127.0.0.1"
port = {port}
topic_prefix = "{prefix}"
reconnect_min_s = 0.1
reconnect_max_s = 0.5
[ingest]
batch_size = 50
[http]
enabled = false
"""


def collector_process(
    config: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`posmon collector run` on `config`, its output appended to `log`."""
    posmon = Path(sys.executable).parent / "posmon"
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(posmon), "collector", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


@pytest.mark.slow
def test_collector_killed_mid_stream_and_restarted_loses_nothing_and_stores_once(
    own_rig: Rig, tmp_path: Path
) -> None:
    rig, total = own_rig, 2000
    config = tmp_path / "collector.toml"
    config.write_text(
        COLLECTOR_TOML.format(
            collector_id="killed",
            database_url=rig.database_url,
            port=rig.broker.port,
            prefix=rig.prefix,
        )
    )
    log = tmp_path / "collector.log"
    process = collector_process(config, log)
    try:
        rig.wait_subscribed()
        sales = many_sales(total)
        publishing = stream(rig.publisher, sales)
        try:
            wait_until(lambda: stored_txns(rig.reader) >= 500, 60, "500 stored")
            process.kill()  # SIGKILL: no flush, no goodbye
            process.wait(timeout=10)
            assert stored_txns(rig.reader) < total, "the stream ended before the kill"
            process = collector_process(config, log)
        finally:
            publishing.join(timeout=60)
        wait_until(lambda: stored_txns(rig.reader) == total, 60, f"{total} stored")
        time.sleep(0.5)
        assert stored_txns(rig.reader) == total
        assert set(outcomes(rig.reader)) == {s.rrn for s in sales}
        process.terminate()
        assert process.wait(timeout=30) == 0, log.read_text(errors="replace")[-3000:]
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


# --- overdue --------------------------------------------------------------------------


def test_overdue_is_reported_within_a_second_of_its_deadline(rig: Rig) -> None:
    running = rig.start(rig.config("overdue"))
    rig.wait_subscribed()
    due = [txn(f"4025110{index:05d}", mid=MID_T0) for index in range(5)]
    paid = txn("402511000100", mid=MID_T0)
    rig.publisher.all([*due, paid, settlement(paid.rrn, "S-paid")])
    wait_until(lambda: len(overdue_log(rig.reader)) == 5, 10, "5 overdue")
    time.sleep(0.5)
    log = overdue_log(rig.reader)
    assert sorted(row["rrn"] for row in log) == sorted(t.rrn for t in due)
    for row in log:
        late = (row["at"] - row["deadline"]).total_seconds()
        assert 0 <= late < 1.0, f"{row['rrn']} reported {late:.3f} s after its deadline"
    assert outcomes(rig.reader)[paid.rrn] == "SETTLED"
    assert running.collector.overdue.reported == 5


def test_deadline_passing_while_the_collector_is_down_is_reported_once_on_start(
    rig: Rig,
) -> None:
    config = rig.config("down")
    first = rig.start(config)
    rig.wait_subscribed()
    sale = txn("402511000001", mid=MID_T0)
    rig.publisher.all([sale])
    wait_until(lambda: stored_txns(rig.reader) == 1, 10, "stored")
    first.stop()
    assert outcomes(rig.reader) == {sale.rrn: "PENDING"}
    row = rig.reader.transaction(sale.tid, sale.rrn)
    assert row is not None
    deadline = row.deadline
    wait_until(lambda: datetime.now(UTC) > deadline + timedelta(seconds=0.5), 10, "deadline")
    assert outcomes(rig.reader) == {sale.rrn: "PENDING"}  # nobody was watching

    started = datetime.now(UTC)
    second = rig.start(config)
    wait_until(lambda: outcomes(rig.reader) == {sale.rrn: "OVERDUE"}, 5, "overdue after start")
    (logged,) = overdue_log(rig.reader)
    assert (logged["at"] - started).total_seconds() < 1.0
    second.stop()
    third = rig.start(config)  # a later start does not report it again
    time.sleep(0.5)
    third.stop()
    assert len(overdue_log(rig.reader)) == 1


# --- two collectors, one subscription, one PostgreSQL ---------------------------------


@pytest.mark.slow
def test_two_collectors_sharing_a_subscription_store_once_and_report_overdue_once(
    postgres_url: str, broker: Broker, prefix: str
) -> None:
    total, overdue_count = 500, 20
    with rig_on(postgres_url, broker, prefix) as rig:
        pair = [
            rig.start(
                rig.config(
                    f"shared-{index}",
                    mqtt={"protocol": Protocol.V5},
                    ingest={"shared_group": "g1", "batch_size": 20},
                )
            )
            for index in range(2)
        ]
        wait_until(lambda: all(r.collector.ingestor.client.connected for r in pair), 10, "both up")
        rig.wait_subscribed()
        time.sleep(0.3)  # the other one's SUBACK
        sales = [
            txn(
                f"4025110{index:05d}",
                tid=f"1000{index % 25:04d}",
                mid=MID_T0 if index % (total // overdue_count) == 0 else MID,
            )
            for index in range(total)
        ]
        assert sum(s.mid == MID_T0 for s in sales) == overdue_count
        # Every transaction twice (a replaying agent): repeats must not be stored again.
        rig.publisher.all(sales + sales[::-1])
        wait_until(
            lambda: (
                sum(
                    r.counters.get("stored.txn", 0) + r.counters.get("repeats.txn", 0) for r in pair
                )
                >= 2 * total  # more only if the broker redelivered some
            ),
            20,
            f"{2 * total} transactions taken",
        )
        wait_until(lambda: len(overdue_log(rig.reader)) >= overdue_count, 10, "overdue")
        time.sleep(0.5)  # another report, if there were one, would land now

        assert stored_txns(rig.reader) == total
        log = overdue_log(rig.reader)
        assert len(log) == overdue_count
        assert len({row["rrn"] for row in log}) == overdue_count
        counters = [r.counters for r in pair]
        assert all(c.get("received", 0) > 0 for c in counters), counters
        assert sum(c.get("stored.txn", 0) for c in counters) == total
        assert sum(c.get("repeats.txn", 0) for c in counters) >= total  # each sent twice
        assert sum(r.collector.overdue.reported for r in pair) == overdue_count


@pytest.mark.slow
def test_a_gone_collectors_share_is_covered_by_the_others(
    postgres_url: str, broker: Broker, prefix: str
) -> None:
    """mosquitto keeps giving a gone member of a share group its share, into its session.
    Once its heartbeat is `peer_timeout_s` old, the collector left subscribes the plain
    filters too: what comes after is stored at once, and only what came before waits for
    the gone one's return; every transaction stored once in the end, the cover ended."""
    with rig_on(postgres_url, broker, prefix) as rig:

        def config(name: str) -> CollectorConfig:
            ingest = {"shared_group": "g1", "batch_size": 20, "peer_timeout_s": 6}
            return rig.config(name, mqtt={"protocol": Protocol.V5}, ingest=ingest)

        left = rig.start(config("cover-left"))
        gone = rig.start(config("cover-gone"))
        wait_until(lambda: left.collector.ingestor.connected, 10, "up")
        wait_until(lambda: gone.collector.ingestor.connected, 10, "up")
        rig.wait_subscribed()
        time.sleep(0.3)  # the other one's SUBACK
        gone.stop()  # its session stays in the broker, and keeps getting its share
        gone_at = time.monotonic()
        before = many_sales(200)
        rig.publisher.all(before)
        wait_until(lambda: stored_txns(rig.reader) >= 80, 10, "the left one's share")
        time.sleep(1)
        waiting = len(before) - stored_txns(rig.reader)
        assert waiting >= 50, f"{waiting} in the gone one's session: about half expected"
        ingestor = left.collector.ingestor
        wait_until(lambda: ingestor.covering_for == ("cover-gone",), 20, "the cover")
        wait_until(lambda: ingestor.counters.get("cover.changes") == 1, 5, "subscribed")
        covered_after = time.monotonic() - gone_at
        after = [txn(f"4025119{i:05d}", tid=f"1000{i % 25:04d}") for i in range(300)]
        rig.publisher.all(after)
        wait_until(
            lambda: stored_txns(rig.reader) == len(before) - waiting + len(after),
            15,
            "everything sent after the cover",
        )
        time.sleep(1)
        assert stored_txns(rig.reader) == len(before) - waiting + len(after)
        back = rig.start(config("cover-gone"))  # its backlog comes with its session
        wait_until(lambda: stored_txns(rig.reader) == len(before) + len(after), 20, "backlog")
        wait_until(lambda: ingestor.covering_for == (), 15, "the cover ended")
        wait_until(lambda: ingestor.counters.get("cover.changes") == 2, 5, "unsubscribed")
        status = left.collector.status()
        assert status["covering_for"] is None
        print(
            f"\ngone collector: {waiting} of {len(before)} sent before the cover waited for it;"
            f" covered after {covered_after:.1f} s (peer_timeout_s 6, heartbeat 5 s); "
            f"{len(after)} of {len(after)} sent after it stored while it was gone; "
            f"repeats stored once: {left.counters.get('repeats.txn', 0)}"
        )
        back.stop()


def test_a_nul_character_is_dead_lettered_and_the_rest_of_its_batch_stored(rig: Rig) -> None:
    """PostgreSQL cannot store NUL in text: such a message must not fail its batch forever."""
    running = rig.start(rig.config("nul"))
    rig.wait_subscribed()
    topics = Topics(rig.prefix)
    with_nul = probe(uuid.uuid4()).model_copy(update={"firmware": "V2\x00"})
    rig.publisher.publish(topics.terminal("99999999", "status"), with_nul.to_json())
    rig.publisher.message(txn("402511000301"))
    rig.publisher.flush()
    wait_until(lambda: stored_txns(rig.reader) == 1, 10, "the transaction stored")
    wait_until(lambda: running.counters.get("deadletters") == 1, 10, "the NUL dead-lettered")
    with rig.reader.engine.connect() as conn:
        (reason,) = conn.execute(select(deadletters.c.reason)).scalars()
    assert "NUL character" in reason


def test_connections_dropped_by_postgresql_cost_a_retry_and_lose_nothing(
    postgres_url: str, broker: Broker, prefix: str
) -> None:
    """Reads do not ping a pooled connection before use (writes do). When the server drops
    every connection (a restart, a failover, an administrator), a read fails, its pool is
    replaced and the read is done again at the next turn; the writes find live connections:
    every transaction is stored once and its overdue reported once."""
    total = 600
    with rig_on(postgres_url, broker, prefix) as rig:
        running = rig.start(rig.config("dropped", ingest={"batch_size": 20}))
        rig.wait_subscribed()
        sales = many_sales(total)
        late = txn("402511009901", mid=MID_T0, at=datetime.now(UTC))
        publishing = stream(rig.publisher, [late, *sales])
        database = rig.reader.engine.url.database
        try:
            for round_ in range(1, 4):  # while the stream comes in, three times
                stored = 100 * round_
                wait_until(lambda: stored_txns(rig.reader) >= stored, 30, f"{stored} stored")  # noqa: B023
                with rig.reader.engine.connect() as conn:
                    dropped = conn.exec_driver_sql(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = %(db)s AND pid <> pg_backend_pid()",
                        {"db": database},
                    ).scalar_one()
                    assert dropped >= 1
                rig.reader.engine.dispose()  # the test's own connections went too
                rig.reader.reads.dispose()
        finally:
            publishing.join(timeout=60)
        wait_until(lambda: stored_txns(rig.reader) == total + 1, 60, f"{total + 1} stored")
        assert set(outcomes(rig.reader)) >= {s.rrn for s in sales}
        wait_until(lambda: len(overdue_log(rig.reader)) == 1, 10, "the overdue reported")
        time.sleep(0.5)
        assert stored_txns(rig.reader) == total + 1
        assert len(overdue_log(rig.reader)) == 1
        assert running.collector.ingestor.client.connected


def test_an_alert_does_not_wait_for_the_disk_and_nothing_is_acked_before_it(
    postgres_url: str, broker: Broker, prefix: str, listener_factory: Any
) -> None:
    """On PostgreSQL a batch commits without waiting for its WAL to reach the disk, and
    `Store.sync()` waits for that before the batch is acked. The test holds the sync back
    (standing in for a disk whose flush takes long): the failed settlement's alert is out
    meanwhile, and later batches are stored meanwhile, but nothing is acked. When the
    sync then fails, the collector reconnects, the broker sends every one of those messages
    again, and none is stored twice nor alerted twice."""
    listener = listener_factory(broker, prefix)
    with rig_on(postgres_url, broker, prefix) as rig:
        running = rig.start(rig.config("sync"))
        rig.wait_subscribed()
        store = running.collector.store
        sync = store.sync
        held, release, failing = threading.Event(), threading.Event(), threading.Event()

        def held_sync() -> None:
            held.set()
            assert release.wait(30), "the test never released the sync"
            if failing.is_set():
                failing.clear()
                raise ConnectionError("the disk flush failed")
            sync()

        store.sync = held_sync  # type: ignore[method-assign]
        acked = running.counters.get("received", 0)
        sale = txn("402511007701")
        rig.publisher.all([sale])
        wait_until(held.is_set, 10, "the sale's batch to wait for its sync")
        rig.publisher.all([settlement(sale.rrn, "S-7701", status=SettlementStatus.FAILED)])

        def alerts() -> list[dict[str, Any]]:
            return [
                payload
                for payload in (json.loads(m.payload) for m in listener.on("SETTLEMENT_FAILED"))
                if payload["rrn"] == sale.rrn
            ]

        wait_until(lambda: len(alerts()) == 1, 10, "the alert while the sync is held")
        assert outcomes(rig.reader)[sale.rrn] == Outcome.FAILED.value
        assert running.counters.get("received", 0) == acked  # nothing acked

        failing.set()
        release.set()
        wait_until(lambda: running.counters.get("repeats.settlement", 0) == 1, 20, "the redelivery")
        assert running.counters.get("repeats.txn", 0) == 1
        assert running.counters["received"] >= acked + 2
        assert stored_txns(rig.reader) == 1
        time.sleep(0.5)  # the engine has seen the repeats by now: no second alert
        assert len(alerts()) == 1
