"""Collectors on NATS JetStream (issue #16), against real nats-server processes.

A 3-node cluster (simulators/natscluster.py) with MQTT listeners: transactions go in over
MQTT with posmon's MqttClient, as agents send them; collectors with `[ingest] source =
"nats"` share one durable pull consumer. Each test has its own cluster, topic prefix and
PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from conftest import fresh_postgres_database, wait_until
from sqlalchemy import func, select
from test_collector_ingest import (
    MID,
    MID_T0,
    T0_HOURS,
    collector_process,
    many_sales,
    outcomes,
    overdue_log,
    settlement,
    stored_txns,
    txn,
)

from collector.config import CollectorConfig
from collector.correlate import Outcome
from collector.jetstream import MQTT_STREAM, subject_for, topic_for
from collector.schema import transactions
from collector.service import Collector
from collector.store import Store
from collector.terms import SettlementTerms
from posmon.mqtt import MqttClient, Topics
from posmon.wire.models import TxnEvent
from simulators.natscluster import NatsCluster

ACK_WAIT_S = 3.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    instance = NatsCluster(tmp_path / "nats", 3)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def postgres() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


class Publisher:
    """QoS 1 over MQTT to one node's listener; counts PUBACKs (the agent's outbox rule)."""

    def __init__(self, cluster: NatsCluster, node: int, prefix: str) -> None:
        self.topics = Topics(prefix)
        self.client = MqttClient(
            cluster.mqtt_settings(node, prefix, inflight=100), f"pub-{uuid.uuid4().hex[:8]}"
        )
        self.acked: set[int] = set()
        self.sent: dict[int, TxnEvent] = {}
        self.client.on_published = self.acked.add
        self.client.connect()
        wait_until(lambda: self.client.loop(0.05) and self.client.connected, 15, "MQTT connect")

    def publish(self, sales: list[TxnEvent], pause_every: int = 100) -> None:
        for index, sale in enumerate(sales, 1):
            mid = self.client.publish(self.topics.terminal(sale.tid, "txn"), sale.to_json())
            self.sent[mid] = sale
            self.client.loop(0)
            if index % pause_every == 0:
                self.client.loop(0.005)

    def drain(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < len(self.sent) and time.monotonic() < deadline:
            self.client.connect_when_due()  # as the agent does: the session is re-sent
            self.client.loop(0.01)

    def acked_rrns(self) -> set[str]:
        return {self.sent[mid].rrn for mid in self.acked if mid in self.sent}


def collector_config(
    cluster: NatsCluster, prefix: str, database_url: str, collector_id: str
) -> dict[str, Any]:
    return {
        "collector": {"id": collector_id},
        "database": {"url": database_url},
        "mqtt": {"host": "127.0.0.1", "port": cluster.nodes[0].mqtt_port, "topic_prefix": prefix},
        "ingest": {"source": "nats", "batch_size": 200},
        "nats": {
            "servers": cluster.nats_urls,
            "consumer": "collectors",
            "ack_wait_s": ACK_WAIT_S,
        },
        "http": {"enabled": False},
    }


class Running:
    """A collector in this process, in a thread of its own."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.collector = Collector(CollectorConfig.model_validate(config))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.collector.run, args=(self.stop,))
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def toml(config: dict[str, Any]) -> str:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, int | float):
                lines.append(f"{key} = {value}")
            elif isinstance(value, list):
                lines.append(
                    f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]"
                )
            else:
                lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


def reader(url: str) -> Store:
    return Store(url, SettlementTerms(CollectorConfig()))


def rrn_counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(transactions.c.rrn, func.count()).group_by(transactions.c.rrn)
        ).all()
    return {rrn: count for rrn, count in rows}


def consumer_state(cluster: NatsCluster) -> tuple[int, int]:
    """(messages not yet delivered, delivered and not acked) of the shared consumer."""

    async def ask() -> tuple[int, int]:
        nc = await nats.connect(cluster.nats_urls)
        try:
            info = await nc.jetstream().consumer_info(MQTT_STREAM, "collectors")
            return info.num_pending or 0, info.num_ack_pending or 0
        finally:
            await nc.close()

    return asyncio.run(ask())


def test_mqtt_topics_land_in_the_stream_on_their_subjects() -> None:
    topics = Topics("posmon/v1")
    assert subject_for(topics.terminal("10000001", "txn")) == "posmon.v1.terminals.10000001.txn"
    assert subject_for(topics.terminal("+", "+")) == "posmon.v1.terminals.*.*"
    assert topic_for("$MQTT.msgs.posmon.v1.settlements") == topics.settlements


def test_two_collectors_share_the_work_queue_and_store_each_once(
    cluster: NatsCluster, postgres: str
) -> None:
    prefix = f"test/{uuid.uuid4().hex[:12]}"
    first = Running(collector_config(cluster, prefix, postgres, "c1"))
    second = Running(collector_config(cluster, prefix, postgres, "c2"))
    store = reader(postgres)
    try:
        wait_until(lambda: first.collector.ingestor.connected, 15, "c1 on NATS")
        wait_until(lambda: second.collector.ingestor.connected, 15, "c2 on NATS")
        time.sleep(0.5)  # the stream and consumer are made
        total = 3000
        sales = many_sales(total)
        publishers = [Publisher(cluster, node, prefix) for node in (0, 1, 2)]
        for index, publisher in enumerate(publishers):
            publisher.publish(sales[index::3])
        bad = publishers[0].client.publish(f"{prefix}/terminals/10000001/txn", b"{not json")
        for publisher in publishers:
            publisher.drain()
            assert publisher.acked >= set(publisher.sent)
        wait_until(
            lambda: publishers[0].client.loop(0.01) and bad in publishers[0].acked, 10, "PUBACK"
        )
        wait_until(lambda: stored_txns(store) == total, 60, f"{total} stored")
        wait_until(lambda: store.counts()["deadletters"] == 1, 10, "the dead letter")
        wait_until(lambda: consumer_state(cluster) == (0, 0), 10, "all acked")
        time.sleep(0.5)
        counts = rrn_counts(store)
        assert len(counts) == total and set(counts.values()) == {1}
        assert store.counts()["deadletters"] == 1  # its copy on the dead-letter subject: a repeat
        one = first.collector.ingestor.counters["stored.txn"]
        two = second.collector.ingestor.counters["stored.txn"]
        assert one + two == total
        assert one > 0 and two > 0, (one, two)
    finally:
        first.close()
        second.close()
        store.close()


@pytest.mark.slow
def test_a_killed_collectors_messages_go_to_the_other_within_ack_wait(
    cluster: NatsCluster, postgres: str, tmp_path: Path
) -> None:
    prefix = f"test/{uuid.uuid4().hex[:12]}"
    killed_config = tmp_path / "killed.toml"
    config = collector_config(cluster, prefix, postgres, "killed")
    # Slow batches: the one killed holds fetched, unacked messages when it dies.
    config["ingest"] = {"source": "nats", "batch_size": 500, "batch_wait_ms": 200}
    killed_config.write_text(toml(config))
    log = tmp_path / "killed.log"
    process = collector_process(killed_config, log)
    survivor = Running(collector_config(cluster, prefix, postgres, "survivor"))
    store = reader(postgres)
    try:
        wait_until(lambda: survivor.collector.ingestor.connected, 15, "survivor on NATS")
        wait_until(lambda: "NATS ingest: consumer" in log.read_text(), 20, "killed one bound")
        total = 6000
        sales = many_sales(total)
        publisher = Publisher(cluster, 0, prefix)
        publisher.publish(sales[: total // 2])
        publisher.drain()
        wait_until(lambda: consumer_state(cluster)[1] > 0, 10, "messages in flight")
        process.kill()  # SIGKILL: its fetched messages are never acked
        killed_at = time.monotonic()
        process.wait(timeout=10)
        publisher.publish(sales[total // 2 :])
        publisher.drain()
        assert len(publisher.acked) == total
        wait_until(lambda: stored_txns(store) == total, 60, f"{total} stored")
        delay = time.monotonic() - killed_at
        wait_until(lambda: consumer_state(cluster) == (0, 0), 10, "all acked")
        redelivered = survivor.collector.ingestor.counters["redelivered"]
        print(f"\nredelivery: {redelivered} messages, all stored {delay:.2f} s after the kill")
        counts = rrn_counts(store)
        assert len(counts) == total and set(counts.values()) == {1}
        assert delay <= ACK_WAIT_S + 1, delay
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        survivor.close()
        store.close()


@pytest.mark.slow
def test_a_nats_node_killed_mid_stream_loses_nothing_pubacked(
    cluster: NatsCluster, postgres: str
) -> None:
    prefix = f"test/{uuid.uuid4().hex[:12]}"
    collector = Running(collector_config(cluster, prefix, postgres, "c1"))
    store = reader(postgres)
    try:
        wait_until(lambda: collector.collector.ingestor.connected, 15, "collector on NATS")
        time.sleep(0.5)

        async def leader() -> str:
            nc = await nats.connect(cluster.nats_urls)
            try:
                info = await nc.jetstream().stream_info(MQTT_STREAM)
                assert info.cluster is not None
                return info.cluster.leader or ""
            finally:
                await nc.close()

        names: list[str] = []
        wait_until(lambda: names.append(asyncio.run(leader())) or names[-1], 15, "stream leader")
        victim = next(i for i, node in enumerate(cluster.nodes) if node.name == names[-1])
        others = [i for i in range(3) if i != victim]
        total = 6000
        sales = many_sales(total)
        publishers = [Publisher(cluster, node, prefix) for node in others]
        stop = threading.Event()

        def kill_later() -> None:
            if not stop.wait(0.3):
                cluster.kill(victim)  # the stream's leader: a new one is elected

        killer = threading.Thread(target=kill_later)
        killer.start()
        for start in range(0, total, 500):
            for index, publisher in enumerate(publishers):
                publisher.publish(sales[start + index : start + 500 : 2])
        for publisher in publishers:
            publisher.drain(timeout=60)
        stop.set()
        killer.join()
        assert not cluster.nodes[victim].running, "the node was not killed mid-stream"
        acked = set().union(*(publisher.acked_rrns() for publisher in publishers))
        print(f"\nnode {cluster.nodes[victim].name} killed; {len(acked)} of {total} PUBACKed")
        deadline = time.monotonic() + 30
        while not set(rrn_counts(store)) >= acked and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        counts = rrn_counts(store)
        lost = acked - set(counts)
        print(
            f"stored {len(counts)}, PUBACKed and not stored {len(lost)}, "
            f"consumer (pending, unacked) {consumer_state(cluster)}"
        )
        assert set(counts.values()) == {1}
        assert not lost, f"{len(lost)} PUBACKed sales lost"
    finally:
        collector.close()
        store.close()


@pytest.mark.slow
def test_node_then_collector_killed_under_load_nothing_lost_no_overdue_twice(
    cluster: NatsCluster, postgres: str, tmp_path: Path
) -> None:
    """Three collectors on one PostgreSQL, two publishers failing over between the nodes,
    20,000 sales and their settlements: a node killed, then a collector; every PUBACKed
    sale and settlement stored once, each overdue sale reported once."""
    prefix = f"test/{uuid.uuid4().hex[:12]}"
    t0 = {"mid": MID_T0, "mode": "T0", "t0_hours": T0_HOURS}

    def config(name: str) -> dict[str, Any]:
        values = collector_config(cluster, prefix, postgres, name)
        values["merchants"] = [t0]
        values["mqtt"]["port"] = cluster.nodes[2].mqtt_port  # alerts: not the node killed
        return values

    killed_config = tmp_path / "c3.toml"
    killed_config.write_text(toml({k: v for k, v in config("c3").items() if k != "merchants"}))
    killed_config.write_text(
        killed_config.read_text()
        + f'[[merchants]]\nmid = "{MID_T0}"\nmode = "T0"\nt0_hours = {T0_HOURS}\n'
    )
    log = tmp_path / "c3.log"
    process = collector_process(killed_config, log)
    running = [Running(config("c1")), Running(config("c2"))]
    store = reader(postgres)
    hosts = [f"127.0.0.1:{node.mqtt_port}" for node in cluster.nodes]
    try:
        for one in running:
            wait_until(lambda one=one: one.collector.ingestor.connected, 15, "on NATS")
        wait_until(lambda: "NATS ingest: consumer" in log.read_text(), 20, "c3 bound")
        total, overdue, step = 20_000, 300, 2000
        sales = [
            txn(f"4025110{i:05d}", tid=f"1000{i % 13:04d}", mid=MID_T0 if i < overdue else MID)
            for i in range(total)
        ]
        credited = sales[overdue:]  # the rest: a settlement each
        agents = []
        for node in (0, 1):
            agent = Publisher(cluster, node, prefix)
            agent.client = MqttClient(
                cluster.mqtt_settings(
                    node, prefix, inflight=100, hosts=hosts[node:] + hosts[:node]
                ),
                f"agent-{node}-{uuid.uuid4().hex[:6]}",
            )
            agent.client.on_published = agent.acked.add
            agent.client.connect()
            wait_until(lambda a=agent: a.client.loop(0.05) and a.client.connected, 15, "connect")
            agents.append(agent)
        acquirer = MqttClient(cluster.mqtt_settings(2, prefix, inflight=100), "acquirer")
        settled: set[int] = set()
        acquirer.on_published = settled.add
        acquirer.connect()
        wait_until(lambda: acquirer.loop(0.05) and acquirer.connected, 15, "acquirer")
        started = time.monotonic()
        for start in range(0, total, step):
            for index, agent in enumerate(agents):
                agent.publish(sales[start + index : start + step : 2])
            if start == 3 * step:
                cluster.kill(0)  # the first agent's node
            if start == 6 * step:
                process.kill()  # a collector, SIGKILL, its fetched messages unacked
        for agent in agents:
            agent.drain(timeout=90)
        mids = {}
        for index, sale in enumerate(credited):
            event = settlement(sale.rrn, f"S{index:08d}", tid=sale.tid)
            mids[acquirer.publish(f"{prefix}/settlements", event.to_json())] = sale.rrn
            acquirer.loop(0)
        deadline = time.monotonic() + 120
        while len(settled) < len(mids) and time.monotonic() < deadline:
            acquirer.loop(0.01)
        assert not cluster.nodes[0].running and process.poll() is not None
        pubacked = set().union(*(agent.acked_rrns() for agent in agents))
        assert len(pubacked) == total
        assert len(settled) == len(mids)
        wait_until(lambda: len(rrn_counts(store)) == total, 120, f"{total} stored")
        wait_until(lambda: len(outcomes(store)) == total, 30, "outcomes")
        wait_until(
            lambda: (
                sum(o == Outcome.SETTLED.value for o in outcomes(store).values()) == len(credited)
            ),
            120,
            "every credit matched",
        )
        wait_until(lambda: len(overdue_log(store)) >= overdue, 60, f"{overdue} overdue")
        time.sleep(2)  # a second report of one would come now
        counts = rrn_counts(store)
        assert set(counts.values()) == {1}
        reported = [entry["rrn"] for entry in overdue_log(store)]
        assert sorted(reported) == sorted(sale.rrn for sale in sales[:overdue])
        print(
            f"\n{total} sales, {len(credited)} credits, {overdue} overdue once each; "
            f"stored by c1 {running[0].collector.ingestor.counters['stored.txn']}, "
            f"c2 {running[1].collector.ingestor.counters['stored.txn']}; redelivered "
            f"{sum(r.collector.ingestor.counters['redelivered'] for r in running)}; "
            f"{time.monotonic() - started:.0f} s from the first sale to the last check"
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for one in running:
            one.close()
        store.close()
